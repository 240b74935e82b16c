//! A CSV file of `path,label` rows (paths relative to the file), with an optional header.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::split::finish;
use super::{decode_and_split, Dataset, Format, LoadOptions, LoadReport};

pub fn load(path: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        let (Some(p), Some(label)) = (record.get(0), record.get(1)) else {
            bail!(
                "{}: line {}: expected path,label, got {} fields",
                path.display(),
                i + 1,
                record.len()
            );
        };
        if i == 0
            && p.trim().eq_ignore_ascii_case("path")
            && label.trim().eq_ignore_ascii_case("label")
        {
            continue; // header
        }
        rows.push((base.join(p.trim()), label.trim().to_string()));
    }
    let classes: Vec<String> = rows
        .iter()
        .map(|(_, l)| l.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let index: BTreeMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let files = rows
        .iter()
        .map(|(p, l)| (p.clone(), index[l.as_str()]))
        .collect();
    let mut report = LoadReport::default();
    let (train, val, test) = decode_and_split(files, classes.len(), opts, &mut report);
    report.split = format!("CSV rows split by seed {}", opts.seed);
    finish(Format::Csv, classes, train, val, test, report, opts)
}
