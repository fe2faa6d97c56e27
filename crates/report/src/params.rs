//! The typed parameters of the `report` stage (`stages/report.yaml` holds their defaults and docs).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ReportError;

/// Which outputs to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// Table 1/2 of the paper: label constraint x model x arch -> MACs, Params, metric.
    Models,
    /// Table 3: metric with and without the Adaptive Data Filter, per label constraint.
    Adf,
    /// Table 4: metric per teacher strategy, per label constraint.
    Teachers,
    /// Figure 1: MACs vs metric curves (table + PNG + SVG).
    Tradeoff,
}

impl TableKind {
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Models => "models",
            TableKind::Adf => "adf",
            TableKind::Teachers => "teachers",
            TableKind::Tradeoff => "tradeoff",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReportParams {
    pub title: String,
    /// Primary metric key in every input's `metrics.json`, e.g. `miou` or `seg_fd`.
    pub metric: String,
    pub higher_is_better: bool,
    /// Decimals of the metric in markdown tables (the paper uses 2).
    pub metric_decimals: usize,
    /// Further metrics.json keys shown as columns of the models table.
    #[serde(default)]
    pub extra_metrics: Vec<String>,
    /// Matrix variables that lead the models table, in this order.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Matrix variable averaged over (mean ± std).
    pub seed_var: String,
    /// Matrix variable that is the label ratio: shown as the `Labels` column instead.
    pub label_var: String,
    pub tables: Vec<TableKind>,
    /// Evaluate stage name -> model label (default: the model stage named in eval.json).
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// Evaluate stage name -> trade-off curve label.
    #[serde(default)]
    pub curves: BTreeMap<String, String>,
    /// Kind of the model-producing stage -> curve label, when `curves` does not name it.
    #[serde(default)]
    pub curve_by_kind: BTreeMap<String, String>,
    pub adf_var: String,
    pub teachers_var: String,
    /// The value each ablation variable takes outside its own ablation (e.g. the ADF table
    /// uses `teachers: multi`); also filters the trade-off plot and the grid.
    #[serde(default)]
    pub defaults: Map<String, Value>,
    /// Per variable: a list of `value: label` one-entry maps, in display order (a list
    /// because the cache key sorts map keys, so map order would not be part of the key).
    #[serde(default)]
    pub row_labels: Map<String, Value>,
    /// Evaluate stage the ablation tables read (needed when several carry the variable).
    #[serde(default)]
    pub ablation_input: Option<String>,
    /// Rows (test images) of the qualitative grid; 0 disables it.
    pub grid_rows: usize,
    /// Curve labels whose models become grid columns, in this order.
    pub grid_columns: Vec<String>,
    /// Curve label of the uncompressed model that MACs and label ratios are relative to.
    pub original_curve: String,
}

impl ReportParams {
    pub fn validate(&self) -> Result<(), ReportError> {
        let bad = |param: &str, msg: &str| ReportError::Param {
            param: param.into(),
            msg: msg.into(),
        };
        if self.metric.trim().is_empty() {
            return Err(bad(
                "metric",
                "must name a metrics.json key, got an empty string",
            ));
        }
        if self.metric_decimals > 8 {
            return Err(bad("metric_decimals", "must be at most 8"));
        }
        if self.tables.is_empty() && self.grid_rows == 0 {
            return Err(bad(
                "tables",
                "is empty and grid_rows is 0: the report would produce nothing",
            ));
        }
        for (var, labels) in &self.row_labels {
            let ok = labels.as_array().is_some_and(|items| {
                items.iter().all(|it| {
                    it.as_object()
                        .is_some_and(|o| o.len() == 1 && o.values().all(Value::is_string))
                })
            });
            if !ok {
                return Err(bad(
                    "row_labels",
                    &format!(
                        "`{var}` must be a list of one-entry maps `value: label` (a list, so \
                         the row order is kept), got {labels}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Row labels of `var` in their declared order: (value text, label).
    pub fn labels_of(&self, var: &str) -> Vec<(String, String)> {
        self.row_labels
            .get(var)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_object)
                    .flat_map(|o| o.iter())
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How the primary metric is written in headers, with its direction.
    pub fn metric_header(&self) -> String {
        let arrow = if self.higher_is_better { "↑" } else { "↓" };
        format!("{} {arrow}", metric_display(&self.metric))
    }
}

/// The paper's spelling of well-known metric keys.
pub fn metric_display(key: &str) -> String {
    match key {
        "miou" => "mIoU".into(),
        "seg_fd" => "seg-FD".into(),
        "fid" => "FID".into(),
        "kid" => "KID".into(),
        "psnr" => "PSNR".into(),
        "ssim" => "SSIM".into(),
        "latency_ms" => "Latency (ms)".into(),
        other => other.into(),
    }
}
