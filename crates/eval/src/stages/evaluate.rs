//! The `evaluate` stage kind: runs a model on the split's **test** set (or, asked with
//! `subset: holdout`, on the hold-out carved from the training images, for choosing
//! hyper-parameters without the test images; never on training data) and writes `metrics.json` (flat numbers), `eval.json` (every value
//! with the identity of what computed it) and `samples/` (input | output | target strips).
//!
//! Metrics: PSNR and SSIM against the ground-truth photos; with an `evaluator` dep, mIoU of
//! the evaluator's segmentation of the generated images against the true label maps (the
//! Cityscapes protocol) and `seg_fd`, a Fréchet distance on the evaluator's features (not
//! FID); or, with `drn_weights`, mIoU by the pretrained DRN-D-105 on Cityscapes (the
//! papers' protocol, `crate::drn_miou`); FID only when an Inception weights file is configured; MACs/params at the
//! evaluation resolution; latency (batch 1, median after warm-up) on the stage's device.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value, json};
use tch::Tensor;
use ugc_data::{InputEncoding, Loader, LoaderConfig, SplitManifest, Subset};
use ugc_engine::{KindSchema, StageContext, StageError, StageKind};
use ugc_kinds::evaluate::{EvalSubset, Params};
use ugc_metrics::frechet::{DEFAULT_EPS, GaussianStats, frechet_distance};
use ugc_metrics::image_metrics::{SsimConfig, mean, psnr, ssim};
use ugc_metrics::inception::FidInception;
use ugc_metrics::latency::{LatencyConfig, measure_latency};
use ugc_metrics::{ConfusionMatrix, FeatureExtractor, MiouReport};
use ugc_nn::export::{LoadedModel, ModelMeta, load_model};
use ugc_nn::{Mode, SubnetConfig, profile};

use crate::drn_miou::DrnMiou;
use crate::error::{EvalError, Result};
use crate::evaluator::Evaluator;
use crate::labels::{LabelSpec, generated_to_unit, real_to_unit};
use crate::model_source::{ModelSource, find_model};
use crate::samples::{colorize, write_strips};
use crate::util::{file_digest, finite, tch_device, write_json};

/// Evaluates a model on the test split (schema and parameters: `ugc_kinds::evaluate`).
pub struct EvaluateStage {
    schema: KindSchema,
}

impl EvaluateStage {
    pub fn new(schema: KindSchema) -> Self {
        EvaluateStage { schema }
    }
}

impl StageKind for EvaluateStage {
    fn schema(&self) -> &KindSchema {
        &self.schema
    }

    fn run(&self, ctx: &StageContext<'_>) -> std::result::Result<(), StageError> {
        let p: Params = ctx.typed_params()?;
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
    /// A `train` dep's `origin.json` (how its architecture was chosen), passed on to
    /// eval.json `model.origin` for the report.
    origin: Option<Value>,
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

/// Everything the measurement needs, set up (and every configuration problem found)
/// before the first image is evaluated.
struct Setup {
    split_dir: PathBuf,
    manifest: SplitManifest,
    inception: Option<FidInception>,
    subject: Subject,
    evaluator: Option<Evaluator>,
    drn: Option<DrnMiou>,
    encoding: InputEncoding,
    loader: Loader,
}

/// What the pass over the test set gathered.
struct Measured {
    psnrs: Vec<f64>,
    ssims: Vec<f64>,
    /// Images whose PSNR reached `psnr_cap_db`.
    capped: usize,
    cm: Option<ConfusionMatrix>,
    seg_feats: FeaturePair,
    fid_feats: FeaturePair,
    samples: Vec<String>,
    /// The first test input (batch 1), for latency.
    first_input: Option<Tensor>,
    /// The evaluation resolution `[H, W]`.
    size: Option<[i64; 2]>,
    ssim_cfg: SsimConfig,
    /// Images evaluated.
    n: usize,
}

fn evaluate(ctx: &StageContext<'_>, p: &Params) -> Result<()> {
    let mut setup = build(ctx, p)?;
    let measured = measure(ctx, p, &mut setup)?;
    write_outputs(ctx, p, &setup, measured)
}

/// `test` or `holdout`: the images the stage scores.
fn subset_name(p: &Params) -> &'static str {
    p.subset.unwrap_or(EvalSubset::Test).name()
}

/// Loads the split, the weights files, the model (or the reference), the evaluator and
/// the test loader, refusing every misconfiguration before any work is done.
fn build(ctx: &StageContext<'_>, p: &Params) -> Result<Setup> {
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
        "FID needs pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth)",
    )?
    .map(|path| FidInception::load(path, device))
    .transpose()?;
    let drn_path = configured_file(
        "drn_weights",
        &p.drn_weights,
        "the Cityscapes mIoU needs DRN-D-105 (DRNSeg) weights (drn-d-105_ms_cityscapes.pth)",
    )?;

    let subject = if p.reference {
        Subject::Reference
    } else {
        let source = find_model(ctx, p.model.as_deref(), p.role.map(|r| r.name()))?;
        let (meta, model) = load_model(&source.dir, device)?;
        let sub = model.generator.search_space().largest();
        let origin = train_origin(ctx, &source)?;
        Subject::Model(Box::new(UnderTest {
            source,
            origin,
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
    let drn = match drn_path {
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
        threads: p.threads,
        encoding,
        device,
        ..LoaderConfig::eval(p.batch_size)
    };
    let subset = match p.subset.unwrap_or(EvalSubset::Test) {
        EvalSubset::Test => Subset::Test,
        EvalSubset::Holdout => Subset::Holdout,
    };
    let loader = Loader::new(&manifest, &split_dir, subset, cfg)?;
    if loader.is_empty() {
        return Err(EvalError::Input(format!(
            "split {} has no {} images{}",
            split_dir.display(),
            subset_name(p),
            if subset == Subset::Holdout {
                " (its `holdout` ratio is 0, or too small for its training set)"
            } else {
                ""
            }
        )));
    }
    Ok(Setup {
        split_dir,
        manifest,
        inception,
        subject,
        evaluator,
        drn,
        encoding,
        loader,
    })
}

/// One pass over the test set: per-image PSNR and SSIM, the segmenters' confusion
/// matrices, the features of the Fréchet distances, and the sample strips.
fn measure(ctx: &StageContext<'_>, p: &Params, s: &mut Setup) -> Result<Measured> {
    ctx.progress.start("evaluate", s.loader.len() as u64);
    let mut m = Measured {
        psnrs: Vec::new(),
        ssims: Vec::new(),
        capped: 0,
        cm: s.evaluator.as_ref().map(|e| e.confusion()).transpose()?,
        seg_feats: FeaturePair::default(),
        fid_feats: FeaturePair::default(),
        samples: Vec::new(),
        first_input: None,
        size: None,
        ssim_cfg: SsimConfig::default(),
        n: 0,
    };
    for batch in s.loader.epoch(0) {
        if ctx.cancel.is_cancelled() {
            return Err(EvalError::Cancelled);
        }
        let b = batch?;
        let target = b.target.as_ref().expect("test pairs have targets");
        let out = s.subject.output(&b.input, target)?;
        let real = real_to_unit(target);
        if out.size() != real.size() {
            return Err(EvalError::Check(format!(
                "the model's output {:?} does not match the target {:?} (examples {:?})",
                out.size(),
                real.size(),
                b.ids
            )));
        }
        let sz = real.size();
        match m.size {
            None => m.size = Some([sz[2], sz[3]]),
            Some(prev) if prev != [sz[2], sz[3]] => {
                return Err(EvalError::Check(format!(
                    "test images have different sizes ({prev:?} and {:?}); MACs and latency need one evaluation resolution",
                    [sz[2], sz[3]]
                )));
            }
            Some(_) => {}
        }
        if m.first_input.is_none() {
            m.first_input = Some(b.input.narrow(0, 0, 1));
        }
        for v in psnr(&out, &real, 1.0)? {
            if v > p.psnr_cap_db {
                m.capped += 1;
            }
            m.psnrs.push(v.min(p.psnr_cap_db));
        }
        m.ssims.extend(ssim(&out, &real, 1.0, &m.ssim_cfg)?);
        if let (Some(ev), Some(cm)) = (&s.evaluator, m.cm.as_mut()) {
            let labels = ev.meta.labels.labels_of(&b)?;
            ev.accumulate(cm, &out, &labels)?;
            m.seg_feats.push(ev, &out, &real)?;
        }
        if let Some(d) = s.drn.as_mut() {
            d.accumulate(&out, &b)?;
        }
        if let Some(inc) = &s.inception {
            m.fid_feats.push(inc, &out, &real)?;
        }
        if m.samples.len() < p.n_samples {
            let k = (p.n_samples - m.samples.len()).min(b.ids.len());
            // One-hot inputs are shown as the colour map of their labels.
            let shown_input = match (s.encoding, &s.manifest.classes, &b.labels) {
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
            m.samples.extend(names);
        }
        m.n += b.ids.len();
        ctx.progress.set(m.n as u64);
    }
    Ok(m)
}

/// Turns the measurements into `metrics.json` (flat numbers) and `eval.json` (each value
/// with what computed it), timing the model's latency on the way.
fn write_outputs(ctx: &StageContext<'_>, p: &Params, s: &Setup, m: Measured) -> Result<()> {
    let n = m.n;
    let [h, w] = m.size.expect("the loader is not empty");

    let mut metrics = Map::new();
    let mut records: Vec<MetricRecord> = Vec::new();
    let full_ref = json!({"name": "full-reference", "data_range": 1.0,
        "images": "8-bit outputs (tensor2im truncation) vs 8-bit ground truth, in [0, 1]"});
    let psnr_v = mean(&m.psnrs).expect("at least one image");
    let ssim_v = mean(&m.ssims).expect("at least one image");
    metrics.insert("psnr".into(), finite("psnr", psnr_v)?.into());
    metrics.insert("ssim".into(), finite("ssim", ssim_v)?.into());
    records.push(MetricRecord {
        metric: "psnr",
        value: psnr_v,
        evaluator: json!({"name": "psnr", "cap_db": p.psnr_cap_db, "images_at_cap": m.capped,
            "protocol": full_ref}),
    });
    records.push(MetricRecord {
        metric: "ssim",
        value: ssim_v,
        evaluator: json!({"name": "ssim-gaussian", "config": m.ssim_cfg, "protocol": full_ref}),
    });

    let mut miou_report: Option<MiouReport> = None;
    if let (Some(ev), Some(cm)) = (&s.evaluator, &m.cm) {
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
            let fd = m.seg_feats.distance("seg_fd")?;
            metrics.insert("seg_fd".into(), finite("seg_fd", fd)?.into());
            records.push(MetricRecord {
                metric: "seg_fd",
                value: fd,
                evaluator: id,
            });
        }
        miou_report = Some(r);
    }
    if let Some(d) = &s.drn {
        let r = d.report(n)?;
        metrics.insert("miou".into(), finite("miou", r.value)?.into());
        records.push(MetricRecord {
            metric: "miou",
            value: r.value,
            evaluator: d.identity(),
        });
        miou_report = Some(r);
    }
    if let Some(inc) = &s.inception {
        let fid = m.fid_feats.distance("fid")?;
        metrics.insert("fid".into(), finite("fid", fid)?.into());
        records.push(MetricRecord {
            metric: "fid",
            value: fid,
            evaluator: serde_json::to_value(inc.identity()).unwrap_or(Value::Null),
        });
    }

    let mut model_json = json!({"reference": p.reference});
    if let Subject::Model(under_test) = &s.subject {
        let UnderTest {
            source,
            origin,
            meta,
            model,
            sub,
        } = under_test.as_ref();
        let cost = profile(&meta.arch, None, [meta.arch.input_nc, h, w])?;
        metrics.insert("macs".into(), cost.macs.into());
        metrics.insert("params".into(), cost.params.into());
        let mut latency = Value::Null;
        if p.latency {
            let x = m.first_input.as_ref().expect("set with the first batch");
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
        // Only when the dep recorded one, so that other models' eval.json stays as it was.
        if let Some(o) = origin {
            model_json["origin"] = o.clone();
        }
    }
    metrics.insert("n_images".into(), (n as u64).into());
    metrics.insert("label_fraction".into(), s.manifest.label_ratio.into());

    // The split by the digest of its manifest (which holds every file's digest), not by
    // its folder: an output naming a cache path would differ between cache locations.
    let manifest = &s.manifest;
    let eval = json!({
        "split": {
            "subset": subset_name(p),
            "manifest_blake3": file_digest(&s.split_dir.join(ugc_data::manifest::MANIFEST_FILE))?,
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
        "samples": m.samples,
        "not_computed": not_computed(&s.evaluator, s.drn.is_some(), &s.inception, p),
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

/// `origin.json` of a `train` dep (written since the train kind's version 3), if any.
fn train_origin(ctx: &StageContext<'_>, source: &ModelSource) -> Result<Option<Value>> {
    if source.kind != "train" {
        return Ok(None);
    }
    let Some(input) = ctx.inputs.iter().find(|i| i.name == source.stage) else {
        return Ok(None);
    };
    let path = input.dir.join("origin.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| EvalError::Input(format!("{}: not valid JSON: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EvalError::Input(format!("reading {}: {e}", path.display()))),
    }
}
