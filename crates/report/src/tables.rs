//! Builds the paper-shaped tables (Tables 1-4, Figure 1's data) from evaluate records.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use crate::error::ReportError;
use crate::format;
use crate::params::{ReportParams, TableKind, metric_display};
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

/// A MACs/params markdown cell; NaN (no model) is a dash.
fn md_cost(x: f64, f: fn(f64) -> String) -> String {
    if x.is_nan() { "–".into() } else { f(x) }
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
pub fn models_table(records: &[EvalRecord], params: &ReportParams) -> Result<Table, ReportError> {
    let vars = table_vars(records, params);
    let has_labels = records.iter().any(|r| r.label_fraction.is_some());
    let mut groups = Groups::new();
    let mut model_rank: HashMap<String, usize> = HashMap::new();
    for r in records {
        let model = r.model_label(&params.models);
        let next = model_rank.len();
        model_rank.entry(model.clone()).or_insert(next);
        let mut key = vec![fraction_text(r.label_fraction)];
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
        let mut o = cmp_values(&a.key[0], &b.key[0]);
        for i in 1..=nv {
            o = o.then_with(|| cmp_values(&a.key[i], &b.key[i]));
        }
        o.then_with(|| model_rank[&a.key[nv + 1]].cmp(&model_rank[&b.key[nv + 1]]))
            .then_with(|| b.macs.total_cmp(&a.macs))
    });

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
    t.md_header
        .extend(["Model", "Arch", "MACs", "Params"].map(String::from));
    t.md_header.push(params.metric_header());
    t.md_header
        .extend(params.extra_metrics.iter().map(|m| metric_display(m.key())));
    t.csv_header.push("label_fraction".into());
    t.csv_header.extend(vars.iter().cloned());
    t.csv_header
        .extend(["model", "arch", "config", "macs", "params"].map(String::from));
    for m in std::iter::once(&params.metric).chain(&params.extra_metrics) {
        t.csv_header.push(format!("{m}_mean"));
        t.csv_header.push(format!("{m}_std"));
    }
    t.csv_header.extend(["n", "nodes"].map(String::from));

    for row in &rows {
        let m = summary(&row.members, params.metric.key())?;
        let p = if first_is_reference(&row.members) {
            f64::NAN
        } else {
            summary(&row.members, "params")?.mean
        };
        let extras = params
            .extra_metrics
            .iter()
            .map(|k| summary(&row.members, k.key()))
            .collect::<Result<Vec<_>, _>>()?;
        let first = row.members[0];
        let mut md = Vec::new();
        if has_labels {
            md.push(
                first
                    .label_fraction
                    .map(format::percent)
                    .unwrap_or_default(),
            );
        }
        md.extend(row.key[1..=nv].iter().cloned());
        md.push(row.key[nv + 1].clone());
        md.push(row.key[nv + 2].clone());
        md.push(md_cost(row.macs, format::macs_g));
        md.push(md_cost(p, format::params_m));
        md.push(format::metric(&m, params.metric_decimals));
        for e in &extras {
            md.push(format::metric(e, params.metric_decimals));
        }
        t.md_rows.push(md);

        let mut csv = vec![row.key[0].clone()];
        csv.extend(row.key[1..=nv + 2].iter().cloned());
        csv.push(first.config.clone().unwrap_or_default());
        csv.push(csv_cost(row.macs));
        csv.push(csv_cost(p));
        for s in std::iter::once(&m).chain(&extras) {
            csv.push(format::csv_number(s.mean));
            csv.push(format::csv_number(s.std));
        }
        csv.push(m.n.to_string());
        csv.push(nodes(&row.members));
        t.csv_rows.push(csv);
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
                    let s = summary(members, params.metric.key())?;
                    md.push(format::metric(&s, params.metric_decimals));
                    t.csv_rows.push(vec![
                        v.clone(),
                        label_of(v),
                        c.clone(),
                        format::csv_number(s.mean),
                        format::csv_number(s.std),
                        s.n.to_string(),
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

/// One curve of the trade-off plot: points sorted by MACs.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    /// (MACs in G, metric mean, metric std).
    pub points: Vec<(f64, f64, f64)>,
}

/// The curve a record belongs to: `curves[input]`, else `curve_by_kind[model kind]`, else
/// the model label.
pub fn curve_of(r: &EvalRecord, params: &ReportParams) -> String {
    params
        .curves
        .get(&r.input)
        .cloned()
        .or_else(|| {
            r.model_kind
                .as_ref()
                .and_then(|k| params.curve_by_kind.get(k))
                .cloned()
        })
        .unwrap_or_else(|| r.model_label(&params.models))
}

/// Figure 1's data: per curve, (MACs, metric) points; seeds averaged. Records whose
/// ablation variables are not at their defaults are left out.
pub fn tradeoff(
    records: &[EvalRecord],
    params: &ReportParams,
) -> Result<(Table, Vec<Series>), ReportError> {
    let chosen: Vec<&EvalRecord> = records
        .iter()
        .filter(|r| !r.reference && at_defaults(r, params, ""))
        .collect();
    let mut fractions: HashMap<String, BTreeSet<String>> = HashMap::new();
    for r in &chosen {
        fractions
            .entry(curve_of(r, params))
            .or_default()
            .insert(fraction_text(r.label_fraction));
    }
    let mut groups = Groups::new();
    let mut series_order: Vec<String> = Vec::new();
    for r in &chosen {
        let curve = curve_of(r, params);
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
    let mut t = Table {
        name: "tradeoff".into(),
        caption: format!(
            "MACs vs {} per curve (data of the trade-off plot, shape of Figure 1)",
            metric_display(params.metric.key())
        ),
        md_header: ["Curve", "Model", "Labels", "MACs", "Params"]
            .map(String::from)
            .to_vec(),
        csv_header: [
            "curve",
            "model",
            "label_fraction",
            "config",
            "macs",
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
    t.md_header.push(params.metric_header());
    let mut rows = Vec::new();
    for (key, members) in groups.keys.iter().zip(&groups.members) {
        let m = summary(members, params.metric.key())?;
        let macs = summary(members, "macs")?.mean;
        let p = summary(members, "params")?.mean;
        let si = series_order.iter().position(|s| s == &key[0]).unwrap_or(0);
        series[si].points.push((macs / 1e9, m.mean, m.std));
        rows.push((si, macs, p, m, members));
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.total_cmp(&b.1)));
    for (si, macs, p, m, members) in rows {
        let first = members[0];
        t.md_rows.push(vec![
            series_order[si].clone(),
            first.model_label(&params.models),
            first
                .label_fraction
                .map(format::percent)
                .unwrap_or_default(),
            format::macs_g(macs),
            format::params_m(p),
            format::metric(&m, params.metric_decimals),
        ]);
        t.csv_rows.push(vec![
            series_order[si].clone(),
            first.model_label(&params.models),
            fraction_text(first.label_fraction),
            first.config.clone().unwrap_or_default(),
            format::csv_number(macs),
            format::csv_number(p),
            format::csv_number(m.mean),
            format::csv_number(m.std),
            m.n.to_string(),
            nodes(members),
        ]);
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Ok((t, series))
}
