//! One `evaluate` output as the report sees it: its matrix point, its numbers and the
//! identity of the model it measured.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use ugc_engine::StageInput;

use crate::error::ReportError;

/// What the report reads from one evaluate instance.
#[derive(Debug, Clone)]
pub struct EvalRecord {
    /// Name of the evaluate stage in the pipeline (`StageInput::name`).
    pub input: String,
    /// Node id, e.g. `evaluate[adf=true,label_ratio=0.25]`.
    pub node: String,
    pub point: BTreeMap<String, Value>,
    pub dir: PathBuf,
    /// `metrics.json`: numbers only (`null`, e.g. an infinite PSNR, is left out).
    pub metrics: BTreeMap<String, f64>,
    /// Fraction of training pairs that kept their targets (eval.json `label_fraction`).
    pub label_fraction: Option<f64>,
    /// The stage that produced the evaluated model, and its kind (eval.json `model`).
    pub model_stage: Option<String>,
    pub model_kind: Option<String>,
    pub arch: Option<String>,
    pub config: Option<String>,
    /// Teacher role when the model is a teacher (eval.json `model.role`).
    pub role: Option<String>,
    /// An evaluation of the real targets (eval.json `model.reference`): no model, no MACs.
    pub reference: bool,
    /// eval.json `not_computed`: metric -> why the evaluate stage left it out.
    pub not_computed: BTreeMap<String, String>,
    /// `samples/*.png`, sorted by file name.
    pub samples: Vec<PathBuf>,
    /// Evaluated (H, W) (eval.json `resolution`, else `model.input`).
    pub resolution: Option<(u32, u32)>,
    /// How latency was measured (eval.json `model.latency`), when it was.
    pub latency: Option<LatencyInfo>,
    /// eval.json `model` as written (architecture parameters for the HTML report).
    pub model_json: Value,
    /// Digest of the split manifest the evaluation used (eval.json `split.manifest_blake3`).
    pub split_digest: Option<String>,
}

/// What the evaluate stage recorded about its latency measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyInfo {
    pub device: String,
    pub threads: Option<i64>,
    pub warmup: Option<i64>,
    pub runs: Option<i64>,
}

impl LatencyInfo {
    /// `cpu, 2 threads, 3 warm-up + 10 runs (median)`.
    pub fn describe(&self) -> String {
        let mut s = self.device.clone();
        if let Some(t) = self.threads {
            s.push_str(&format!(", {t} thread{}", if t == 1 { "" } else { "s" }));
        }
        if let (Some(w), Some(r)) = (self.warmup, self.runs) {
            s.push_str(&format!(", {w} warm-up + {r} runs (median)"));
        }
        s
    }
}

impl EvalRecord {
    /// Reads `metrics.json` (required), `eval.json` and `samples/` (optional) of `input`.
    /// `label_var` is the matrix variable used for the label fraction when eval.json lacks it.
    pub fn load(input: &StageInput, label_var: &str) -> Result<Self, ReportError> {
        let node = if input.node.is_empty() {
            input.name.clone()
        } else {
            input.node.clone()
        };
        let metrics_file = input.dir.join("metrics.json");
        let metrics_json =
            read_json(&node, &metrics_file)?.ok_or_else(|| ReportError::BadInput {
                node: node.clone(),
                file: metrics_file.clone(),
                msg: "missing: an evaluate stage writes metrics.json".into(),
            })?;
        let metrics = flat_numbers(&node, &metrics_file, &metrics_json)?;
        let eval_file = input.dir.join("eval.json");
        let eval = read_json(&node, &eval_file)?.unwrap_or(Value::Null);

        let text = |paths: &[&str]| lookup(&eval, paths).and_then(value_text);
        let label_fraction = lookup(&eval, &["label_fraction", "split.label_fraction"])
            .and_then(Value::as_f64)
            .or_else(|| metrics.get("label_fraction").copied())
            .or_else(|| input.point.get(label_var).and_then(Value::as_f64));
        // Hold-out scores are for choosing hyper-parameters; a report's tables are test
        // scores, and a row of the other kind among them would read as a result.
        if let Some(sub) = lookup(&eval, &["split.subset"]).and_then(Value::as_str)
            && sub != "test"
        {
            return Err(ReportError::BadInput {
                node,
                file: eval_file,
                msg: format!(
                    "scores the `{sub}` images, not the test set: a report compares test \
                     scores (read hold-out evaluations with `ugc-pipe show`)"
                ),
            });
        }
        if let Some(f) = label_fraction
            && !(f > 0.0 && f <= 1.0)
        {
            return Err(ReportError::BadInput {
                node,
                file: eval_file,
                msg: format!("label_fraction {f} is not in (0, 1]"),
            });
        }
        Ok(EvalRecord {
            input: input.name.clone(),
            node: node.clone(),
            point: input.point.clone(),
            dir: input.dir.clone(),
            label_fraction,
            model_stage: text(&["model.stage", "model.name", "model_stage"]),
            model_kind: text(&["model.kind", "model_kind"]),
            arch: text(&["model.arch", "arch", "model.family"]),
            config: text(&["model.config", "config"]),
            role: text(&["model.role"]),
            reference: lookup(&eval, &["model.reference", "reference"])
                .and_then(Value::as_bool)
                .unwrap_or(false),
            not_computed: lookup(&eval, &["not_computed"])
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), value_text(v).unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default(),
            samples: list_samples(&node, &input.dir.join("samples"))?,
            resolution: resolution(&eval),
            latency: lookup(&eval, &["model.latency"])
                .filter(|l| l.is_object())
                .map(|l| LatencyInfo {
                    device: l
                        .get("device")
                        .and_then(value_text)
                        .or_else(|| lookup(&eval, &["device"]).and_then(value_text))
                        .unwrap_or_else(|| "unknown device".into()),
                    threads: l.get("threads").and_then(Value::as_i64),
                    warmup: l.get("warmup").and_then(Value::as_i64),
                    runs: l.get("runs").and_then(Value::as_i64),
                }),
            model_json: lookup(&eval, &["model"]).cloned().unwrap_or(Value::Null),
            split_digest: text(&["split.manifest_blake3"]),
            metrics,
        })
    }

    /// A number of metrics.json, or an error naming the node, the key and the file.
    pub fn metric(&self, key: &str) -> Result<f64, ReportError> {
        self.metrics
            .get(key)
            .copied()
            .ok_or_else(|| ReportError::MissingMetric {
                node: self.node.clone(),
                key: key.into(),
                file: self.dir.join("metrics.json"),
                have: format!(
                    "{}{}",
                    if self.metrics.is_empty() {
                        "nothing".into()
                    } else {
                        self.metrics.keys().cloned().collect::<Vec<_>>().join(", ")
                    },
                    self.not_computed
                        .get(key)
                        .map(|why| format!("; eval.json says it was not computed: {why}"))
                        .unwrap_or_default()
                ),
            })
    }

    /// The matrix value of `var` as display text, if this instance has it.
    pub fn var(&self, var: &str) -> Option<String> {
        self.point.get(var).and_then(value_text)
    }

    /// Whether the model is a searched sub-net trained as its own network: a `train` stage
    /// whose `origin.json`, passed on as eval.json `model.origin`, says its architecture is
    /// a sub-net cut from a supernet (`from_dep` a search or distill model, or a `config`).
    /// The widths cannot tell: pix2pixHD and GauGAN list explicit `channels` for the
    /// original model too. A train model without the record (train before version 3)
    /// counts as the original.
    pub fn from_search(&self) -> bool {
        self.model_kind.as_deref() == Some("train")
            && self
                .model_json
                .get("origin")
                .and_then(|o| o.get("subnet"))
                .and_then(Value::as_bool)
                .unwrap_or(false)
    }

    /// The key of `curve_by_kind` this record's model answers to.
    pub fn kind_key(&self) -> Option<String> {
        if self.from_search() {
            Some("train_from_search".into())
        } else {
            self.model_kind.clone()
        }
    }
}

/// Loads every `evaluate` input, in input order. Other kinds are ignored.
pub fn load_records(
    inputs: &[StageInput],
    label_var: &str,
) -> Result<Vec<EvalRecord>, ReportError> {
    let evals: Vec<&StageInput> = inputs.iter().filter(|i| i.kind == "evaluate").collect();
    if evals.is_empty() {
        let kinds: Vec<String> = inputs
            .iter()
            .map(|i| format!("{} ({})", i.name, i.kind))
            .collect();
        return Err(ReportError::Inputs(format!(
            "the report needs at least one `evaluate` stage among its deps (got: {})",
            if kinds.is_empty() {
                "no deps".into()
            } else {
                kinds.join(", ")
            }
        )));
    }
    evals
        .into_iter()
        .map(|i| EvalRecord::load(i, label_var))
        .collect()
}

/// Display text of a scalar JSON value (strings bare, numbers and booleans as JSON).
pub fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Evaluated (H, W): eval.json `resolution`, else the last two of `model.input`.
fn resolution(eval: &Value) -> Option<(u32, u32)> {
    let pair = |v: &Value| -> Option<(u32, u32)> {
        let a = v.as_array()?;
        let n = a.len();
        if n < 2 {
            return None;
        }
        let h = a[n - 2].as_u64()?;
        let w = a[n - 1].as_u64()?;
        Some((u32::try_from(h).ok()?, u32::try_from(w).ok()?))
    };
    lookup(eval, &["resolution"])
        .and_then(pair)
        .or_else(|| lookup(eval, &["model.input"]).and_then(pair))
}

/// The first dotted path of `paths` present in `v`.
fn lookup<'v>(v: &'v Value, paths: &[&str]) -> Option<&'v Value> {
    paths.iter().find_map(|p| {
        p.split('.')
            .try_fold(v, |cur, seg| cur.get(seg))
            .filter(|x| !x.is_null())
    })
}

fn read_json(node: &str, file: &Path) -> Result<Option<Value>, ReportError> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ReportError::io(format!("reading {}", file.display()), e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ReportError::BadInput {
            node: node.into(),
            file: file.into(),
            msg: format!("not valid JSON: {e}"),
        })
}

fn flat_numbers(node: &str, file: &Path, v: &Value) -> Result<BTreeMap<String, f64>, ReportError> {
    let bad = |msg: String| ReportError::BadInput {
        node: node.into(),
        file: file.into(),
        msg,
    };
    let obj = v
        .as_object()
        .ok_or_else(|| bad("must be a flat JSON object of numbers".into()))?;
    let mut out = BTreeMap::new();
    for (k, val) in obj {
        match val {
            Value::Number(n) => {
                let x = n
                    .as_f64()
                    .ok_or_else(|| bad(format!("`{k}` is not a finite number")))?;
                out.insert(k.clone(), x);
            }
            Value::Null => {}
            other => return Err(bad(format!("`{k}` must be a number, got {other}"))),
        }
    }
    Ok(out)
}

fn list_samples(node: &str, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ReportError::io(
                format!("listing samples of `{node}` in {}", dir.display()),
                e,
            ));
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ReportError::io(format!("listing {}", dir.display()), e))?;
        let path = entry.path();
        if path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("png"))
        {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An evaluate output of a `train` model with `model` as eval.json records it.
    fn record(dir: &Path, model: Value) -> EvalRecord {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("metrics.json"), r#"{"fid": 10.0}"#).unwrap();
        std::fs::write(
            dir.join("eval.json"),
            json!({"split": {"subset": "test"}, "model": model}).to_string(),
        )
        .unwrap();
        let input = StageInput {
            name: "eval".into(),
            node: String::new(),
            point: BTreeMap::new(),
            kind: "evaluate".into(),
            dir: dir.into(),
        };
        EvalRecord::load(&input, "label_ratio").unwrap()
    }

    fn train_model(arch: &str, channels: Value, origin: Option<Value>) -> Value {
        let mut m = json!({
            "reference": false, "stage": "original", "kind": "train", "arch": arch,
            "arch_config": {"arch": arch, "channels": channels}, "config": "w=..;d=..",
        });
        if let Some(o) = origin {
            m["origin"] = o;
        }
        m
    }

    #[test]
    fn student_alone_is_read_from_the_train_origin_not_from_the_widths() {
        let tmp = tempfile::tempdir().unwrap();
        let original = json!({"arch_from": "arch", "subnet": false});
        let from_search =
            json!({"arch_from": "dep", "dep": "search", "dep_kind": "search", "subnet": true});
        let from_config = json!({"arch_from": "config", "config": "w=8,8;d=", "subnet": true});
        // pix2pixHD and GauGAN originals list their widths; the pix2pix ResNet's do not.
        for (i, (arch, widths)) in [
            ("pix2pixhd", json!([64, 128, 256, 512, 1024])),
            ("gaugan", json!([1024, 1024, 1024, 512, 256, 128, 64])),
            ("pix2pix-resnet", Value::Null),
        ]
        .into_iter()
        .enumerate()
        {
            let dir = |name: &str| tmp.path().join(format!("{i}_{name}"));
            let r = record(
                &dir("orig"),
                train_model(arch, widths.clone(), Some(original.clone())),
            );
            assert!(!r.from_search(), "{arch} original");
            assert_eq!(r.kind_key().as_deref(), Some("train"), "{arch}");
            let r = record(
                &dir("search"),
                train_model(arch, json!([16, 24, 32]), Some(from_search.clone())),
            );
            assert!(r.from_search(), "{arch} from a search");
            assert_eq!(r.kind_key().as_deref(), Some("train_from_search"));
            let r = record(
                &dir("config"),
                train_model(arch, json!([8, 8]), Some(from_config.clone())),
            );
            assert!(r.from_search(), "{arch} config sub-net");
            // No record (an older train output): the original, whatever the widths.
            let r = record(&dir("none"), train_model(arch, json!([8, 8]), None));
            assert!(!r.from_search(), "{arch} without origin");
        }
        // Only train models: a distilled student with a `subnet` origin is UGC's, not alone.
        let mut m = train_model("pix2pixhd", json!([8]), Some(from_search));
        m["kind"] = json!("distill");
        let r = record(&tmp.path().join("distill"), m);
        assert!(!r.from_search());
        assert_eq!(r.kind_key().as_deref(), Some("distill"));
    }
}
