//! The `report` stage kind: gathers every `evaluate` instance of the DAG / matrix and writes
//! tables (markdown, CSV, LaTeX), the trade-off figure (PNG, SVG, PDF), a qualitative grid,
//! `report.md` with the headline stated with its uncertainty, and `report.html`.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Value};
use ugc_engine::{KindSchema, StageContext, StageError, StageInput, StageKind};
use ugc_kinds::KindParams;

use crate::error::ReportError;
use crate::grid::{self, GridColumn};
use crate::params::{ReportParams, TableKind};
use crate::plot::{self, FigureSpec};
use crate::record::{EvalRecord, load_records, value_text};
use crate::table::Table;
use crate::tables::{self, cmp_values, method_of, model_label};
use crate::{compare, format, html};

/// `report` (its schema and typed parameters are `ugc_kinds::report`).
pub struct ReportStage {
    schema: KindSchema,
}

impl ReportStage {
    pub fn new(schema: KindSchema) -> Self {
        ReportStage { schema }
    }
}

impl StageKind for ReportStage {
    fn schema(&self) -> &KindSchema {
        &self.schema
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let params: ReportParams = ctx.typed_params()?;
        ctx.progress.message(&format!(
            "report over {} evaluate input(s)",
            ctx.inputs.iter().filter(|i| i.kind == "evaluate").count()
        ));
        build_report(&params, ctx.inputs, ctx.out_dir)?;
        Ok(())
    }
}

/// What was written, counted (also the stage's `metrics.json`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportSummary {
    pub inputs: usize,
    /// (table name, number of rows), in the order written.
    pub table_rows: Vec<(String, usize)>,
    pub curves: usize,
    pub grid_rows: usize,
}

impl ReportSummary {
    fn to_metrics(&self) -> Value {
        let mut m = Map::new();
        m.insert("inputs".into(), self.inputs.into());
        for (name, rows) in &self.table_rows {
            m.insert(format!("rows_{name}"), (*rows).into());
        }
        m.insert("curves".into(), self.curves.into());
        m.insert("grid_rows".into(), self.grid_rows.into());
        Value::Object(m)
    }
}

/// The title built from the inputs: metric, MACs size, label fractions, seeds.
pub fn auto_title(records: &[EvalRecord], params: &ReportParams) -> String {
    let models: Vec<&EvalRecord> = records.iter().filter(|r| !r.reference).collect();
    let mut fr: Vec<f64> = Vec::new();
    let mut orig: Vec<f64> = Vec::new();
    for r in &models {
        if let Some(f) = r.label_fraction {
            let v = if tables::method_of(r, params) == params.original_curve {
                &mut orig
            } else {
                &mut fr
            };
            if !v.contains(&f) {
                v.push(f);
            }
        }
    }
    fr.sort_by(f64::total_cmp);
    orig.sort_by(f64::total_cmp);
    let pct = |v: &[f64]| {
        v.iter()
            .map(|f| format::percent(*f))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let seeds = records
        .iter()
        .filter_map(|r| r.var(&params.seed_var))
        .collect::<BTreeSet<_>>()
        .len()
        .max(1);
    let size = match params.macs_size.as_slice() {
        [h, w] => format!(" at {}", format::size(*h, *w)),
        _ => String::new(),
    };
    let mut t = format!(
        "{} vs MACs{size}",
        crate::params::metric_display(params.metric.key())
    );
    if !fr.is_empty() {
        t.push_str(&format!(", {} labels", pct(&fr)));
    }
    if !orig.is_empty() && orig != fr {
        t.push_str(&format!(" ({}: {})", params.original_curve, pct(&orig)));
    }
    t.push_str(&format!(
        ", {seeds} seed{}",
        if seeds == 1 { "" } else { "s" }
    ));
    t
}

/// Builds the whole report from `inputs` into `out`.
pub fn build_report(
    params: &ReportParams,
    inputs: &[StageInput],
    out: &Path,
) -> Result<ReportSummary, ReportError> {
    // The planner refuses these before the stage runs; a caller of the library that builds
    // its own parameters gets the same refusal.
    if let Some(p) = params.check().into_iter().next() {
        return Err(ReportError::Param {
            param: p.param,
            msg: p.message,
        });
    }
    let records = load_records(inputs, &params.label_var)?;
    let mut summary = ReportSummary {
        inputs: records.len(),
        ..ReportSummary::default()
    };
    let title = params
        .title
        .clone()
        .unwrap_or_else(|| auto_title(&records, params));
    let mut md = format!("# {title}\n\n");
    let intro = format!(
        "{} evaluate result(s) from {} stage(s). Primary metric: {}.",
        records.len(),
        records
            .iter()
            .map(|r| r.input.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        params.metric_header()
    );
    md.push_str(&intro);
    md.push_str("\n\n");
    let headline: Vec<String> = compare::comparisons(&records, params)
        .iter()
        .map(|c| compare::sentence(c, params))
        .collect();
    if !headline.is_empty() {
        md.push_str("## Headline\n\n");
        for s in &headline {
            md.push_str(&format!("- {s}\n"));
        }
        md.push('\n');
    }
    let tables_dir = out.join("tables");
    let mut wanted: Vec<TableKind> = Vec::new();
    for &which in &params.tables {
        let add: Vec<TableKind> = match which {
            TableKind::Ablations => [TableKind::Adf, TableKind::Teachers]
                .into_iter()
                .filter(|k| {
                    let var = if *k == TableKind::Adf {
                        &params.adf_var
                    } else {
                        &params.teachers_var
                    };
                    records.iter().any(|r| {
                        r.point.contains_key(var.as_str())
                            && params.ablation_input.as_ref().is_none_or(|n| &r.input == n)
                    })
                })
                .collect(),
            other => vec![other],
        };
        for k in add {
            if !wanted.contains(&k) {
                wanted.push(k);
            }
        }
    }
    let mut written: Vec<Table> = Vec::new();
    let mut figures: Vec<(String, std::path::PathBuf, String, Vec<String>)> = Vec::new();
    for which in wanted {
        let table: Table = match which {
            TableKind::Models => tables::models_table(&records, params)?,
            TableKind::Adf | TableKind::Teachers => {
                tables::ablation_table(&records, params, which)?
            }
            TableKind::Ablations => unreachable!("expanded above"),
            TableKind::Tradeoff => {
                let (t, series, (_, unit)) = tables::tradeoff(&records, params)?;
                let y_label = params.metric_header();
                let x_label = match params.macs_size.as_slice() {
                    [h, w] => format!("MACs at {} ({unit})", format::size(*h, *w)),
                    _ => format!("MACs at the evaluated size ({unit})"),
                };
                let pareto = params
                    .pareto_front
                    .then(|| plot::pareto_front(&series, params.higher(params.metric)));
                let files = plot::write_tradeoff(
                    &out.join("tradeoff"),
                    &series,
                    &FigureSpec {
                        title: &title,
                        x_label: &x_label,
                        y_label: &y_label,
                        width_in: params.figure_width_in,
                        height_in: params.figure_height_in,
                        dpi: params.dpi,
                        formats: &params.figure_formats,
                        pareto,
                    },
                )?;
                summary.curves = series.len();
                let names: Vec<String> = files
                    .iter()
                    .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect();
                let seeds = records
                    .iter()
                    .filter_map(|r| r.var(&params.seed_var))
                    .collect::<BTreeSet<_>>()
                    .len();
                let caption = format!(
                    "{y_label} against {x_label} of each model. Markers are single models; \
                     lines join only sweeps of one stage over matrix values{}; {}. {} x {} in at \
                     {} dpi.",
                    if params.pareto_front {
                        " and the Pareto front (dashed)"
                    } else {
                        ""
                    },
                    if seeds > 1 {
                        format!("error bars are ± std over {seeds} seeds")
                    } else {
                        "one seed, so no error bars".into()
                    },
                    params.figure_width_in,
                    params.figure_height_in,
                    params.dpi
                );
                let png = out.join("tradeoff.png");
                let links: Vec<String> = names
                    .iter()
                    .filter(|n| !n.ends_with(".png"))
                    .cloned()
                    .collect();
                md.push_str(&format!("## Trade-off\n\n{caption}\n\n"));
                if png.exists() {
                    md.push_str("![trade-off](tradeoff.png)\n\n");
                    figures.push(("tradeoff".into(), png, caption.clone(), links.clone()));
                }
                md.push_str(&format!(
                    "Files: {}\n\n",
                    names
                        .iter()
                        .map(|n| format!("[{n}]({n})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                t
            }
        };
        table.write(&tables_dir)?;
        md.push_str(&table.to_markdown());
        md.push_str(&format!(
            "\nFiles: [tables/{0}.csv](tables/{0}.csv), [tables/{0}.tex](tables/{0}.tex)\n\n",
            table.name
        ));
        summary
            .table_rows
            .push((table.name.clone(), table.md_rows.len()));
        written.push(table);
    }
    if params.grid_rows > 0 {
        let (columns, original) = grid_columns(&records, params);
        let g = grid::write_grid(&out.join("grid.png"), &columns, original, params.grid_rows)?;
        summary.grid_rows = g.rows;
        let caption = format!(
            "Qualitative results: input | {} | target, one test image per row; captions give \
             the MACs at the evaluated size and the labels, relative to the {}. {}",
            columns
                .iter()
                .map(|c| c.label.as_str())
                .collect::<Vec<_>>()
                .join(" | "),
            params.original_curve,
            g.scale_note
        );
        md.push_str(&format!(
            "## Qualitative results\n\n{caption}\n\n![grid](grid.png)\n"
        ));
        figures.push(("grid".into(), out.join("grid.png"), caption, Vec::new()));
    }
    write(&out.join("report.md"), &md)?;
    if params.html {
        let figs: Vec<html::Figure<'_>> = figures
            .iter()
            .map(|(id, png, caption, links)| html::Figure {
                id,
                png,
                caption: caption.clone(),
                links: links.clone(),
            })
            .collect();
        let page = html::render(&html::Page {
            title: &title,
            summary: &intro,
            headline: &headline,
            tables: &written,
            figures: &figs,
            records: &records,
            params,
        })?;
        write(&out.join("report.html"), &page)?;
    }
    let metrics = serde_json::to_string_pretty(&summary.to_metrics())
        .map_err(|e| ReportError::Inputs(format!("serialising metrics.json: {e}")))?;
    write(&out.join("metrics.json"), &metrics)?;
    Ok(summary)
}

/// Models shown in the grid: curves named by `grid_columns`, at the ablation defaults and
/// the lowest seed, in `grid_columns` order then by MACs (largest first). Also returns the
/// original model that ratios are relative to.
fn grid_columns<'r>(
    records: &'r [EvalRecord],
    params: &ReportParams,
) -> (Vec<GridColumn<'r>>, Option<&'r EvalRecord>) {
    let lowest_seed = records
        .iter()
        .filter_map(|r| r.var(&params.seed_var))
        .min_by(|a, b| cmp_values(a, b));
    let usable: Vec<&EvalRecord> = records
        .iter()
        .filter(|r| !r.reference)
        .filter(|r| {
            params.defaults.iter().all(|(var, want)| {
                r.point
                    .get(var)
                    .is_none_or(|v| value_text(v) == value_text(want))
            })
        })
        .filter(|r| r.var(&params.seed_var) == lowest_seed || r.var(&params.seed_var).is_none())
        .collect();
    let original = usable
        .iter()
        .copied()
        .find(|r| method_of(r, params) == params.original_curve);
    let mut chosen: Vec<(usize, &EvalRecord)> = usable
        .iter()
        .filter_map(|r| {
            let c = method_of(r, params);
            params
                .grid_columns
                .iter()
                .position(|g| *g == c)
                .map(|i| (i, *r))
        })
        .collect();
    let macs = |r: &EvalRecord| r.metrics.get("macs").copied().unwrap_or(0.0);
    chosen.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| macs(b.1).total_cmp(&macs(a.1))));
    let columns = chosen
        .into_iter()
        .map(|(_, r)| GridColumn {
            label: model_label(r, params),
            record: r,
        })
        .collect();
    (columns, original)
}

fn write(path: &Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, text)
        .map_err(|e| ReportError::io(format!("writing {}", path.display()), e))
}
