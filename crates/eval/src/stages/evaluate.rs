//! The `evaluate` stage kind: runs a model on the split's **test** set (never the hold-out,
//! never training data) and writes `metrics.json` (flat numbers), `eval.json` (every value
//! with the identity of what computed it) and `samples/` (input | output | target strips).
//!
//! Metrics: PSNR and SSIM against the ground-truth photos; with an `evaluator` dep, mIoU of
//! the evaluator's segmentation of the generated images against the true label maps (the
//! Cityscapes protocol) and `seg_fd`, a Fréchet distance on the evaluator's features (not
//! FID); or, with `drn_weights`, mIoU by the pretrained DRN-D-105 on Cityscapes (the
//! papers' protocol, `crate::drn_miou`); FID only when an Inception weights file is configured; MACs/params at the
//! evaluation resolution; latency (batch 1, median after warm-up) on the stage's device.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tch::Tensor;
use ugc_data::{InputEncoding, Loader, LoaderConfig, SplitManifest, Subset};
use ugc_engine::{KindSchema, StageContext, StageError, StageKind};
use ugc_metrics::frechet::{DEFAULT_EPS, GaussianStats, frechet_distance};
use ugc_metrics::image_metrics::{SsimConfig, mean, psnr, ssim};
use ugc_metrics::inception::FidInception;
use ugc_metrics::latency::{LatencyConfig, measure_latency};
use ugc_metrics::{FeatureExtractor, MiouReport};
use ugc_nn::export::{LoadedModel, ModelMeta, load_model};
use ugc_nn::{Mode, SubnetConfig, profile};

use crate::drn_miou::DrnMiou;
use crate::error::{EvalError, Result};
use crate::evaluator::Evaluator;
use crate::labels::{LabelSpec, generated_to_unit, real_to_unit};
use crate::model_source::{ModelSource, find_model};
use crate::samples::{colorize, write_strips};
use crate::util::{file_digest, finite, tch_device, write_json};

/// Evaluates a model on the test split (`stages/evaluate.yaml`).
pub struct EvaluateStage {
    schema: KindSchema,
}

impl EvaluateStage {
    pub fn new(schema: KindSchema) -> Self {
        EvaluateStage { schema }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Params {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    role: Option<String>,
    reference: bool,
    batch_size: usize,
    n_samples: usize,
    psnr_cap_db: f64,
    #[serde(default)]
    fid_inception_weights: Option<PathBuf>,
    #[serde(default)]
    drn_weights: Option<PathBuf>,
    latency: bool,
    latency_warmup: usize,
    latency_runs: usize,
    #[serde(default = "one")]
    threads: usize,
}

fn one() -> usize {
    1
}

impl Params {
    fn check(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(EvalError::param(
                "batch_size",
                self.batch_size,
                "must be >= 1",
            ));
        }
        if !(self.psnr_cap_db.is_finite() && self.psnr_cap_db > 0.0) {
            return Err(EvalError::param(
                "psnr_cap_db",
                self.psnr_cap_db,
                "must be a positive number",
            ));
        }
        if self.latency && self.latency_runs == 0 {
            return Err(EvalError::param(
                "latency_runs",
                0,
                "must be >= 1 when latency is on",
            ));
        }
        Ok(())
    }
}

impl StageKind for EvaluateStage {
    fn schema(&self) -> &KindSchema {
        &self.schema
    }

    fn run(&self, ctx: &StageContext<'_>) -> std::result::Result<(), StageError> {
        let p: Params = ctx.typed_params()?;
        p.check()?;
        evaluate(ctx, &p).map_err(StageError::from)
    }
}

/// The model under evaluation, or the ground truth itself (`reference: true`).
enum Subject {
    Model(Box<UnderTest>),
    Reference,
}

struct UnderTest {
    source: ModelSource,
    meta: ModelMeta,
    model: LoadedModel,
    sub: SubnetConfig,
}

impl Subject {
    /// Output in `[0, 1]` as a user would see it (8-bit), for a batch.
    fn output(&self, input: &Tensor, target: &Tensor) -> Result<Tensor> {
        match self {
            Subject::Reference => Ok(real_to_unit(target)),
            Subject::Model(m) => {
                let y = tch::no_grad(|| m.model.generator.forward(input, &m.sub, Mode::Eval))?;
                Ok(generated_to_unit(&y))
            }
        }
    }
}

/// The loader's input encoding for a model with `input_nc` channels on this split.
fn encoding_for(manifest: &SplitManifest, input_nc: i64) -> Result<InputEncoding> {
    match &manifest.classes {
        None if input_nc == 3 => Ok(InputEncoding::Rgb),
        None => Err(EvalError::Input(format!(
            "the model takes {input_nc} input channels but the split holds RGB inputs (3)"
        ))),
        Some(_) if input_nc == 3 => Ok(InputEncoding::Rgb),
        Some(t) if input_nc == t.onehot_channels as i64 => Ok(InputEncoding::OneHot {
            instance_edges: false,
        }),
        Some(t) if input_nc == t.onehot_channels as i64 + 1 => Ok(InputEncoding::OneHot {
            instance_edges: true,
        }),
        Some(t) => Err(EvalError::Input(format!(
            "the model takes {input_nc} input channels; class table `{}` gives 3 (colour map), {} (one-hot) or {} (one-hot + instance edges)",
            t.name,
            t.onehot_channels,
            t.onehot_channels + 1
        ))),
    }
}

/// Features of generated and real images for one Fréchet distance.
#[derive(Default)]
struct FeaturePair {
    fake: Vec<Tensor>,
    real: Vec<Tensor>,
}

impl FeaturePair {
    fn push(&mut self, ex: &dyn FeatureExtractor, fake: &Tensor, real: &Tensor) -> Result<()> {
        self.fake.push(ex.features(fake)?);
        self.real.push(ex.features(real)?);
        Ok(())
    }

    fn distance(&self, what: &str) -> Result<f64> {
        let a = GaussianStats::from_features(&Tensor::cat(&self.fake, 0))
            .map_err(|e| EvalError::Check(format!("{what}: {e}")))?;
        let b = GaussianStats::from_features(&Tensor::cat(&self.real, 0))
            .map_err(|e| EvalError::Check(format!("{what}: {e}")))?;
        Ok(frechet_distance(&a, &b, DEFAULT_EPS)?.value)
    }
}

#[derive(Serialize)]
struct MetricRecord {
    metric: &'static str,
    value: f64,
    evaluator: Value,
}

fn evaluate(ctx: &StageContext<'_>, p: &Params) -> Result<()> {
    let split = ctx
        .require_input("split")
        .map_err(|e| EvalError::Input(e.to_string()))?;
    let split_dir = split.dir.clone();
    let manifest = SplitManifest::load(&split_dir)?;
    let device = tch_device(ctx.device);

    // Configured-but-missing weights files are refused before any work is done.
    let inception = configured_file(
        "fid_inception_weights",
        &p.fid_inception_weights,
        "FID needs pytorch-fid's Inception weights converted to safetensors",
    )?
    .map(|path| FidInception::load(path, device))
    .transpose()?;
    let drn_path = configured_file(
        "drn_weights",
        &p.drn_weights,
        "the Cityscapes mIoU needs DRN-D-105 (DRNSeg) weights converted to safetensors",
    )?;

    let subject = if p.reference {
        Subject::Reference
    } else {
        let source = find_model(ctx, p.model.as_deref(), p.role.as_deref())?;
        let (meta, model) = load_model(&source.dir, device)?;
        let sub = model.generator.search_space().largest();
        Subject::Model(Box::new(UnderTest {
            source,
            meta,
            model,
            sub,
        }))
    };
    let input_nc = match &subject {
        Subject::Model(m) => m.meta.arch.input_nc,
        Subject::Reference => 3,
    };

    let evaluator = match ctx.input_of_kind("evaluator") {
        Some(e) => Some(Evaluator::load(&e.dir, device)?),
        None => None,
    };
    if let Some(ev) = &evaluator {
        let fits = match (&manifest.classes, &ev.meta.labels) {
            (Some(t), LabelSpec::ClassTable { table, .. }) => *table == t.name,
            (None, LabelSpec::Foreground { .. }) => true,
            _ => false,
        };
        if !fits {
            return Err(EvalError::Input(format!(
                "the evaluator's labels ({:?}) do not fit the split's {}",
                ev.meta.labels,
                manifest.classes.as_ref().map_or(
                    "aligned data (foreground masks)".to_string(),
                    |t| format!("class table `{}`", t.name)
                )
            )));
        }
    }

    // Cityscapes mIoU by the pretrained DRN-D-105, when configured (and then instead of an
    // evaluator's: both would report `miou`).
    let mut drn = match drn_path {
        None => None,
        Some(path) => {
            if evaluator.is_some() {
                return Err(EvalError::param(
                    "drn_weights",
                    path.display(),
                    "is set together with an `evaluator` dep; both would report `miou`: keep one",
                ));
            }
            DrnMiou::check_split(&manifest)?;
            Some(DrnMiou::load(path, device)?)
        }
    };

    let encoding = encoding_for(&manifest, input_nc)?;
    let cfg = LoaderConfig {
        threads: p.threads.max(1),
        encoding,
        device,
        ..LoaderConfig::eval(p.batch_size)
    };
    let loader = Loader::new(&manifest, &split_dir, Subset::Test, cfg)?;
    if loader.is_empty() {
        return Err(EvalError::Input(format!(
            "split {} has no test images",
            split_dir.display()
        )));
    }

    ctx.progress.start("evaluate", loader.len() as u64);
    let (mut psnrs, mut ssims) = (Vec::new(), Vec::new());
    let mut capped = 0usize;
    let mut cm = evaluator.as_ref().map(|e| e.confusion()).transpose()?;
    let (mut seg_feats, mut fid_feats) = (FeaturePair::default(), FeaturePair::default());
    let mut samples = Vec::new();
    let mut first_input: Option<Tensor> = None;
    let mut size: Option<[i64; 2]> = None;
    let ssim_cfg = SsimConfig::default();
    let mut n = 0usize;
    for batch in loader.epoch(0) {
        if ctx.cancel.is_cancelled() {
            return Err(EvalError::Cancelled);
        }
        let b = batch?;
        let target = b.target.as_ref().expect("test pairs have targets");
        let out = subject.output(&b.input, target)?;
        let real = real_to_unit(target);
        if out.size() != real.size() {
            return Err(EvalError::Check(format!(
                "the model's output {:?} does not match the target {:?} (examples {:?})",
                out.size(),
                real.size(),
                b.ids
            )));
        }
        let s = real.size();
        match size {
            None => size = Some([s[2], s[3]]),
            Some(prev) if prev != [s[2], s[3]] => {
                return Err(EvalError::Check(format!(
                    "test images have different sizes ({prev:?} and {:?}); MACs and latency need one evaluation resolution",
                    [s[2], s[3]]
                )));
            }
            Some(_) => {}
        }
        if first_input.is_none() {
            first_input = Some(b.input.narrow(0, 0, 1));
        }
        for v in psnr(&out, &real, 1.0)? {
            if v > p.psnr_cap_db {
                capped += 1;
            }
            psnrs.push(v.min(p.psnr_cap_db));
        }
        ssims.extend(ssim(&out, &real, 1.0, &ssim_cfg)?);
        if let (Some(ev), Some(cm)) = (&evaluator, cm.as_mut()) {
            let labels = ev.meta.labels.labels_of(&b)?;
            ev.accumulate(cm, &out, &labels)?;
            seg_feats.push(ev, &out, &real)?;
        }
        if let Some(d) = drn.as_mut() {
            d.accumulate(&out, &b)?;
        }
        if let Some(inc) = &inception {
            fid_feats.push(inc, &out, &real)?;
        }
        if samples.len() < p.n_samples {
            let k = (p.n_samples - samples.len()).min(b.ids.len());
            // One-hot inputs are shown as the colour map of their labels.
            let shown_input = match (encoding, &manifest.classes, &b.labels) {
                (InputEncoding::OneHot { .. }, Some(t), Some(l)) => {
                    colorize(&l.narrow(0, 0, k as i64), t)
                }
                _ => real_to_unit(&b.input.narrow(0, 0, k as i64)),
            };
            let names = write_strips(
                &ctx.out_dir.join("samples"),
                &b.ids[..k],
                &shown_input,
                &out.narrow(0, 0, k as i64),
                &real.narrow(0, 0, k as i64),
            )?;
            samples.extend(names);
        }
        n += b.ids.len();
        ctx.progress.set(n as u64);
    }
    let [h, w] = size.expect("the loader is not empty");

    let mut metrics = Map::new();
    let mut records: Vec<MetricRecord> = Vec::new();
    let full_ref = json!({"name": "full-reference", "data_range": 1.0,
        "images": "8-bit outputs (tensor2im truncation) vs 8-bit ground truth, in [0, 1]"});
    let psnr_v = mean(&psnrs).expect("at least one image");
    let ssim_v = mean(&ssims).expect("at least one image");
    metrics.insert("psnr".into(), finite("psnr", psnr_v)?.into());
    metrics.insert("ssim".into(), finite("ssim", ssim_v)?.into());
    records.push(MetricRecord {
        metric: "psnr",
        value: psnr_v,
        evaluator: json!({"name": "psnr", "cap_db": p.psnr_cap_db, "images_at_cap": capped,
            "protocol": full_ref}),
    });
    records.push(MetricRecord {
        metric: "ssim",
        value: ssim_v,
        evaluator: json!({"name": "ssim-gaussian", "config": ssim_cfg, "protocol": full_ref}),
    });

    let mut miou_report: Option<MiouReport> = None;
    if let (Some(ev), Some(cm)) = (&evaluator, &cm) {
        let r = MiouReport::from_matrix(cm, n)?;
        let id = serde_json::to_value(ev.identity()).unwrap_or(Value::Null);
        metrics.insert("miou".into(), finite("miou", r.value)?.into());
        if let Some(own) = ev.own_test_miou() {
            metrics.insert(
                "evaluator_test_miou".into(),
                finite("evaluator_test_miou", own)?.into(),
            );
        }
        records.push(MetricRecord {
            metric: "miou",
            value: r.value,
            evaluator: id.clone(),
        });
        if n >= 2 {
            let fd = seg_feats.distance("seg_fd")?;
            metrics.insert("seg_fd".into(), finite("seg_fd", fd)?.into());
            records.push(MetricRecord {
                metric: "seg_fd",
                value: fd,
                evaluator: id,
            });
        }
        miou_report = Some(r);
    }
    if let Some(d) = &drn {
        let r = d.report(n)?;
        metrics.insert("miou".into(), finite("miou", r.value)?.into());
        records.push(MetricRecord {
            metric: "miou",
            value: r.value,
            evaluator: d.identity(),
        });
        miou_report = Some(r);
    }
    if let Some(inc) = &inception {
        let fid = fid_feats.distance("fid")?;
        metrics.insert("fid".into(), finite("fid", fid)?.into());
        records.push(MetricRecord {
            metric: "fid",
            value: fid,
            evaluator: serde_json::to_value(inc.identity()).unwrap_or(Value::Null),
        });
    }

    let mut model_json = json!({"reference": p.reference});
    if let Subject::Model(m) = &subject {
        let UnderTest {
            source,
            meta,
            model,
            sub,
        } = m.as_ref();
        let cost = profile(&meta.arch, None, [meta.arch.input_nc, h, w])?;
        metrics.insert("macs".into(), cost.macs.into());
        metrics.insert("params".into(), cost.params.into());
        let mut latency = Value::Null;
        if p.latency {
            let x = first_input.as_ref().expect("set with the first batch");
            let rep = measure_latency(
                x,
                &LatencyConfig {
                    warmup: p.latency_warmup,
                    runs: p.latency_runs,
                },
                |t| {
                    model
                        .generator
                        .forward(t, sub, Mode::Eval)
                        .map_err(|e| ugc_metrics::MetricsError::InvalidParam(e.to_string()))
                },
            )?;
            metrics.insert(
                "latency_ms".into(),
                finite("latency_ms", rep.median_ms)?.into(),
            );
            latency = serde_json::to_value(&rep).unwrap_or(Value::Null);
        }
        model_json = json!({
            "reference": false,
            "stage": source.stage,
            "kind": source.kind,
            "role": source.role,
            "arch": meta.arch.arch.name(),
            "arch_config": meta.arch,
            "config": meta.source_subnet,
            "weights_blake3": file_digest(&source.dir.join(ugc_nn::export::WEIGHTS_FILE))?,
            "macs": cost.macs,
            "params": cost.params,
            "input": [meta.arch.input_nc, h, w],
            "latency": latency,
        });
    }
    metrics.insert("n_images".into(), (n as u64).into());
    metrics.insert("label_fraction".into(), manifest.label_ratio.into());

    // The split by the digest of its manifest (which holds every file's digest), not by
    // its folder: an output naming a cache path would differ between cache locations.
    let eval = json!({
        "split": {
            "subset": "test",
            "manifest_blake3": file_digest(&split_dir.join(ugc_data::manifest::MANIFEST_FILE))?,
            "label_fraction": manifest.label_ratio,
            "labeled": manifest.counts.labeled,
            "unlabeled": manifest.counts.unlabeled,
            "seed": manifest.seed,
        },
        "n_images": n,
        "resolution": [h, w],
        "device": ctx.device.to_string(),
        "model": model_json,
        "metrics": records,
        "miou_detail": miou_report,
        "samples": samples,
        "not_computed": not_computed(&evaluator, drn.is_some(), &inception, p),
    });
    write_json(&ctx.out_dir.join("eval.json"), &eval)?;
    write_json(&ctx.out_dir.join("metrics.json"), &metrics)?;
    Ok(())
}

/// The weights file a parameter names, or `None` when it is unset; a configured path
/// that does not exist is an error naming the parameter (`needs` says what it is for).
fn configured_file<'a>(
    param: &str,
    value: &'a Option<PathBuf>,
    needs: &str,
) -> Result<Option<&'a Path>> {
    match value {
        None => Ok(None),
        Some(path) if !path.is_file() => Err(EvalError::param(
            param,
            path.display(),
            format!("the file does not exist; {needs} (unset the parameter to skip it)"),
        )),
        Some(path) => Ok(Some(path.as_path())),
    }
}

/// Metrics left out and why, so a report never mistakes absence for zero.
fn not_computed(
    evaluator: &Option<Evaluator>,
    drn: bool,
    inception: &Option<FidInception>,
    p: &Params,
) -> Value {
    let mut v = Map::new();
    if evaluator.is_none() {
        if !drn {
            v.insert(
                "miou".into(),
                "no `evaluator` dep and no `drn_weights` (a segmenter is needed)".into(),
            );
        }
        v.insert("seg_fd".into(), "no `evaluator` dep".into());
    }
    if inception.is_none() {
        v.insert(
            "fid".into(),
            "`fid_inception_weights` is not configured".into(),
        );
    }
    if p.reference {
        for k in ["macs", "params", "latency_ms"] {
            v.insert(
                k.into(),
                "reference mode evaluates the ground truth, not a model".into(),
            );
        }
    } else if !p.latency {
        v.insert("latency_ms".into(), "`latency: false`".into());
    }
    Value::Object(v)
}
