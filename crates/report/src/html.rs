//! `report.html`: one self-contained page (no network, no external file needed to render):
//! the figures embedded as data URLs, the tables sortable by a click on a header, the part
//! of the DAG the report sees drawn as SVG, each model's parameters, and links to each
//! evaluate output folder. A script error is written into the page (`#errors`), and the
//! body's `data-ready` is set once the script has run, so a headless browser can check it.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;

use crate::error::ReportError;
use crate::params::ReportParams;
use crate::record::EvalRecord;
use crate::table::{Table, html_escape};
use crate::tables::{method_of, model_label};

/// One figure of the page.
pub struct Figure<'a> {
    pub id: &'a str,
    pub png: &'a Path,
    pub caption: String,
    /// Other renderings, linked relative to the report folder (e.g. `tradeoff.pdf`).
    pub links: Vec<String>,
}

/// Everything the page shows.
pub struct Page<'a> {
    pub title: &'a str,
    pub summary: &'a str,
    pub headline: &'a [String],
    pub tables: &'a [Table],
    pub figures: &'a [Figure<'a>],
    pub records: &'a [EvalRecord],
    pub params: &'a ReportParams,
}

const STYLE: &str = "body{font-family:'DejaVu Sans',sans-serif;margin:2em auto;max-width:70em;\
color:#222}table{border-collapse:collapse;margin:.5em 0}caption{font-weight:bold;\
text-align:left;padding:.3em 0}th,td{padding:.2em .6em;border-bottom:1px solid #ccc;\
text-align:left}th{cursor:pointer;border-bottom:2px solid #444;background:#f4f4f4}\
th.asc::after{content:' \\25B2'}th.desc::after{content:' \\25BC'}figure{margin:1em 0}\
figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.9em;color:#444}\
pre{background:#f7f7f7;padding:.5em;overflow:auto;font-size:.8em}#errors{color:#b00}";

/// Sorts a table by the clicked column: numbers (the leading number of a cell such as
/// `0.418G` or `41.20 ± 0.30`) numerically, other text alphabetically, dashes last.
const SCRIPT: &str = r#"
window.addEventListener('error', function (e) {
  var li = document.createElement('li');
  li.textContent = String(e.message);
  document.getElementById('errors').appendChild(li);
});
function cellKey(td) {
  var t = td.textContent.trim();
  var m = t.match(/^[-+]?\d+(\.\d+)?([eE][-+]?\d+)?/);
  if (m) {
    var v = parseFloat(m[0]);
    var u = t.charAt(m[0].length);
    if (u === 'G') v *= 1e9; else if (u === 'M') v *= 1e6; else if (u === 'K') v *= 1e3;
    return {n: v};
  }
  return {s: t === '\u2013' ? null : t};
}
function sortBy(table, col, th) {
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var desc = th.classList.contains('asc');
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) {
    c.classList.remove('asc', 'desc');
  });
  th.classList.add(desc ? 'desc' : 'asc');
  rows.sort(function (a, b) {
    var x = cellKey(a.cells[col]), y = cellKey(b.cells[col]);
    var r;
    if (x.n !== undefined && y.n !== undefined) r = x.n - y.n;
    else if (x.s === null || y.s === null) return (x.s === null) - (y.s === null);
    else r = String(x.s !== undefined ? x.s : x.n).localeCompare(String(y.s !== undefined ? y.s : y.n));
    return desc ? -r : r;
  });
  rows.forEach(function (r) { body.appendChild(r); });
}
Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), function (table) {
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
    th.addEventListener('click', function () { sortBy(table, i, th); });
  });
});
document.body.setAttribute('data-ready', 'ok');
"#;

/// The page as HTML text.
pub fn render(page: &Page<'_>) -> Result<String, ReportError> {
    let mut h =
        String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str(&format!("<title>{}</title>\n", html_escape(page.title)));
    h.push_str(&format!("<style>{STYLE}</style>\n</head>\n<body>\n"));
    h.push_str(&format!("<h1>{}</h1>\n", html_escape(page.title)));
    h.push_str("<ul id=\"errors\"></ul>\n");
    h.push_str(&format!("<p>{}</p>\n", html_escape(page.summary)));
    if !page.headline.is_empty() {
        h.push_str("<section id=\"headline\"><h2>Headline</h2>\n");
        for s in page.headline {
            h.push_str(&format!("<p>{}</p>\n", html_escape(&s.replace('`', ""))));
        }
        h.push_str("</section>\n");
    }
    h.push_str("<section id=\"figures\"><h2>Figures</h2>\n");
    for f in page.figures {
        let bytes = std::fs::read(f.png)
            .map_err(|e| ReportError::io(format!("reading {}", f.png.display()), e))?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let links = f
            .links
            .iter()
            .map(|l| format!(" <a href=\"{0}\">{0}</a>", html_escape(l)))
            .collect::<String>();
        h.push_str(&format!(
            "<figure class=\"figure\" id=\"figure-{}\"><img alt=\"{}\" src=\"data:image/png;base64,{b64}\">\
             <figcaption>{}{}</figcaption></figure>\n",
            html_escape(f.id),
            html_escape(f.id),
            html_escape(&f.caption),
            if links.is_empty() {
                String::new()
            } else {
                format!(" Files:{links}")
            }
        ));
    }
    h.push_str("</section>\n<section id=\"tables\"><h2>Tables</h2>\n");
    for t in page.tables {
        h.push_str(&t.to_html());
        h.push_str(&format!(
            "<p>Files: <a href=\"tables/{0}.csv\">{0}.csv</a> <a href=\"tables/{0}.tex\">{0}.tex</a> \
             <a href=\"tables/{0}.md\">{0}.md</a></p>\n",
            html_escape(&t.name)
        ));
    }
    h.push_str("</section>\n<section id=\"dag\"><h2>Pipeline</h2>\n");
    h.push_str(&dag_svg(page.records, page.params));
    h.push_str(
        "<p>The part of the pipeline the report sees: each evaluated model's stage and the \
         split it was evaluated with (by its manifest), the evaluate stages, the report. \
         <code>ugc-pipe show PIPELINE</code> lists every stage.</p>\n</section>\n",
    );
    h.push_str("<section id=\"models\"><h2>Models</h2>\n");
    for r in page.records {
        h.push_str(&format!(
            "<details class=\"model\"><summary>{label} — {node}</summary>\n\
             <p>Evaluate output: stage <code>{node}</code> (its folder, with eval.json and \
             metrics.json, is listed by <code>ugc-pipe show PIPELINE --json</code>; the page \
             names no path, so its bytes do not depend on where the cache is). The model's \
             weights are in its stage's output (eval.json <code>model.weights_blake3</code> \
             names them); its \
             training log is that stage's <code>log.csv</code> (the training stages write no \
             TensorBoard files).</p>\n<pre>{json}</pre></details>\n",
            label = html_escape(&model_label(r, page.params)),
            node = html_escape(&r.node),
            json = html_escape(
                &serde_json::to_string_pretty(&r.model_json).unwrap_or_else(|_| "null".into())
            ),
        ));
    }
    h.push_str("</section>\n");
    h.push_str(&format!("<script>{SCRIPT}</script>\n</body>\n</html>\n"));
    Ok(h)
}

/// The DAG as an SVG: splits and model stages | evaluate stages | the report.
pub fn dag_svg(records: &[EvalRecord], params: &ReportParams) -> String {
    // Sources: one node per model stage (by stage and role-less name) and per split digest.
    let mut sources: Vec<String> = Vec::new();
    let mut edges: Vec<(usize, usize)> = Vec::new();
    let mut splits: BTreeMap<String, String> = BTreeMap::new();
    let mut evals: Vec<String> = Vec::new();
    for r in records {
        if !evals.contains(&r.input) {
            evals.push(r.input.clone());
        }
        let e = evals.iter().position(|x| x == &r.input).expect("pushed");
        if let Some(stage) = &r.model_stage {
            let label = format!("{stage} ({})", method_of(r, params));
            let label = if r.role.is_some() {
                format!("{stage} (teachers)")
            } else {
                label
            };
            if !sources.contains(&label) {
                sources.push(label.clone());
            }
            let s = sources.iter().position(|x| x == &label).expect("pushed");
            if !edges.contains(&(s, e)) {
                edges.push((s, e));
            }
        }
        if let Some(d) = &r.split_digest {
            let n = splits.len();
            let label = splits.entry(d.clone()).or_insert_with(|| {
                format!(
                    "split {} ({} labels)",
                    n + 1,
                    r.label_fraction
                        .map(crate::format::percent)
                        .unwrap_or_else(|| "?".into())
                )
            });
            let label = label.clone();
            if !sources.contains(&label) {
                sources.push(label.clone());
            }
            let s = sources.iter().position(|x| x == &label).expect("pushed");
            if !edges.contains(&(s, e)) {
                edges.push((s, e));
            }
        }
    }
    let (bw, bh, gap) = (230.0, 26.0, 10.0);
    let cols = [30.0, 330.0, 630.0];
    let rows = sources.len().max(evals.len()).max(1) as f64;
    let height = rows * (bh + gap) + gap;
    let y_of = |i: usize, n: usize| {
        let span = n as f64 * (bh + gap) - gap;
        (height - span) / 2.0 + i as f64 * (bh + gap)
    };
    let mut svg = format!(
        "<svg class=\"dag\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
         font-family=\"DejaVu Sans, sans-serif\" font-size=\"12\">\n",
        cols[2] + bw + 30.0
    );
    let edge = |x1: f64, y1: f64, x2: f64, y2: f64| {
        format!(
            "<path d=\"M{x1},{y1} C{},{y1} {},{y2} {x2},{y2}\" fill=\"none\" stroke=\"#888\"/>\n",
            (x1 + x2) / 2.0,
            (x1 + x2) / 2.0
        )
    };
    for &(s, e) in &edges {
        svg.push_str(&edge(
            cols[0] + bw,
            y_of(s, sources.len()) + bh / 2.0,
            cols[1],
            y_of(e, evals.len()) + bh / 2.0,
        ));
    }
    let ry = y_of(0, 1);
    for e in 0..evals.len() {
        svg.push_str(&edge(
            cols[1] + bw,
            y_of(e, evals.len()) + bh / 2.0,
            cols[2],
            ry + bh / 2.0,
        ));
    }
    let node = |x: f64, y: f64, text: &str, fill: &str| {
        format!(
            "<g class=\"node\"><rect x=\"{x}\" y=\"{y}\" width=\"{bw}\" height=\"{bh}\" rx=\"4\" \
             fill=\"{fill}\" stroke=\"#555\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text></g>\n",
            x + bw / 2.0,
            y + bh / 2.0 + 4.0,
            html_escape(text)
        )
    };
    for (i, s) in sources.iter().enumerate() {
        svg.push_str(&node(cols[0], y_of(i, sources.len()), s, "#e8f0fb"));
    }
    for (i, e) in evals.iter().enumerate() {
        svg.push_str(&node(cols[1], y_of(i, evals.len()), e, "#eef7e8"));
    }
    svg.push_str(&node(cols[2], ry, "report", "#fbf1e0"));
    svg.push_str("</svg>\n");
    svg
}
