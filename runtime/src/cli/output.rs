//! Result writers for `glimpse classify`: a readable table, JSON lines and CSV.

use std::io::Write;

use glimpse_runtime::classifier::{accepted, millis as ms, TimingsMs};
use glimpse_runtime::{Ranked, Timings};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A readable table.
    Table,
    /// One JSON object per line.
    Json,
    /// CSV, one row per (image, rank).
    Csv,
}

/// The result for one input.
pub struct Record<'a> {
    pub path: &'a str,
    pub top: &'a [Ranked<'a>],
    pub threshold: f32,
    /// The model's "none of the above" (`glimpse.reject`) refused the image.
    pub rejected: bool,
    pub timings: Timings,
}

impl Record<'_> {
    /// The accepted label: the best one, unless it is below the threshold or the model
    /// rejected the image.
    fn label(&self) -> Option<&str> {
        accepted(self.top, self.threshold, self.rejected)
    }
}

pub enum Writer<W: Write> {
    Table(W),
    Json(W),
    // Boxed: the CSV writer carries its own buffer, much larger than a bare stream.
    Csv(Box<csv::Writer<W>>),
}

#[derive(Serialize)]
struct JsonRecord<'a> {
    path: &'a str,
    /// `null` when the best probability is below the threshold or the image is rejected.
    label: Option<&'a str>,
    /// Present (`true`) when the model's "none of the above" refused the image.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    rejected: bool,
    top: &'a [Ranked<'a>],
    #[serde(flatten)]
    timings: TimingsMs,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W, format: Format) -> std::io::Result<Self> {
        Ok(match format {
            Format::Table => Writer::Table(out),
            Format::Json => Writer::Json(out),
            Format::Csv => {
                let mut w = csv::Writer::from_writer(out);
                w.write_record([
                    "path",
                    "predicted",
                    "rank",
                    "index",
                    "label",
                    "probability",
                    "latency_ms",
                ])?;
                Writer::Csv(Box::new(w))
            }
        })
    }

    pub fn write(&mut self, r: &Record) -> std::io::Result<()> {
        match self {
            Writer::Table(out) => {
                let verdict = match r.label() {
                    Some(_) => String::new(),
                    None if r.rejected => "  unknown (none of the model's classes)".into(),
                    None => format!("  unknown (best below {:.0}%)", r.threshold * 100.0),
                };
                writeln!(
                    out,
                    "{}  ({:.1} ms){verdict}",
                    r.path,
                    ms(r.timings.total())
                )?;
                for t in r.top {
                    writeln!(out, "  {:>6.2}%  {}", t.probability * 100.0, t.label)?;
                }
                out.flush()
            }
            Writer::Json(out) => {
                let rec = JsonRecord {
                    path: r.path,
                    label: r.label(),
                    rejected: r.rejected,
                    top: r.top,
                    timings: r.timings.millis(r.timings.total()),
                };
                serde_json::to_writer(&mut *out, &rec)?;
                // Flush per line so a consumer reading a pipe sees each result as it comes.
                writeln!(out)?;
                out.flush()
            }
            Writer::Csv(w) => {
                let predicted = r.label().unwrap_or("unknown");
                let latency = format!("{:.3}", ms(r.timings.total()));
                for (rank, t) in r.top.iter().enumerate() {
                    w.write_record([
                        r.path,
                        predicted,
                        &(rank + 1).to_string(),
                        &t.index.to_string(),
                        &t.label,
                        &format!("{:.6}", t.probability),
                        &latency,
                    ])?;
                }
                w.flush()
            }
        }
    }
}
