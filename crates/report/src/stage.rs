//! The `report` stage kind: gathers every `evaluate` instance of the DAG / matrix and writes
//! tables (markdown + CSV), the trade-off plot (PNG + SVG), a qualitative grid and
//! `report.md` that links them.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Value};
use ugc_engine::{KindSchema, StageContext, StageError, StageInput, StageKind};
use ugc_kinds::KindParams;

use crate::error::ReportError;
use crate::grid::{self, GridColumn};
use crate::params::{ReportParams, TableKind};
use crate::plot::{self, PlotLabels};
use crate::record::{EvalRecord, load_records, value_text};
use crate::table::Table;
use crate::tables::{self, cmp_values, curve_of};

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
    let mut md = format!("# {}\n\n", params.title);
    md.push_str(&format!(
        "{} evaluate result(s) from {} stage(s). Primary metric: {}.\n\n",
        records.len(),
        records
            .iter()
            .map(|r| r.input.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        params.metric_header()
    ));
    let tables_dir = out.join("tables");
    let mut seen = Vec::new();
    for &which in &params.tables {
        if seen.contains(&which) {
            continue;
        }
        seen.push(which);
        let table: Table = match which {
            TableKind::Models => tables::models_table(&records, params)?,
            TableKind::Adf | TableKind::Teachers => {
                tables::ablation_table(&records, params, which)?
            }
            TableKind::Tradeoff => {
                let (t, series) = tables::tradeoff(&records, params)?;
                let y_label = params.metric_header();
                plot::write_tradeoff(
                    &out.join("tradeoff"),
                    &series,
                    &PlotLabels {
                        title: &params.title,
                        y_label: &y_label,
                    },
                )?;
                summary.curves = series.len();
                t
            }
        };
        table.write(&tables_dir)?;
        md.push_str(&table.to_markdown());
        md.push_str(&format!(
            "\nCSV: [tables/{0}.csv](tables/{0}.csv)\n\n",
            table.name
        ));
        if which == TableKind::Tradeoff {
            md.push_str("![trade-off](tradeoff.png)\n\n([SVG](tradeoff.svg))\n\n");
        }
        summary
            .table_rows
            .push((table.name.clone(), table.md_rows.len()));
    }
    if params.grid_rows > 0 {
        let (columns, original) = grid_columns(&records, params);
        summary.grid_rows =
            grid::write_grid(&out.join("grid.png"), &columns, original, params.grid_rows)?;
        md.push_str("**Qualitative results** (input | models | target)\n\n![grid](grid.png)\n");
    }
    write(&out.join("report.md"), &md)?;
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
        .find(|r| curve_of(r, params) == params.original_curve);
    let mut chosen: Vec<(usize, &EvalRecord)> = usable
        .iter()
        .filter_map(|r| {
            let c = curve_of(r, params);
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
            label: r.model_label(&params.models),
            record: r,
        })
        .collect();
    (columns, original)
}

fn write(path: &Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, text)
        .map_err(|e| ReportError::io(format!("writing {}", path.display()), e))
}
