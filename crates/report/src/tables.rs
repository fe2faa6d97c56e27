//! Builds the paper-shaped tables (Tables 1-4, Figure 1's data) from evaluate records.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use crate::error::ReportError;
use crate::format;
use crate::params::{Metric, ReportParams, TableKind, metric_display};
use crate::plot::{Point, Series};
use crate::record::{EvalRecord, value_text};
use crate::stats::Summary;
use crate::table::Table;

/// Orders matrix values numerically when both parse as numbers, else as text.
pub fn cmp_values(a: &str, b: &str) -> Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.total_cmp(&y),
        _ => a.cmp(b),
    }
}

/// Records grouped by a key, in first-seen order.
struct Groups<'r> {
    keys: Vec<Vec<String>>,
    members: Vec<Vec<&'r EvalRecord>>,
    index: HashMap<Vec<String>, usize>,
}

impl<'r> Groups<'r> {
    fn new() -> Self {
        Groups {
            keys: Vec::new(),
            members: Vec::new(),
            index: HashMap::new(),
        }
    }
    fn add(&mut self, key: Vec<String>, r: &'r EvalRecord) {
        let i = *self.index.entry(key.clone()).or_insert_with(|| {
            self.keys.push(key);
            self.members.push(Vec::new());
            self.keys.len() - 1
        });
        self.members[i].push(r);
    }
}

fn summary(members: &[&EvalRecord], key: &str) -> Result<Summary, ReportError> {
    let values = members
        .iter()
        .map(|r| r.metric(key))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Summary::of(&values).expect("groups are never empty"))
}

/// Mean ± std of `m` over the members that have it, in display units; `None` when none
/// has it or it does not apply (a reference row and a metric of a model).
fn shown(members: &[&EvalRecord], m: Metric) -> Option<Summary> {
    if first_is_reference(members) && !m.applies_to_reference() {
        return None;
    }
    let k = m.display_scale();
    let values: Vec<f64> = members
        .iter()
        .filter_map(|r| r.metrics.get(m.key()))
        .map(|v| v * k)
        .collect();
    Summary::of(&values)
}

/// The markdown cell of a metric: the summary, or a dash.
fn metric_cell(s: Option<Summary>, decimals: usize) -> String {
    s.map(|s| format::metric(&s, decimals))
        .unwrap_or_else(|| format::DASH.to_string())
}

/// The CSV cells (mean, std) of a metric in the evaluate stage's units; empty when absent.
fn metric_csv(s: Option<Summary>, m: Metric) -> [String; 2] {
    match s {
        Some(s) => {
            let k = m.display_scale();
            [
                format::csv_number(s.mean / k),
                format::csv_number(s.std / k),
            ]
        }
        None => [String::new(), String::new()],
    }
}

/// MACs of a record at `macs_size`: the evaluated MACs times the pixel ratio (the
/// generators are fully convolutional, so every layer's cost is per output pixel). NaN
/// for a reference row or when the evaluated size is unknown.
pub fn macs_at(r: &EvalRecord, size: &[u32]) -> f64 {
    let Some(&macs) = r.metrics.get("macs").filter(|_| !r.reference) else {
        return f64::NAN;
    };
    match (size, r.resolution) {
        ([], _) => macs,
        ([h, w], Some((eh, ew))) => {
            macs * (f64::from(*h) * f64::from(*w)) / (f64::from(eh) * f64::from(ew))
        }
        _ => f64::NAN,
    }
}

/// The evaluated size shared by every non-reference record, if there is one.
pub fn common_resolution(records: &[&EvalRecord]) -> Option<(u32, u32)> {
    let sizes: BTreeSet<(u32, u32)> = records
        .iter()
        .filter(|r| !r.reference)
        .filter_map(|r| r.resolution)
        .collect();
    (sizes.len() == 1).then(|| *sizes.iter().next().expect("one"))
}

/// Header of the MACs column at the stated size and of the evaluated one.
fn macs_headers(params: &ReportParams, eval: Option<(u32, u32)>) -> (Option<String>, String) {
    let evaluated = match eval {
        Some((h, w)) => format!("MACs ({}, evaluated)", format::size(h, w)),
        None => "MACs (evaluated size)".into(),
    };
    match params.macs_size.as_slice() {
        [h, w] if eval != Some((*h, *w)) => {
            (Some(format!("MACs ({})", format::size(*h, *w))), evaluated)
        }
        _ => (None, evaluated),
    }
}

/// How latency was measured, from the records that have one (e.g. "cpu, 2 threads, 3
/// warm-up + 20 runs (median)").
fn latency_note(members: &[&EvalRecord]) -> Option<String> {
    let ways: BTreeSet<String> = members
        .iter()
        .filter_map(|r| r.latency.as_ref().map(|l| l.describe()))
        .collect();
    (!ways.is_empty()).then(|| {
        format!(
            "Latency: batch 1 at the evaluated size, measured by each evaluate stage on {}, \
             with no other stage running (an evaluate stage that times latency runs alone \
             unless its `resources.exclusive` is false).",
            ways.into_iter().collect::<Vec<_>>().join("; ")
        )
    })
}

/// The method (curve) of a record: `curves[input]`, else `curve_by_kind` of its model's
/// kind (`train_from_search` for a searched sub-net trained alone), else the model stage.
pub fn method_of(r: &EvalRecord, params: &ReportParams) -> String {
    if let Some(c) = params.curves.get(&r.input) {
        return c.clone();
    }
    if r.reference {
        return "reference".into();
    }
    let by_kind = |k: &str| params.curve_by_kind.get(k).cloned();
    r.kind_key()
        .and_then(|k| by_kind(&k))
        .or_else(|| r.model_kind.as_deref().and_then(by_kind))
        .or_else(|| r.model_stage.clone())
        .unwrap_or_else(|| r.input.clone())
}

/// The model's name in tables, figure and grid: `models[input]`, else its method (with the
/// teacher role), `real photos (reference)` for a reference evaluation.
pub fn model_label(r: &EvalRecord, params: &ReportParams) -> String {
    if let Some(m) = params.models.get(&r.input) {
        return m.clone();
    }
    if r.reference {
        return "real photos (reference)".into();
    }
    let method = method_of(r, params);
    match &r.role {
        Some(role) => format!("{method} ({role})"),
        None => method,
    }
}

fn nodes(members: &[&EvalRecord]) -> String {
    members
        .iter()
        .map(|r| r.node.as_str())
        .collect::<Vec<_>>()
        .join(";")
}

fn first_is_reference(members: &[&EvalRecord]) -> bool {
    members.first().is_some_and(|r| r.reference)
}

/// A MACs/params CSV cell; NaN (no model) is empty.
fn csv_cost(x: f64) -> String {
    if x.is_nan() {
        String::new()
    } else {
        format::csv_number(x)
    }
}

fn fraction_text(f: Option<f64>) -> String {
    f.map(format::csv_number).unwrap_or_default()
}

/// Whether a record's point agrees with `params.defaults` on every variable it carries,
/// ignoring `except`.
fn at_defaults(r: &EvalRecord, params: &ReportParams, except: &str) -> bool {
    params.defaults.iter().all(|(var, want)| {
        var == except
            || match r.point.get(var) {
                None => true,
                Some(v) => value_text(v) == value_text(want),
            }
    })
}

/// Matrix variables that become columns of the models table: `group_by` first, then every
/// other variable seen (by name), never the seed or label variable.
fn table_vars(records: &[EvalRecord], params: &ReportParams) -> Vec<String> {
    let seen: BTreeSet<&String> = records.iter().flat_map(|r| r.point.keys()).collect();
    let skip = |v: &str| v == params.seed_var || v == params.label_var;
    let mut vars: Vec<String> = params
        .group_by
        .iter()
        .filter(|v| seen.contains(v) && !skip(v))
        .cloned()
        .collect();
    for v in seen {
        if !skip(v) && !vars.contains(v) {
            vars.push(v.clone());
        }
    }
    vars
}

/// Tables 1/2: one row per (label constraint, matrix variables, model, arch); seeds averaged.
/// MACs at `macs_size` and at the evaluated size; a reference row shows only the metrics
/// that apply to it; a missing metric is a dash.
pub fn models_table(records: &[EvalRecord], params: &ReportParams) -> Result<Table, ReportError> {
    if !records
        .iter()
        .any(|r| r.metrics.contains_key(params.metric.key()))
    {
        return Err(records[0].metric(params.metric.key()).expect_err("absent"));
    }
    let vars = table_vars(records, params);
    let has_labels = records.iter().any(|r| r.label_fraction.is_some());
    let mut groups = Groups::new();
    let mut model_rank: HashMap<String, usize> = HashMap::new();
    for r in records {
        let model = model_label(r, params);
        let next = model_rank.len();
        model_rank.entry(model.clone()).or_insert(next);
        let lf = if r.reference { None } else { r.label_fraction };
        let mut key = vec![fraction_text(lf)];
        key.extend(vars.iter().map(|v| r.var(v).unwrap_or_default()));
        key.push(model);
        key.push(r.arch.clone().unwrap_or_default());
        groups.add(key, r);
    }
    struct Row<'r> {
        key: Vec<String>,
        members: Vec<&'r EvalRecord>,
        macs: f64,
    }
    let mut rows = Vec::new();
    for (key, members) in groups.keys.into_iter().zip(groups.members) {
        // A reference evaluation (real targets, no model) has no cost: listed without MACs.
        let macs = if members[0].reference {
            f64::NAN
        } else {
            summary(&members, "macs")?.mean
        };
        rows.push(Row { key, members, macs });
    }
    let nv = vars.len();
    rows.sort_by(|a, b| {
        let mut o = first_is_reference(&a.members).cmp(&first_is_reference(&b.members));
        o = o.then_with(|| cmp_values(&a.key[0], &b.key[0]));
        for i in 1..=nv {
            o = o.then_with(|| cmp_values(&a.key[i], &b.key[i]));
        }
        o.then_with(|| model_rank[&a.key[nv + 1]].cmp(&model_rank[&b.key[nv + 1]]))
            .then_with(|| b.macs.total_cmp(&a.macs))
    });

    let all: Vec<&EvalRecord> = records.iter().collect();
    let eval_size = common_resolution(&all);
    let (paper_h, eval_h) = macs_headers(params, eval_size);
    let mut t = Table {
        name: "models".into(),
        caption: format!(
            "MACs, params and {} of each model (shape of Tables 1-2)",
            metric_display(params.metric.key())
        ),
        ..Table::default()
    };
    if has_labels {
        t.md_header.push("Labels".into());
    }
    t.md_header.extend(vars.iter().cloned());
    t.md_header.extend(["Model", "Arch"].map(String::from));
    if let Some(h) = &paper_h {
        t.md_header.push(h.clone());
    }
    t.md_header.push(eval_h);
    t.md_header.push("Params".into());
    let shown_metrics: Vec<Metric> = std::iter::once(params.metric)
        .chain(params.extra_metrics.iter().copied())
        .collect();
    t.md_header
        .extend(shown_metrics.iter().map(|m| params.header_of(*m)));
    t.csv_header.push("label_fraction".into());
    t.csv_header.extend(vars.iter().cloned());
    t.csv_header.extend(
        [
            "model",
            "method",
            "arch",
            "config",
            "macs",
            "eval_h",
            "eval_w",
            "macs_at_size",
            "params",
        ]
        .map(String::from),
    );
    for m in &shown_metrics {
        t.csv_header.push(format!("{m}_mean"));
        t.csv_header.push(format!("{m}_std"));
    }
    t.csv_header.extend(["n", "nodes"].map(String::from));

    let paper_macs: Vec<f64> = rows
        .iter()
        .map(|r| {
            let v: Vec<f64> = r
                .members
                .iter()
                .map(|m| macs_at(m, &params.macs_size))
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        })
        .collect();
    let params_of: Vec<f64> = rows
        .iter()
        .map(|row| {
            if first_is_reference(&row.members) {
                Ok(f64::NAN)
            } else {
                summary(&row.members, "params").map(|s| s.mean)
            }
        })
        .collect::<Result<_, _>>()?;
    let paper_cells = format::counts_distinct(&paper_macs);
    let eval_cells = format::counts_distinct(&rows.iter().map(|r| r.macs).collect::<Vec<_>>());
    let params_cells = format::counts_distinct(&params_of);

    for (i, row) in rows.iter().enumerate() {
        let first = row.members[0];
        let ms: Vec<Option<Summary>> = shown_metrics
            .iter()
            .map(|m| shown(&row.members, *m))
            .collect();
        let mut md = Vec::new();
        if has_labels {
            md.push(if first.reference {
                format::DASH.to_string()
            } else {
                first
                    .label_fraction
                    .map(format::percent)
                    .unwrap_or_else(|| format::DASH.into())
            });
        }
        md.extend(row.key[1..=nv].iter().cloned());
        md.push(row.key[nv + 1].clone());
        md.push(if row.key[nv + 2].is_empty() {
            format::DASH.into()
        } else {
            row.key[nv + 2].clone()
        });
        if paper_h.is_some() {
            md.push(paper_cells[i].clone());
        }
        md.push(eval_cells[i].clone());
        md.push(params_cells[i].clone());
        for s in &ms {
            md.push(metric_cell(*s, params.metric_decimals));
        }
        t.md_rows.push(md);

        let mut csv = vec![row.key[0].clone()];
        csv.extend(row.key[1..=nv + 1].iter().cloned());
        csv.push(method_of(first, params));
        csv.push(row.key[nv + 2].clone());
        csv.push(first.config.clone().unwrap_or_default());
        csv.push(csv_cost(row.macs));
        let (eh, ew) = first
            .resolution
            .map(|(h, w)| (h.to_string(), w.to_string()))
            .unwrap_or_default();
        csv.push(eh);
        csv.push(ew);
        csv.push(csv_cost(paper_macs[i]));
        csv.push(csv_cost(params_of[i]));
        for (s, m) in ms.iter().zip(&shown_metrics) {
            csv.extend(metric_csv(*s, *m));
        }
        csv.push(row.members.len().to_string());
        csv.push(nodes(&row.members));
        t.csv_rows.push(csv);
    }
    if let [h, w] = params.macs_size.as_slice()
        && paper_h.is_some()
    {
        t.notes.push(format!(
            "MACs at {} are the evaluated MACs times the pixel ratio (the generators are \
             fully convolutional); the search states its budget at this size.",
            format::size(*h, *w)
        ));
    }
    if rows.iter().any(|r| first_is_reference(&r.members)) {
        let applies: Vec<String> = shown_metrics
            .iter()
            .filter(|m| m.applies_to_reference())
            .map(|m| metric_display(m.key()))
            .collect();
        t.notes.push(format!(
            "The reference row is the real test photos through the evaluator: the ceiling of {}; \
             costs, label fractions, full-reference scores and distances of the photos to \
             themselves do not apply (–).",
            if applies.is_empty() {
                "no metric shown here".to_string()
            } else {
                applies.join(", ")
            }
        ));
    }
    if shown_metrics.contains(&Metric::LatencyMs)
        && let Some(n) = latency_note(&all)
    {
        t.notes.push(n);
    }
    if t.md_rows.iter().flatten().any(|c| c == format::DASH) {
        t.notes
            .push("– : not computed by the evaluate stage or not applicable.".into());
    }
    Ok(t)
}

/// Tables 3/4: rows = values of the ablated variable, columns = label constraints.
pub fn ablation_table(
    records: &[EvalRecord],
    params: &ReportParams,
    which: TableKind,
) -> Result<Table, ReportError> {
    let (var, caption) = match which {
        TableKind::Adf => (
            &params.adf_var,
            "Ablation of the Adaptive Data Filter (shape of Table 3)",
        ),
        TableKind::Teachers => (
            &params.teachers_var,
            "Ablation of the teachers in distillation (shape of Table 4)",
        ),
        other => {
            return Err(ReportError::Inputs(format!(
                "table `{}` is not an ablation table (adf or teachers)",
                other.name()
            )));
        }
    };
    let with_var: Vec<&EvalRecord> = records
        .iter()
        .filter(|r| r.point.contains_key(var.as_str()))
        .filter(|r| params.ablation_input.as_ref().is_none_or(|n| &r.input == n))
        .collect();
    if with_var.is_empty() {
        let seen: BTreeSet<&String> = records.iter().flat_map(|r| r.point.keys()).collect();
        return Err(ReportError::Inputs(format!(
            "table `{}` needs evaluate inputs{} whose matrix point has `{var}` \
             (variables seen: {})",
            which.name(),
            params
                .ablation_input
                .as_ref()
                .map(|n| format!(" of stage `{n}`"))
                .unwrap_or_default(),
            if seen.is_empty() {
                "none".into()
            } else {
                seen.into_iter().cloned().collect::<Vec<_>>().join(", ")
            }
        )));
    }
    let chosen: Vec<&EvalRecord> = with_var
        .iter()
        .copied()
        .filter(|r| at_defaults(r, params, var))
        .collect();
    if chosen.is_empty() {
        return Err(ReportError::Inputs(format!(
            "table `{}`: no evaluate input with `{var}` matches the defaults {} of the other \
             ablation variables (parameter `defaults`)",
            which.name(),
            Value::Object(params.defaults.clone())
        )));
    }
    let mut groups = Groups::new();
    for r in &chosen {
        groups.add(
            vec![
                r.var(var).unwrap_or_default(),
                fraction_text(r.label_fraction),
            ],
            r,
        );
    }
    for members in &groups.members {
        let inputs: BTreeSet<&str> = members.iter().map(|r| r.input.as_str()).collect();
        if inputs.len() > 1 {
            return Err(ReportError::Param {
                param: "ablation_input".into(),
                msg: format!(
                    "table `{}`: several evaluate stages carry `{var}` ({}); name the one to \
                     tabulate",
                    which.name(),
                    inputs.into_iter().collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    let declared = params.labels_of(var);
    let mut row_values: Vec<String> = Vec::new();
    for (v, _) in &declared {
        if groups.keys.iter().any(|k| &k[0] == v) && !row_values.contains(v) {
            row_values.push(v.clone());
        }
    }
    let mut rest: Vec<String> = groups
        .keys
        .iter()
        .map(|k| k[0].clone())
        .filter(|v| !row_values.contains(v))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    rest.sort_by(|a, b| cmp_values(a, b));
    row_values.extend(rest);
    let mut cols: Vec<String> = groups
        .keys
        .iter()
        .map(|k| k[1].clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    cols.sort_by(|a, b| cmp_values(a, b));
    let label_of = |v: &String| {
        declared
            .iter()
            .find(|(k, _)| k == v)
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| format!("{var}={v}"))
    };

    let mut t = Table {
        name: which.name().into(),
        caption: format!("{caption}: {}", params.metric_header()),
        ..Table::default()
    };
    t.md_header.push("Method".into());
    t.md_header.extend(cols.iter().map(|c| {
        c.parse::<f64>()
            .map(format::percent)
            .unwrap_or_else(|_| "all".into())
    }));
    t.csv_header = [
        var.as_str(),
        "method",
        "label_fraction",
        &format!("{}_mean", params.metric),
        &format!("{}_std", params.metric),
        "n",
        "nodes",
    ]
    .map(String::from)
    .to_vec();
    for v in &row_values {
        let mut md = vec![label_of(v)];
        for c in &cols {
            match groups.index.get(&vec![v.clone(), c.clone()]) {
                Some(&i) => {
                    let members = &groups.members[i];
                    let s = shown(members, params.metric);
                    md.push(metric_cell(s, params.metric_decimals));
                    let [mean, std] = metric_csv(s, params.metric);
                    t.csv_rows.push(vec![
                        v.clone(),
                        label_of(v),
                        c.clone(),
                        mean,
                        std,
                        s.map(|s| s.n).unwrap_or(0).to_string(),
                        nodes(members),
                    ]);
                }
                None => md.push("–".into()),
            }
        }
        t.md_rows.push(md);
    }
    Ok(t)
}

/// A count unit: its size and suffix, e.g. `(1e9, "G")`.
pub type CountUnit = (f64, &'static str);

/// Figure 1's data: one series per method (and label fraction when a method has several),
/// one point per (evaluate stage, matrix point) with seeds averaged. Records whose ablation
/// variables are not at their defaults are left out. X is MACs at `macs_size` in the unit
/// returned, y the metric in display units.
pub fn tradeoff(
    records: &[EvalRecord],
    params: &ReportParams,
) -> Result<(Table, Vec<Series>, CountUnit), ReportError> {
    let chosen: Vec<&EvalRecord> = records
        .iter()
        .filter(|r| !r.reference && at_defaults(r, params, ""))
        .collect();
    let mut fractions: HashMap<String, BTreeSet<String>> = HashMap::new();
    for r in &chosen {
        fractions
            .entry(method_of(r, params))
            .or_default()
            .insert(fraction_text(r.label_fraction));
    }
    let mut groups = Groups::new();
    let mut series_order: Vec<String> = Vec::new();
    for r in &chosen {
        let curve = method_of(r, params);
        let series = match r.label_fraction {
            Some(f) if fractions[&curve].len() > 1 => {
                format!("{curve} ({} labels)", format::percent(f))
            }
            _ => curve,
        };
        if !series_order.contains(&series) {
            series_order.push(series.clone());
        }
        let mut key = vec![series, r.input.clone()];
        key.extend(
            r.point
                .iter()
                .filter(|(k, _)| **k != params.seed_var)
                .map(|(k, v)| format!("{k}={}", value_text(v).unwrap_or_default())),
        );
        groups.add(key, r);
    }
    let mut series: Vec<Series> = series_order
        .iter()
        .map(|name| Series {
            name: name.clone(),
            points: Vec::new(),
        })
        .collect();
    let (paper_h, eval_h) = macs_headers(params, common_resolution(&chosen));
    let mut t = Table {
        name: "tradeoff".into(),
        caption: format!(
            "MACs vs {} per method (data of the trade-off figure, shape of Figure 1)",
            metric_display(params.metric.key())
        ),
        md_header: ["Method", "Model", "Labels"].map(String::from).to_vec(),
        csv_header: [
            "curve",
            "model",
            "label_fraction",
            "config",
            "macs",
            "macs_at_size",
            "params",
            &format!("{}_mean", params.metric),
            &format!("{}_std", params.metric),
            "n",
            "nodes",
        ]
        .map(String::from)
        .to_vec(),
        ..Table::default()
    };
    if let Some(h) = &paper_h {
        t.md_header.push(h.clone());
    }
    t.md_header.push(eval_h);
    t.md_header.push("Params".into());
    t.md_header.push(params.metric_header());
    struct Row<'r> {
        si: usize,
        macs: f64,
        at_size: f64,
        params: f64,
        m: Option<Summary>,
        members: &'r [&'r EvalRecord],
    }
    let mut rows = Vec::new();
    for (key, members) in groups.keys.iter().zip(&groups.members) {
        let m = shown(members, params.metric);
        let macs = summary(members, "macs")?.mean;
        let at: Vec<f64> = members
            .iter()
            .map(|r| macs_at(r, &params.macs_size))
            .collect();
        let at_size = at.iter().sum::<f64>() / at.len() as f64;
        let p = summary(members, "params")?.mean;
        let si = series_order.iter().position(|s| s == &key[0]).unwrap_or(0);
        rows.push(Row {
            si,
            macs,
            at_size,
            params: p,
            m,
            members,
        });
    }
    let x_of = |r: &Row<'_>| {
        if params.macs_size.is_empty() {
            r.macs
        } else {
            r.at_size
        }
    };
    let unit = format::count_unit(&rows.iter().map(x_of).collect::<Vec<_>>());
    for r in &rows {
        if let Some(m) = r.m
            && x_of(r).is_finite()
        {
            series[r.si].points.push(Point {
                x: x_of(r) / unit.0,
                y: m.mean,
                sd: m.std,
                input: r.members[0].input.clone(),
                label: model_label(r.members[0], params),
            });
        }
    }
    rows.sort_by(|a, b| a.si.cmp(&b.si).then_with(|| a.macs.total_cmp(&b.macs)));
    let at_cells = format::counts_distinct(&rows.iter().map(|r| r.at_size).collect::<Vec<_>>());
    let eval_cells = format::counts_distinct(&rows.iter().map(|r| r.macs).collect::<Vec<_>>());
    let p_cells = format::counts_distinct(&rows.iter().map(|r| r.params).collect::<Vec<_>>());
    for (i, r) in rows.iter().enumerate() {
        let first = r.members[0];
        let mut md = vec![
            series_order[r.si].clone(),
            model_label(first, params),
            first
                .label_fraction
                .map(format::percent)
                .unwrap_or_else(|| format::DASH.into()),
        ];
        if paper_h.is_some() {
            md.push(at_cells[i].clone());
        }
        md.push(eval_cells[i].clone());
        md.push(p_cells[i].clone());
        md.push(metric_cell(r.m, params.metric_decimals));
        t.md_rows.push(md);
        let [mean, std] = metric_csv(r.m, params.metric);
        t.csv_rows.push(vec![
            series_order[r.si].clone(),
            model_label(first, params),
            fraction_text(first.label_fraction),
            first.config.clone().unwrap_or_default(),
            format::csv_number(r.macs),
            csv_cost(r.at_size),
            format::csv_number(r.params),
            mean,
            std,
            r.members.len().to_string(),
            nodes(r.members),
        ]);
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.x.total_cmp(&b.x));
    }
    series.retain(|s| !s.points.is_empty());
    Ok((t, series, unit))
}
