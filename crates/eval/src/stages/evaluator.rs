//! The `evaluator` stage kind: trains the segmentation evaluator of a synthetic task on the
//! split's real labeled photos (never on generated images), then measures its own mIoU on
//! the real test photos (the upper bound for any generator under this evaluator).

use serde::Deserialize;
use tch::{Kind, Reduction, Tensor, nn};
use ugc_data::{Loader, LoaderConfig, SplitManifest, Subset};
use ugc_engine::{KindSchema, StageContext, StageError, StageKind};

use crate::error::{EvalError, Result};
use crate::evaluator::{
    EVALUATOR_DIR, Evaluator, EvaluatorMeta, META_FILE, TestRecord, TrainingRecord, WEIGHTS_FILE,
    labeled_data_digest, test_miou,
};
use crate::labels::{IGNORE, LabelSpec};
use crate::optim::Adam;
use crate::segnet::{SegNet, SegNetConfig};
use crate::util::{finite, tch_device, write_json};

/// Trains a segmentation evaluator (`stages/evaluator.yaml`).
pub struct EvaluatorStage {
    schema: KindSchema,
}

impl EvaluatorStage {
    pub fn new(schema: KindSchema) -> Self {
        EvaluatorStage { schema }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Params {
    width: i64,
    steps: u64,
    batch_size: usize,
    lr: f64,
    seed: u64,
    foreground_threshold: i64,
    checkpoint_every: u64,
    #[serde(default = "one")]
    threads: usize,
}

fn one() -> usize {
    1
}

const CKPT: &str = "evaluator-ckpt.safetensors";

impl Params {
    fn check(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(EvalError::param("steps", self.steps, "must be >= 1"));
        }
        if self.batch_size == 0 {
            return Err(EvalError::param(
                "batch_size",
                self.batch_size,
                "must be >= 1",
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(EvalError::param("lr", self.lr, "must be a positive number"));
        }
        if !(1..=255).contains(&self.foreground_threshold) {
            return Err(EvalError::param(
                "foreground_threshold",
                self.foreground_threshold,
                "must be in 1..=255",
            ));
        }
        Ok(())
    }
}

impl StageKind for EvaluatorStage {
    fn schema(&self) -> &KindSchema {
        &self.schema
    }

    fn run(&self, ctx: &StageContext<'_>) -> std::result::Result<(), StageError> {
        let p: Params = ctx.typed_params()?;
        p.check()?;
        let split = ctx.require_input("split")?;
        train_evaluator(ctx, &p, &split.dir).map_err(StageError::from)
    }
}

fn train_evaluator(ctx: &StageContext<'_>, p: &Params, split_dir: &std::path::Path) -> Result<()> {
    let manifest = SplitManifest::load(split_dir)?;
    let labels = LabelSpec::for_split(&manifest, p.foreground_threshold as u8)?;
    let device = tch_device(ctx.device);
    tch::manual_seed(p.seed as i64);
    let arch = SegNetConfig {
        width: p.width,
        num_classes: labels.num_classes() as i64,
    };
    let mut vs = nn::VarStore::new(device);
    let net = SegNet::new(&vs.root(), &arch)?;
    let mut opt = Adam::new(&vs, p.lr);

    let cfg = LoaderConfig {
        threads: p.threads.max(1),
        drop_last: false,
        device,
        ..LoaderConfig::train(p.batch_size, p.seed)
    };
    let loader = Loader::new(&manifest, split_dir, Subset::Labeled, cfg)?;
    if loader.is_empty() {
        return Err(EvalError::Input(format!(
            "split {} has no labeled pairs to train the evaluator on",
            split_dir.display()
        )));
    }
    let per_epoch = loader.batches_per_epoch() as u64;

    let ckpt = ctx.scratch_dir.join(CKPT);
    let mut step = 0u64;
    let tail_from = p.steps - (p.steps / 10).max(1);
    let (mut tail_sum, mut tail_n) = (0.0, 0u64);
    if ckpt.is_file() {
        let (s, extra) = opt.load(&ckpt)?;
        step = s.min(p.steps);
        tail_sum = extra.get("tail_sum").copied().unwrap_or(0.0);
        tail_n = extra.get("tail_n").copied().unwrap_or(0.0) as u64;
        ctx.progress
            .message(&format!("resuming evaluator training at step {step}"));
    }
    ctx.progress.start("train", p.steps);
    ctx.progress.set(step);
    'outer: while step < p.steps {
        let epoch = step / per_epoch;
        let skip = (step % per_epoch) as usize;
        for batch in loader.epoch(epoch).skip(skip) {
            if ctx.cancel.is_cancelled() {
                opt.save(
                    &ckpt,
                    step,
                    &[("tail_sum", tail_sum), ("tail_n", tail_n as f64)],
                )?;
                return Err(EvalError::Cancelled);
            }
            let batch = batch?;
            let target = labels.labels_of(&batch)?;
            let photo = batch
                .target
                .as_ref()
                .expect("labeled pairs always carry targets");
            let out = net.forward(photo)?;
            let valid = target.ne(IGNORE).sum(Kind::Float).clamp_min(1.0);
            let loss =
                out.logits
                    .cross_entropy_loss(&target, None::<Tensor>, Reduction::Sum, IGNORE, 0.0)
                    / valid;
            let lv = loss.double_value(&[]);
            if !lv.is_finite() {
                return Err(EvalError::Check(format!(
                    "evaluator loss is not finite at step {step} ({lv}); lower `lr`"
                )));
            }
            opt.backward_step(&loss);
            if step >= tail_from {
                tail_sum += lv;
                tail_n += 1;
            }
            step += 1;
            ctx.progress.set(step);
            if p.checkpoint_every > 0 && step.is_multiple_of(p.checkpoint_every) && step < p.steps {
                opt.save(
                    &ckpt,
                    step,
                    &[("tail_sum", tail_sum), ("tail_n", tail_n as f64)],
                )?;
            }
            if step >= p.steps {
                break 'outer;
            }
        }
    }
    // The loss tail is checkpointed with the weights, so a resumed run reports the same.
    let final_loss = tail_sum / tail_n.max(1) as f64;

    let dir = ctx.out_dir.join(EVALUATOR_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| EvalError::io(&dir, e))?;
    let wpath = dir.join(WEIGHTS_FILE);
    vs.freeze();
    vs.save(&wpath)
        .map_err(|e| EvalError::torch(format!("writing {}", wpath.display()), e))?;
    let training = TrainingRecord {
        steps: p.steps,
        batch_size: p.batch_size,
        lr: p.lr,
        seed: p.seed,
        n_images: loader.len(),
        data_digest: labeled_data_digest(&manifest),
        label_ratio: manifest.label_ratio,
        final_loss,
    };
    let mut eval = Evaluator::from_parts(
        vs,
        net,
        EvaluatorMeta::new(arch, labels, training, None),
        &wpath,
    )?;
    ctx.progress
        .message("measuring the evaluator on the real test photos");
    let report = test_miou(&eval, &manifest, split_dir, p.batch_size)?;
    eval.meta.test = Some(TestRecord {
        miou: report.value,
        pixel_accuracy: report.pixel_accuracy,
        per_class_iou: report.per_class.clone(),
        n_images: report.num_images,
    });
    write_json(&dir.join(META_FILE), &eval.meta)?;
    let mut metrics = serde_json::Map::new();
    metrics.insert(
        "evaluator_test_miou".into(),
        finite("evaluator_test_miou", report.value)?.into(),
    );
    metrics.insert(
        "evaluator_test_pixel_accuracy".into(),
        finite("evaluator_test_pixel_accuracy", report.pixel_accuracy)?.into(),
    );
    metrics.insert(
        "evaluator_final_loss".into(),
        finite("evaluator_final_loss", final_loss)?.into(),
    );
    metrics.insert("train_images".into(), (loader.len() as u64).into());
    metrics.insert("test_images".into(), (report.num_images as u64).into());
    write_json(&ctx.out_dir.join("metrics.json"), &metrics)?;
    let _ = std::fs::remove_file(&ckpt);
    Ok(())
}
