//! PNG plots for reports: the confusion matrix and the training curves.

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// Plots need a font; one is compiled in so they render the same on any machine.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font is valid by construction (it is a fixed asset); a failure would only
        // leave the plots without text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn encode_png(buf: Vec<u8>, (w, h): (u32, u32)) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| anyhow!("plot buffer has the wrong size"))?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// A confusion matrix heat map (rows: true class, columns: predicted), counts in cells.
pub fn confusion_png(confusion: &[Vec<usize>], classes: &[String]) -> Result<Vec<u8>> {
    register_font();
    let k = classes.len().max(1);
    let cell = (640 / k).clamp(12, 64) as u32;
    let label_w = 150u32;
    let size = (label_w + cell * k as u32 + 40, 50 + cell * k as u32 + 40);
    let mut buf = vec![255u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        root.draw(&Text::new(
            "confusion matrix (rows: true, columns: predicted)",
            (10, 10),
            ("sans-serif", 16),
        ))
        .map_err(err)?;
        let row_max: Vec<usize> = confusion
            .iter()
            .map(|r| r.iter().sum::<usize>().max(1))
            .collect();
        let font_px = (cell as f64 * 0.35).clamp(7.0, 14.0);
        for (i, row) in confusion.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                // Shade by the fraction of the true class, so rare classes stay visible.
                let f = *v as f64 / row_max[i] as f64;
                let shade = (255.0 * (1.0 - f)) as u8;
                let color = if i == j {
                    RGBColor(shade, 255 - (255 - shade) / 3, shade)
                } else {
                    RGBColor(255, shade, shade)
                };
                let (x, y) = (
                    (label_w + j as u32 * cell) as i32,
                    (50 + i as u32 * cell) as i32,
                );
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell as i32, y + cell as i32)],
                    color.filled(),
                ))
                .map_err(err)?;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell as i32, y + cell as i32)],
                    BLACK.mix(0.2),
                ))
                .map_err(err)?;
                if cell >= 18 {
                    let style = ("sans-serif", font_px).into_font().color(&BLACK);
                    root.draw(&Text::new(
                        v.to_string(),
                        (x + 3, y + cell as i32 / 3),
                        style,
                    ))
                    .map_err(err)?;
                }
            }
            let name: String = classes[i].chars().take(20).collect();
            root.draw(&Text::new(
                format!("{name} ({i})"),
                (5, (50 + i as u32 * cell + cell / 3) as i32),
                ("sans-serif", font_px),
            ))
            .map_err(err)?;
        }
        for j in 0..k {
            let x = (label_w + j as u32 * cell + cell / 3) as i32;
            root.draw(&Text::new(
                j.to_string(),
                (x, (55 + k as u32 * cell) as i32),
                ("sans-serif", font_px),
            ))
            .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    encode_png(buf, size)
}

/// One line of a curves plot.
pub struct Series<'a> {
    pub name: &'a str,
    pub values: &'a [f64],
}

/// Loss and accuracy per epoch, train vs validation, side by side.
pub fn curves_png(loss: &[Series], accuracy: &[Series]) -> Result<Vec<u8>> {
    register_font();
    let size = (1000u32, 400u32);
    let mut buf = vec![255u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (left, right) = root.split_horizontally(size.0 / 2);
        for (area, title, series) in [(left, "loss", loss), (right, "accuracy", accuracy)] {
            let epochs = series
                .iter()
                .map(|s| s.values.len())
                .max()
                .unwrap_or(1)
                .max(2);
            let finite = series
                .iter()
                .flat_map(|s| s.values.iter().copied())
                .filter(|v| v.is_finite());
            let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
            let (lo, hi) = if lo.is_finite() {
                (lo, if hi > lo { hi } else { lo + 1.0 })
            } else {
                (0.0, 1.0)
            };
            let pad = (hi - lo) * 0.05;
            let mut chart = ChartBuilder::on(&area)
                .caption(title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(1f64..epochs as f64, (lo - pad)..(hi + pad))
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .label_style(("sans-serif", 12))
                .draw()
                .map_err(err)?;
            for (idx, s) in series.iter().enumerate() {
                let color = Palette99::pick(idx).to_rgba();
                let points: Vec<(f64, f64)> = s
                    .values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i as f64 + 1.0, *v))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(2)))
                    .map_err(err)?
                    .label(s.name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    encode_png(buf, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_pngs() {
        let classes: Vec<String> = (0..10).map(|i| format!("class {i}")).collect();
        let confusion: Vec<Vec<usize>> = (0..10)
            .map(|i| (0..10).map(|j| if i == j { 90 } else { i + j }).collect())
            .collect();
        let png = confusion_png(&confusion, &classes).unwrap();
        let img = image::load_from_memory(&png).unwrap();
        assert!(img.width() > 400);
        let loss = [
            Series {
                name: "train",
                values: &[1.0, 0.5, 0.3],
            },
            Series {
                name: "val",
                values: &[1.1, 0.7, 0.6],
            },
        ];
        let acc = [Series {
            name: "train",
            values: &[0.5, 0.8, 0.9],
        }];
        let png = curves_png(&loss, &acc).unwrap();
        assert_eq!(image::load_from_memory(&png).unwrap().width(), 1000);
    }
}
