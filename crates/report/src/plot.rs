//! The MACs-vs-metric trade-off figure (the seed's Figure 1), as PNG, SVG and PDF.
//!
//! Lines join only real sweeps (several matrix points of one evaluate stage) and, when
//! asked, the Pareto front; a single model is a marker labelled with its name. The legend
//! sits to the right of the plotting area so that it never hides a point. Sizes are in
//! inches: the SVG and PDF use 72 units per inch (PDF points), the PNG `dpi` pixels.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::ReportError;
use crate::font;
use crate::params::FigureFormat;

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

/// One measured model on the figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// MACs in the x axis' unit.
    pub x: f64,
    /// Metric mean in display units.
    pub y: f64,
    /// Std over seeds in display units (0 for one run).
    pub sd: f64,
    /// Evaluate stage it came from: points of one stage form a sweep.
    pub input: String,
    /// Model label, written next to a point that is not on a sweep line.
    pub label: String,
}

/// One method (legend entry) of the figure.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

impl Series {
    /// Sweeps of this series: per evaluate stage with at least two points, its points by
    /// MACs. Everything else is a single point.
    pub fn sweeps(&self) -> Vec<Vec<&Point>> {
        let mut inputs: Vec<&str> = Vec::new();
        for p in &self.points {
            if !inputs.contains(&p.input.as_str()) {
                inputs.push(&p.input);
            }
        }
        inputs
            .into_iter()
            .map(|i| {
                let mut pts: Vec<&Point> = self.points.iter().filter(|p| p.input == i).collect();
                pts.sort_by(|a, b| a.x.total_cmp(&b.x));
                pts
            })
            .filter(|pts| pts.len() > 1)
            .collect()
    }

    /// Whether `p` lies on one of the series' sweeps.
    fn on_sweep(&self, p: &Point) -> bool {
        self.points.iter().filter(|q| q.input == p.input).count() > 1
    }
}

/// Models that no other model beats on both MACs (fewer) and the metric (better), by MACs.
pub fn pareto_front(series: &[Series], higher_is_better: bool) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| (p.x, p.y)))
        .collect();
    let better = |a: f64, b: f64| if higher_is_better { a > b } else { a < b };
    // Cheapest first; at equal MACs the best first, so that it is the one kept.
    pts.sort_by(|a, b| {
        a.0.total_cmp(&b.0).then_with(|| {
            if higher_is_better {
                b.1.total_cmp(&a.1)
            } else {
                a.1.total_cmp(&b.1)
            }
        })
    });
    let mut front: Vec<(f64, f64)> = Vec::new();
    for p in pts {
        if front.last().is_none_or(|last| better(p.1, last.1)) {
            front.push(p);
        }
    }
    front
}

/// Text and layout of the figure.
pub struct FigureSpec<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub width_in: f64,
    pub height_in: f64,
    pub dpi: u32,
    pub formats: &'a [FigureFormat],
    pub pareto: Option<Vec<(f64, f64)>>,
}

/// Typographic sizes in points, scaled by the backend's units per point.
struct Scale(f64);

impl Scale {
    fn px(&self, pt: f64) -> f64 {
        pt * self.0
    }
    fn i(&self, pt: f64) -> i32 {
        self.px(pt).round() as i32
    }
    fn u(&self, pt: f64) -> u32 {
        self.px(pt).round().max(1.0) as u32
    }
}

fn text_width(s: &str, size: f64) -> u32 {
    (font::FAMILY, size)
        .into_font()
        .box_size(s)
        .map(|(w, _)| w)
        .unwrap_or((s.chars().count() as f64 * size * 0.6) as u32)
}

/// Draws the figure on any plotters backend; `k` is backend units per point.
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    series: &[Series],
    spec: &FigureSpec<'_>,
    k: f64,
) -> Result<(), String> {
    let s = Scale(k);
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (width, _) = root.dim_in_pixel();
    // The legend column: as wide as its longest entry.
    let legend_font = s.px(8.5);
    let mut entries: Vec<String> = series.iter().map(|x| x.name.clone()).collect();
    if spec.pareto.is_some() {
        entries.push("Pareto front".into());
    }
    let legend_w = entries
        .iter()
        .map(|e| text_width(e, legend_font))
        .max()
        .unwrap_or(0)
        + s.u(30.0);
    let legend_w = legend_w.min(width / 2);
    let (plot_area, legend_area) = root.split_horizontally(width - legend_w);

    let all = || series.iter().flat_map(|x| x.points.iter());
    let (mut x1, mut y0, mut y1) = (f64::MIN, f64::MAX, f64::MIN);
    for p in all() {
        x1 = x1.max(p.x);
        y0 = y0.min(p.y - p.sd);
        y1 = y1.max(p.y + p.sd);
    }
    // Pad so single points and flat curves still get a readable range.
    let pad = |lo: f64, hi: f64| {
        let span = hi - lo;
        let p = if span > 0.0 {
            span * 0.1
        } else {
            lo.abs().max(1e-3) * 0.1
        };
        (lo - p, hi + p)
    };
    // MACs start at 0 so compression ratios read off the axis; room on the right for
    // the point labels.
    let x1 = x1 * 1.15;
    let (y0, y1) = pad(y0, y1);

    let mut chart = ChartBuilder::on(&plot_area)
        .caption(spec.title, (font::FAMILY, s.px(11.0)))
        .margin(s.u(8.0))
        .x_label_area_size(s.u(30.0))
        .y_label_area_size(s.u(40.0))
        .build_cartesian_2d(0.0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(spec.x_label)
        .y_desc(spec.y_label)
        .label_style((font::FAMILY, s.px(8.0)))
        .axis_desc_style((font::FAMILY, s.px(9.0)))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(|e| e.to_string())?;

    if let Some(front) = &spec.pareto {
        let style = ShapeStyle::from(RGBColor(90, 90, 90)).stroke_width(s.u(1.0));
        chart
            .draw_series(DashedLineSeries::new(
                front.clone(),
                s.i(4.0),
                s.i(3.0),
                style,
            ))
            .map_err(|e| e.to_string())?;
    }

    let r = s.i(3.2);
    for (i, ser) in series.iter().enumerate() {
        let (rgb, marker) = series_style(i);
        let color = rgb.to_rgba();
        let line_style = ShapeStyle::from(color).stroke_width(s.u(1.5));
        for sweep in ser.sweeps() {
            let xy: Vec<(f64, f64)> = sweep.iter().map(|p| (p.x, p.y)).collect();
            chart
                .draw_series(LineSeries::new(xy, line_style))
                .map_err(|e| e.to_string())?;
        }
        // Error bars (± std over seeds) with caps, under the markers.
        let cap = s.i(3.0);
        for p in ser.points.iter().filter(|p| p.sd > 0.0) {
            let bar = ShapeStyle::from(color).stroke_width(s.u(1.0));
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(p.x, p.y - p.sd), (p.x, p.y + p.sd)],
                    bar,
                )))
                .map_err(|e| e.to_string())?;
            for yy in [p.y - p.sd, p.y + p.sd] {
                chart
                    .draw_series(std::iter::once(
                        EmptyElement::at((p.x, yy))
                            + PathElement::new(vec![(-cap, 0), (cap, 0)], bar),
                    ))
                    .map_err(|e| e.to_string())?;
            }
        }
        let filled = color.filled();
        let xy: Vec<(f64, f64)> = ser.points.iter().map(|p| (p.x, p.y)).collect();
        match marker {
            Marker::Circle => chart.draw_series(xy.iter().map(|&p| Circle::new(p, r, filled))),
            Marker::Triangle => {
                chart.draw_series(xy.iter().map(|&p| TriangleMarker::new(p, r + 1, filled)))
            }
            Marker::Square => chart.draw_series(
                xy.iter()
                    .map(|&p| EmptyElement::at(p) + Rectangle::new([(-r, -r), (r, r)], filled)),
            ),
        }
        .map_err(|e| e.to_string())?;
        // Single models are named next to their marker when the legend alone cannot
        // tell them apart (several models of one method, e.g. the wide and deep teacher).
        let singles: Vec<&Point> = ser.points.iter().filter(|p| !ser.on_sweep(p)).collect();
        if singles.len() > 1 {
            let style = (font::FAMILY, s.px(7.0)).into_font().color(&BLACK);
            for p in singles {
                chart
                    .draw_series(std::iter::once(
                        EmptyElement::at((p.x, p.y))
                            + Text::new(p.label.clone(), (s.i(5.0), -s.i(9.0)), style.clone()),
                    ))
                    .map_err(|e| e.to_string())?;
            }
        }
    }

    // The legend, outside the data.
    let line_h = s.i(13.0);
    let top = s.i(30.0);
    let text_style = (font::FAMILY, legend_font).into_font().color(&BLACK);
    for (i, name) in entries.iter().enumerate() {
        let y = top + i as i32 * line_h;
        let x = s.i(6.0);
        if i < series.len() {
            let (rgb, marker) = series_style(i);
            let filled = rgb.to_rgba().filled();
            let c = (x + s.i(8.0), y);
            match marker {
                Marker::Circle => legend_area.draw(&Circle::new(c, r, filled)),
                Marker::Triangle => legend_area.draw(&TriangleMarker::new(c, r + 1, filled)),
                Marker::Square => legend_area.draw(&Rectangle::new(
                    [(c.0 - r, c.1 - r), (c.0 + r, c.1 + r)],
                    filled,
                )),
            }
            .map_err(|e| e.to_string())?;
            if series[i].points.len() > 1 && !series[i].sweeps().is_empty() {
                let st = ShapeStyle::from(rgb.to_rgba()).stroke_width(s.u(1.5));
                legend_area
                    .draw(&PathElement::new(vec![(x, y), (x + s.i(16.0), y)], st))
                    .map_err(|e| e.to_string())?;
            }
        } else {
            let st = ShapeStyle::from(RGBColor(90, 90, 90)).stroke_width(s.u(1.0));
            legend_area
                .draw(&PathElement::new(vec![(x, y), (x + s.i(6.0), y)], st))
                .map_err(|e| e.to_string())?;
            legend_area
                .draw(&PathElement::new(
                    vec![(x + s.i(10.0), y), (x + s.i(16.0), y)],
                    st,
                ))
                .map_err(|e| e.to_string())?;
        }
        legend_area
            .draw(&Text::new(
                name.as_str(),
                (x + s.i(20.0), y - (legend_font / 2.0) as i32),
                text_style.clone(),
            ))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Writes `<stem>.<ext>` for each of `spec.formats`; returns the files written.
pub fn write_tradeoff(
    stem: &Path,
    series: &[Series],
    spec: &FigureSpec<'_>,
) -> Result<Vec<PathBuf>, ReportError> {
    if series.iter().all(|s| s.points.is_empty()) {
        return Err(ReportError::Inputs(
            "the trade-off plot has no points (no evaluate input at the ablation defaults)".into(),
        ));
    }
    font::ensure_registered()?;
    let mut written = Vec::new();
    let wants = |f: FigureFormat| spec.formats.contains(&f);
    if wants(FigureFormat::Svg) || wants(FigureFormat::Pdf) {
        let svg = render_svg(series, spec)?;
        if wants(FigureFormat::Svg) {
            let p = stem.with_extension("svg");
            write_bytes(&p, svg.as_bytes())?;
            written.push(p);
        }
        if wants(FigureFormat::Pdf) {
            let p = stem.with_extension("pdf");
            write_bytes(&p, &svg_to_pdf(&svg)?)?;
            written.push(p);
        }
    }
    if wants(FigureFormat::Png) {
        let (w, h) = png_size(spec);
        let mut buf = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            draw(&root, series, spec, f64::from(spec.dpi) / 72.0)
                .map_err(draw_err("the trade-off PNG"))?;
        }
        let p = stem.with_extension("png");
        save_rgb(&p, w, h, buf)?;
        written.push(p);
    }
    Ok(written)
}

/// Pixel size of the PNG: inches times dpi.
pub fn png_size(spec: &FigureSpec<'_>) -> (u32, u32) {
    let d = f64::from(spec.dpi);
    (
        (spec.width_in * d).round() as u32,
        (spec.height_in * d).round() as u32,
    )
}

/// The figure as SVG text, 72 units per inch.
pub fn render_svg(series: &[Series], spec: &FigureSpec<'_>) -> Result<String, ReportError> {
    font::ensure_registered()?;
    let size = (
        (spec.width_in * 72.0).round() as u32,
        (spec.height_in * 72.0).round() as u32,
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw(&root, series, spec, 1.0).map_err(draw_err("the trade-off SVG"))?;
    }
    Ok(svg)
}

/// Converts an SVG to a one-page vector PDF of the same size (1 SVG unit = 1 pt). Text is
/// laid out with the embedded DejaVu Sans, so no system font is needed.
pub fn svg_to_pdf(svg: &str) -> Result<Vec<u8>, ReportError> {
    let mut db = usvg::fontdb::Database::new();
    db.load_font_data(dejavu::sans::regular().to_vec());
    db.load_font_data(dejavu::sans::bold().to_vec());
    db.set_sans_serif_family("DejaVu Sans");
    let opts = usvg::Options {
        fontdb: Arc::new(db),
        font_family: "DejaVu Sans".into(),
        ..usvg::Options::default()
    };
    let tree = usvg::Tree::from_str(svg, &opts).map_err(|e| ReportError::Draw {
        what: "the trade-off PDF".into(),
        msg: format!("parsing the SVG: {e}"),
    })?;
    svg2pdf::to_pdf(
        &tree,
        svg2pdf::ConversionOptions::default(),
        svg2pdf::PageOptions::default(),
    )
    .map_err(|e| ReportError::Draw {
        what: "the trade-off PDF".into(),
        msg: e.to_string(),
    })
}

fn draw_err(what: &str) -> impl Fn(String) -> ReportError + '_ {
    move |msg| ReportError::Draw {
        what: what.into(),
        msg,
    }
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    std::fs::write(path, bytes)
        .map_err(|e| ReportError::io(format!("writing {}", path.display()), e))
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

    fn pt(x: f64, y: f64, input: &str) -> Point {
        Point {
            x,
            y,
            sd: 0.0,
            input: input.into(),
            label: input.into(),
        }
    }

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

    #[test]
    fn only_points_of_one_stage_form_a_sweep() {
        let s = Series {
            name: "teacher".into(),
            points: vec![pt(3.0, 1.0, "wide"), pt(2.0, 2.0, "deep")],
        };
        assert!(s.sweeps().is_empty(), "two stages are two single models");
        let s = Series {
            name: "UGC".into(),
            points: vec![pt(3.0, 1.0, "ugc"), pt(1.0, 2.0, "ugc"), pt(2.0, 0.0, "x")],
        };
        let sw = s.sweeps();
        assert_eq!(sw.len(), 1);
        assert_eq!(
            sw[0].iter().map(|p| p.x).collect::<Vec<_>>(),
            [1.0, 3.0],
            "a sweep runs by MACs"
        );
    }

    #[test]
    fn pareto_front_keeps_the_undominated_models() {
        let s = [Series {
            name: "a".into(),
            points: vec![
                pt(1.0, 0.3, "a"),
                pt(2.0, 0.2, "b"),
                pt(3.0, 0.5, "c"),
                pt(3.0, 0.4, "d"),
                pt(4.0, 0.45, "e"),
            ],
        }];
        assert_eq!(pareto_front(&s, true), [(1.0, 0.3), (3.0, 0.5)]);
        assert_eq!(pareto_front(&s, false), [(1.0, 0.3), (2.0, 0.2)]);
    }
}
