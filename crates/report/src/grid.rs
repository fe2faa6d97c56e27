//! Qualitative grid: rows of test images, columns `input | original | student alone | NAS |
//! UGC | target` (any evaluated model can be a column), each model column captioned with
//! its MACs and label fraction relative to the original (the layout of the seed's Figures
//! 2-7). Small panels are enlarged by an integer factor with nearest-neighbour sampling,
//! and the grid says so under the images.

use std::collections::BTreeSet;
use std::path::Path;

use image::RgbImage;
use image::imageops::{self, FilterType};
use plotters::prelude::*;

use crate::error::ReportError;
use crate::font;
use crate::format;
use crate::plot::save_rgb;
use crate::record::EvalRecord;

/// One model column of the grid.
pub struct GridColumn<'r> {
    pub label: String,
    pub record: &'r EvalRecord,
}

/// Panels of one `input | output | target` strip written by the evaluate stage.
struct Strip {
    input: RgbImage,
    output: RgbImage,
    target: RgbImage,
}

fn read_strip(r: &EvalRecord, name: &str) -> Result<Strip, ReportError> {
    let path = r.dir.join("samples").join(name);
    let img = image::open(&path)
        .map_err(|e| ReportError::BadInput {
            node: r.node.clone(),
            file: path.clone(),
            msg: format!("cannot decode sample PNG: {e}"),
        })?
        .to_rgb8();
    let (w, h) = img.dimensions();
    if w == 0 || w % 3 != 0 {
        return Err(ReportError::BadInput {
            node: r.node.clone(),
            file: path,
            msg: format!("a sample strip is input | output | target: width {w} is not 3 panels"),
        });
    }
    let pw = w / 3;
    let crop = |i: u32| imageops::crop_imm(&img, i * pw, 0, pw, h).to_image();
    Ok(Strip {
        input: crop(0),
        output: crop(1),
        target: crop(2),
    })
}

const TEXT_PX: u32 = 15;
const LINE_PX: u32 = 19;
const GAP: u32 = 8;
/// Panels smaller than this are enlarged (nearest neighbour, integer factor) to stay visible.
const MIN_PANEL: u32 = 160;

/// File names present in the `samples/` of every column, sorted, at most `rows`.
pub fn common_samples(columns: &[GridColumn<'_>], rows: usize) -> Result<Vec<String>, ReportError> {
    let names = |r: &EvalRecord| -> BTreeSet<String> {
        r.samples
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect()
    };
    let mut common = names(columns[0].record);
    for c in &columns[1..] {
        let other = names(c.record);
        common.retain(|n| other.contains(n));
    }
    if common.is_empty() {
        return Err(ReportError::Inputs(format!(
            "qualitative grid: the evaluate inputs {} share no sample image (samples/*.png with \
             the same name); set grid_rows: 0 to skip the grid",
            columns
                .iter()
                .map(|c| format!("`{}`", c.record.node))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(common.into_iter().take(rows).collect())
}

/// Caption lines of a model column; ratios are relative to `original` when given.
pub fn caption(c: &GridColumn<'_>, original: Option<&EvalRecord>) -> Vec<String> {
    let mut lines = vec![c.label.clone()];
    let macs = c.record.metrics.get("macs").copied();
    if let Some(m) = macs {
        let rel = original
            .and_then(|o| o.metrics.get("macs"))
            .filter(|_| m > 0.0)
            .map(|o| format!(" ({})", format::ratio(o / m)))
            .unwrap_or_default();
        let shown = format::counts_distinct(&[m]).remove(0);
        lines.push(format!("MACs: {shown}{rel}"));
    }
    if let Some(f) = c.record.label_fraction {
        let rel = original
            .and_then(|o| o.label_fraction)
            .map(|o| format!(" ({})", format::ratio(o / f)))
            .unwrap_or_default();
        lines.push(format!("Labels: {}{rel}", format::percent(f)));
    }
    lines
}

/// What [`write_grid`] drew.
#[derive(Debug, Clone, PartialEq)]
pub struct GridDrawn {
    pub rows: usize,
    /// `32×32 px panels shown ×5 (nearest-neighbour)`, or the size when not enlarged.
    pub scale_note: String,
}

/// Renders the grid to `path`.
pub fn write_grid(
    path: &Path,
    columns: &[GridColumn<'_>],
    original: Option<&EvalRecord>,
    rows: usize,
) -> Result<GridDrawn, ReportError> {
    if columns.is_empty() {
        return Err(ReportError::Inputs(
            "qualitative grid: no model to show (no evaluate input matches `grid_columns`)".into(),
        ));
    }
    font::ensure_registered()?;
    let names = common_samples(columns, rows)?;
    let strips: Vec<Vec<Strip>> = names
        .iter()
        .map(|n| columns.iter().map(|c| read_strip(c.record, n)).collect())
        .collect::<Result<_, _>>()?;
    let (pw, ph) = strips[0][0].input.dimensions();
    for (row, name) in strips.iter().zip(&names) {
        for (s, c) in row.iter().zip(columns) {
            if s.input.dimensions() != (pw, ph) {
                return Err(ReportError::BadInput {
                    node: c.record.node.clone(),
                    file: c.record.dir.join("samples").join(name),
                    msg: format!(
                        "panel size {:?} differs from {:?} of the other columns",
                        s.input.dimensions(),
                        (pw, ph)
                    ),
                });
            }
        }
    }
    let scale = MIN_PANEL.div_ceil(pw.max(ph)).max(1);
    let (sw, sh) = (pw * scale, ph * scale);

    let mut captions: Vec<Vec<String>> = vec![vec!["Input".into()]];
    captions.extend(columns.iter().map(|c| caption(c, original)));
    captions.push(vec!["Target".into()]);
    let font = (font::FAMILY, TEXT_PX as f64).into_font();
    let text_w = |s: &str| -> Result<u32, ReportError> {
        font.box_size(s)
            .map(|(w, _)| w)
            .map_err(|e| ReportError::Draw {
                what: "grid caption".into(),
                msg: format!("{e:?}"),
            })
    };
    let mut col_w = Vec::new();
    for lines in &captions {
        let mut w = sw;
        for l in lines {
            w = w.max(text_w(l)? + 6);
        }
        col_w.push(w);
    }
    let scale_note = if scale > 1 {
        format!(
            "{} px panels shown ×{scale} (nearest-neighbour up-scaling).",
            format::size(ph, pw)
        )
    } else {
        format!("{} px panels at their size.", format::size(ph, pw))
    };
    let header = captions.iter().map(Vec::len).max().unwrap_or(1) as u32 * LINE_PX + GAP;
    let width = (col_w.iter().sum::<u32>() + GAP * (col_w.len() as u32 + 1))
        .max(text_w(&scale_note)? + 2 * GAP);
    let footer = LINE_PX + GAP;
    let height = header + (sh + GAP) * names.len() as u32 + GAP + footer;

    let mut canvas = RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let xs: Vec<u32> = col_w
        .iter()
        .scan(GAP, |x, w| {
            let here = *x;
            *x += w + GAP;
            Some(here)
        })
        .collect();
    for (ri, row) in strips.iter().enumerate() {
        let y = header + ri as u32 * (sh + GAP);
        let mut panels: Vec<&RgbImage> = vec![&row[0].input];
        panels.extend(row.iter().map(|s| &s.output));
        panels.push(&row[0].target);
        for (ci, p) in panels.into_iter().enumerate() {
            let big = imageops::resize(p, sw, sh, FilterType::Nearest);
            let x = xs[ci] + (col_w[ci] - sw) / 2;
            imageops::replace(&mut canvas, &big, i64::from(x), i64::from(y));
        }
    }
    let mut buf = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        let style = font.color(&BLACK);
        for (ci, lines) in captions.iter().enumerate() {
            for (li, l) in lines.iter().enumerate() {
                let x = (xs[ci] + (col_w[ci] - text_w(l)?) / 2) as i32;
                let y = (GAP / 2 + li as u32 * LINE_PX) as i32;
                root.draw(&Text::new(l.as_str(), (x, y), style.clone()))
                    .map_err(|e| ReportError::Draw {
                        what: "grid caption".into(),
                        msg: e.to_string(),
                    })?;
            }
        }
        let y = (height - footer) as i32;
        root.draw(&Text::new(
            scale_note.as_str(),
            (GAP as i32, y),
            style.clone(),
        ))
        .map_err(|e| ReportError::Draw {
            what: "grid caption".into(),
            msg: e.to_string(),
        })?;
        root.present().map_err(|e| ReportError::Draw {
            what: "grid".into(),
            msg: e.to_string(),
        })?;
    }
    save_rgb(path, width, height, buf)?;
    Ok(GridDrawn {
        rows: names.len(),
        scale_note,
    })
}
