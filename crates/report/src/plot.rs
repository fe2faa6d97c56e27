//! The MACs-vs-metric trade-off plot (the seed's Figure 1), as PNG and SVG.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::ReportError;
use crate::font;
use crate::tables::Series;

/// Pixel size of both renderings.
pub const PLOT_SIZE: (u32, u32) = (900, 600);

/// Curve colours (matplotlib's "tab10" cycle): distinct on white, unlike plotters' palette
/// whose third colour is a pale yellow.
const SERIES_COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Point marker of a curve. After the ten colours the marker changes, so that an ablation
/// matrix with more curves than colours (3 label ratios x 3 models + the original) never
/// draws two curves alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Circle,
    Triangle,
    Square,
}

/// Colour and marker of the `i`-th curve: unique for the first 30 curves.
fn series_style(i: usize) -> (RGBColor, Marker) {
    let n = SERIES_COLORS.len();
    let marker = match (i / n) % 3 {
        0 => Marker::Circle,
        1 => Marker::Triangle,
        _ => Marker::Square,
    };
    (SERIES_COLORS[i % n], marker)
}

/// Text of the axes and title.
pub struct PlotLabels<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
}

fn draw_err(what: &str) -> impl Fn(String) -> ReportError + '_ {
    move |msg| ReportError::Draw {
        what: what.into(),
        msg,
    }
}

/// Draws the curves on any plotters backend.
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    series: &[Series],
    labels: &PlotLabels<'_>,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x1, mut y0, mut y1) = (f64::MIN, f64::MAX, f64::MIN);
    for &(x, y, sd) in pts {
        x1 = x1.max(x);
        y0 = y0.min(y - sd);
        y1 = y1.max(y + sd);
    }
    // Pad so single points and flat curves still get a readable range.
    let pad = |lo: f64, hi: f64| {
        let span = hi - lo;
        let p = if span > 0.0 {
            span * 0.08
        } else {
            lo.abs().max(1e-3) * 0.1
        };
        (lo - p, hi + p)
    };
    // MACs start at 0 so compression ratios read off the axis.
    let (_, x1) = pad(0.0, x1);
    let x0 = 0.0;
    let (y0, y1) = pad(y0, y1);

    let mut chart = ChartBuilder::on(root)
        .caption(labels.title, (font::FAMILY, 26))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("MACs (G)")
        .y_desc(labels.y_label)
        .label_style((font::FAMILY, 16))
        .axis_desc_style((font::FAMILY, 18))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| e.to_string())?;

    for (i, s) in series.iter().enumerate() {
        let (rgb, marker) = series_style(i);
        let color = rgb.to_rgba();
        let style = ShapeStyle::from(color).stroke_width(3);
        let xy: Vec<(f64, f64)> = s.points.iter().map(|&(x, y, _)| (x, y)).collect();
        let line = chart
            .draw_series(LineSeries::new(xy.clone(), style))
            .map_err(|e| e.to_string())?;
        line.label(s.name.as_str());
        // The legend shows the curve's line with its marker on it.
        let legend_line = move |(x, y): (i32, i32)| {
            EmptyElement::at((x, y)) + PathElement::new(vec![(0, 0), (24, 0)], style)
        };
        let filled = color.filled();
        match marker {
            Marker::Circle => {
                line.legend(move |p| legend_line(p) + Circle::new((12, 0), 5, filled));
                chart.draw_series(xy.iter().map(|&p| Circle::new(p, 6, filled)))
            }
            Marker::Triangle => {
                line.legend(move |p| legend_line(p) + TriangleMarker::new((12, 0), 7, filled));
                chart.draw_series(xy.iter().map(|&p| TriangleMarker::new(p, 8, filled)))
            }
            Marker::Square => {
                let sq = move |c: (i32, i32)| {
                    Rectangle::new([(c.0 - 5, c.1 - 5), (c.0 + 5, c.1 + 5)], filled)
                };
                line.legend(move |p| legend_line(p) + sq((12, 0)));
                chart.draw_series(xy.iter().map(|&p| EmptyElement::at(p) + sq((0, 0))))
            }
        }
        .map_err(|e| e.to_string())?;
        // Error bars (± std over seeds) where there is spread.
        chart
            .draw_series(s.points.iter().filter(|p| p.2 > 0.0).map(|&(x, y, sd)| {
                PathElement::new(vec![(x, y - sd), (x, y + sd)], color.stroke_width(2))
            }))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .label_font((font::FAMILY, 18))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Writes `<stem>.png` and `<stem>.svg`.
pub fn write_tradeoff(
    stem: &Path,
    series: &[Series],
    labels: &PlotLabels<'_>,
) -> Result<(), ReportError> {
    if series.iter().all(|s| s.points.is_empty()) {
        return Err(ReportError::Inputs(
            "the trade-off plot has no points (no evaluate input at the ablation defaults)".into(),
        ));
    }
    font::ensure_registered()?;
    let (w, h) = PLOT_SIZE;
    let svg_path = stem.with_extension("svg");
    {
        let root = SVGBackend::new(&svg_path, (w, h)).into_drawing_area();
        draw(&root, series, labels).map_err(draw_err("the trade-off SVG"))?;
    }
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root, series, labels).map_err(draw_err("the trade-off PNG"))?;
    }
    save_rgb(&stem.with_extension("png"), w, h, buf)
}

/// Encodes an RGB buffer as PNG with the workspace's `image` crate.
pub fn save_rgb(path: &Path, w: u32, h: u32, buf: Vec<u8>) -> Result<(), ReportError> {
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| ReportError::Draw {
        what: path.display().to_string(),
        msg: "buffer size does not match the image size".into(),
    })?;
    img.save(path).map_err(|e| ReportError::Draw {
        what: path.display().to_string(),
        msg: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_curves_get_thirty_distinct_styles() {
        let mut seen = Vec::new();
        for i in 0..30 {
            let (c, m) = series_style(i);
            let style = ((c.0, c.1, c.2), m);
            assert!(!seen.contains(&style), "curve {i} repeats {style:?}");
            seen.push(style);
        }
    }
}
