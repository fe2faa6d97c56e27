//! The `report` kind: its schema (`schema.yaml`) and typed parameters.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use ugc_engine::ParamProblem;

/// Which outputs to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// Table 1/2 of the paper: label constraint x model x arch -> MACs, Params, metric.
    Models,
    /// Table 3: metric with and without the Adaptive Data Filter, per label constraint.
    Adf,
    /// Table 4: metric per teacher strategy, per label constraint.
    Teachers,
    /// Adf and Teachers, each whenever the matrix holds its variable.
    Ablations,
    /// Figure 1: MACs vs metric curves (table + PNG + SVG + PDF).
    Tradeoff,
}

/// A file format of the trade-off figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FigureFormat {
    Png,
    Svg,
    Pdf,
}

impl TableKind {
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Models => "models",
            TableKind::Adf => "adf",
            TableKind::Teachers => "teachers",
            TableKind::Ablations => "ablations",
            TableKind::Tradeoff => "tradeoff",
        }
    }
}

/// A key of the `metrics.json` that every `evaluate` stage writes (docs/evaluation.md,
/// "Metrics"): what a report can put in a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Psnr,
    Ssim,
    Miou,
    EvaluatorTestMiou,
    SegFd,
    Fid,
    Macs,
    Params,
    LatencyMs,
    NImages,
    LabelFraction,
}

impl Metric {
    /// The key in `metrics.json` (as written in pipelines).
    pub fn key(self) -> &'static str {
        match self {
            Metric::Psnr => "psnr",
            Metric::Ssim => "ssim",
            Metric::Miou => "miou",
            Metric::EvaluatorTestMiou => "evaluator_test_miou",
            Metric::SegFd => "seg_fd",
            Metric::Fid => "fid",
            Metric::Macs => "macs",
            Metric::Params => "params",
            Metric::LatencyMs => "latency_ms",
            Metric::NImages => "n_images",
            Metric::LabelFraction => "label_fraction",
        }
    }
}

impl Metric {
    /// The direction the papers read the metric in: higher is better for accuracy and
    /// fidelity, lower for distances and costs.
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::Psnr | Metric::Ssim | Metric::Miou | Metric::EvaluatorTestMiou
        )
    }

    /// Factor from the evaluate stage's unit to the papers' (mIoU is a fraction in
    /// metrics.json, a percentage in the papers).
    pub fn display_scale(self) -> f64 {
        match self {
            Metric::Miou | Metric::EvaluatorTestMiou => 100.0,
            _ => 1.0,
        }
    }

    /// Whether the metric means anything for a reference evaluation of the real targets:
    /// segmentation accuracy does (the ceiling); a full-reference score, a distance of the
    /// targets to themselves, a cost or a label fraction does not.
    pub fn applies_to_reference(self) -> bool {
        matches!(
            self,
            Metric::Miou | Metric::EvaluatorTestMiou | Metric::NImages
        )
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
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
        "evaluator_test_miou" => "evaluator mIoU".into(),
        "n_images" => "images".into(),
        "label_fraction" => "labels".into(),
        "macs" => "MACs".into(),
        "params" => "Params".into(),
        other => other.into(),
    }
}

/// What a `report` stage builds from its `evaluate` inputs (docs in `schema.yaml`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// None: built from the inputs.
    pub title: Option<String>,
    /// Primary metric.
    pub metric: Metric,
    /// None: the metric's own direction ([`Metric::higher_is_better`]).
    pub higher_is_better: Option<bool>,
    /// Decimals of the metric in display units (the paper uses 2).
    pub metric_decimals: usize,
    /// Further metrics shown as columns of the models table.
    pub extra_metrics: Vec<Metric>,
    /// Matrix variables that lead the models table, in this order.
    pub group_by: Vec<String>,
    /// Matrix variable averaged over (mean ± std).
    pub seed_var: String,
    /// Matrix variable that is the label ratio: shown as the `Labels` column instead.
    pub label_var: String,
    pub tables: Vec<TableKind>,
    /// Evaluate stage name -> model label (default: the model stage named in eval.json).
    pub models: BTreeMap<String, String>,
    /// Evaluate stage name -> trade-off curve label.
    pub curves: BTreeMap<String, String>,
    /// Kind of the model-producing stage -> curve label, when `curves` does not name it.
    pub curve_by_kind: BTreeMap<String, String>,
    pub adf_var: String,
    pub teachers_var: String,
    /// The value each ablation variable takes outside its own ablation (e.g. the ADF table
    /// uses `teachers: multi`); also filters the trade-off plot and the grid. Open: its
    /// keys are matrix variable names, its values any matrix value.
    pub defaults: Map<String, Value>,
    /// Per variable: a list of `value: label` one-entry maps, in display order (a list
    /// because the cache key sorts map keys, so map order would not be part of the key).
    /// Kept as JSON so that [`KindParams::check`](crate::KindParams::check) can name the
    /// variable whose list is malformed.
    pub row_labels: Map<String, Value>,
    /// Evaluate stage the ablation tables read (needed when several carry the variable).
    pub ablation_input: Option<String>,
    /// Rows (test images) of the qualitative grid; 0 disables it.
    pub grid_rows: usize,
    /// Curve labels whose models become grid columns, in this order.
    pub grid_columns: Vec<String>,
    /// Curve label of the uncompressed model that MACs and label ratios are relative to.
    pub original_curve: String,
    /// [H, W] of the MACs column; empty: only the evaluated size.
    pub macs_size: Vec<u32>,
    pub figure_formats: Vec<FigureFormat>,
    pub figure_width_in: f64,
    pub figure_height_in: f64,
    pub dpi: u32,
    pub pareto_front: bool,
    /// Metric key -> run-to-run spread (evaluate units) for one-seed significance.
    pub spread: BTreeMap<String, f64>,
    pub headline_method: String,
    pub headline_vs: Vec<String>,
    pub html: bool,
}

/// Whether `labels` is a list of one-entry maps `value: label` (string labels).
fn is_label_list(labels: &Value) -> bool {
    labels.as_array().is_some_and(|items| {
        items.iter().all(|it| {
            it.as_object()
                .is_some_and(|o| o.len() == 1 && o.values().all(Value::is_string))
        })
    })
}

impl Params {
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

    /// Direction of `m`: the parameter for the primary metric, else the metric's own.
    pub fn higher(&self, m: Metric) -> bool {
        match self.higher_is_better {
            Some(h) if m == self.metric => h,
            _ => m.higher_is_better(),
        }
    }

    /// How `m` is written in headers: the paper's name, its unit, its direction.
    pub fn header_of(&self, m: Metric) -> String {
        let arrow = if self.higher(m) { "↑" } else { "↓" };
        let unit = if m.display_scale() == 100.0 {
            " (%)"
        } else {
            ""
        };
        let name = match m {
            Metric::LatencyMs => "Latency".to_string(),
            other => metric_display(other.key()),
        };
        let unit = if m == Metric::LatencyMs {
            " (ms)"
        } else {
            unit
        };
        format!("{name}{unit} {arrow}")
    }

    /// How the primary metric is written in headers, with its unit and direction.
    pub fn metric_header(&self) -> String {
        self.header_of(self.metric)
    }
}

impl crate::KindParams for Params {
    fn check(&self) -> Vec<ParamProblem> {
        let mut out = Vec::new();
        if self.tables.is_empty() && self.grid_rows == 0 {
            out.push(ParamProblem::new(
                "tables",
                "is empty and grid_rows is 0: the report would produce nothing",
            ));
        }
        for (var, labels) in &self.row_labels {
            if !is_label_list(labels) {
                out.push(ParamProblem::new(
                    format!("row_labels.{var}"),
                    format!(
                        "must be a list of one-entry maps `value: label` (a list, so the row \
                         order is kept), got {labels}"
                    ),
                ));
            }
        }
        if !(self.macs_size.is_empty() || self.macs_size.len() == 2) {
            out.push(ParamProblem::new(
                "macs_size",
                format!(
                    "must be [H, W] (or [] for the evaluated size only), got {} value(s)",
                    self.macs_size.len()
                ),
            ));
        }
        for (k, v) in &self.spread {
            if !(v.is_finite() && *v >= 0.0) {
                out.push(ParamProblem::new(
                    format!("spread.{k}"),
                    format!("must be a finite number >= 0, got {v}"),
                ));
            }
        }
        // One matrix variable cannot play two roles: its instances would be averaged as
        // seeds and also be the label fraction, or be rows of both ablations.
        let vars = [
            (("seed_var", &self.seed_var), ("label_var", &self.label_var)),
            (
                ("adf_var", &self.adf_var),
                ("teachers_var", &self.teachers_var),
            ),
        ];
        for ((a, va), (b, vb)) in vars {
            if va == vb {
                out.push(ParamProblem::new(
                    b,
                    format!("is `{vb}`, the same matrix variable as `{a}`: give each its own"),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::Kind;
    use crate::testing::assert_refused;

    #[test]
    fn a_report_that_would_produce_nothing_is_refused() {
        assert_refused(
            Kind::Report,
            json!({"tables": [], "grid_rows": 0}),
            "tables",
        );
    }

    #[test]
    fn row_labels_must_be_ordered_lists_of_one_entry_maps() {
        let msg = assert_refused(
            Kind::Report,
            json!({"row_labels": {"adf": {"true": "Ours"}, "teachers": [{"wide": 3}]}}),
            "row_labels.adf",
        );
        assert!(
            msg.contains("row_labels.teachers"),
            "every variable named:\n{msg}"
        );
    }

    #[test]
    fn macs_size_is_two_numbers_or_none() {
        assert_refused(Kind::Report, json!({"macs_size": [256]}), "macs_size");
        assert_refused(Kind::Report, json!({"macs_size": [1, 2, 3]}), "macs_size");
    }

    #[test]
    fn a_negative_spread_is_refused() {
        assert_refused(
            Kind::Report,
            json!({"spread": {"miou": -0.1}}),
            "spread.miou",
        );
    }

    #[test]
    fn one_matrix_variable_cannot_play_two_roles() {
        assert_refused(Kind::Report, json!({"label_var": "seed"}), "label_var");
        assert_refused(Kind::Report, json!({"teachers_var": "adf"}), "teachers_var");
    }
}
