//! The `evaluator` stage kind: trains the segmentation evaluator of a synthetic task on the
//! split's real labeled photos (never on generated images), then measures its own mIoU on
//! the real test photos (the upper bound for any generator under this evaluator).

use tch::{Kind, Reduction, Tensor, nn};
use ugc_data::{Loader, LoaderConfig, SplitManifest, Subset};
use ugc_engine::{KindSchema, StageContext, StageError, StageKind};
use ugc_kinds::evaluator::Params;
use ugc_train::{
    Adam, AdamConfig, AdamUpdate, BatchStream, Dist, LogValue, LoopConfig, StepLog, TrainTask,
    checkpoint::store_state, run_loop,
};

use crate::error::{EvalError, Result};
use crate::evaluator::{
    EVALUATOR_DIR, Evaluator, EvaluatorMeta, META_FILE, TestRecord, TrainingRecord, WEIGHTS_FILE,
    labeled_data_digest, test_miou,
};
use crate::labels::{IGNORE, LabelSpec};
use crate::segnet::{SegNet, SegNetConfig};
use crate::util::{finite, tch_device, write_json};

/// Trains a segmentation evaluator (schema and parameters: `ugc_kinds::evaluator`).
pub struct EvaluatorStage {
    schema: KindSchema,
}

impl EvaluatorStage {
    pub fn new(schema: KindSchema) -> Self {
        EvaluatorStage { schema }
    }
}

impl StageKind for EvaluatorStage {
    fn schema(&self) -> &KindSchema {
        &self.schema
    }

    fn run(&self, ctx: &StageContext<'_>) -> std::result::Result<(), StageError> {
        let p: Params = ctx.typed_params()?;
        let split = ctx.require_input("split")?;
        train_evaluator(ctx, &p, &split.dir).map_err(StageError::from)
    }
}

/// One evaluator step: cross-entropy of the net's logits against the batch's label map,
/// averaged over the labelled (not ignored) pixels, and one Adam update.
///
/// With ranks, each holds a shard of the batch: the mean is over the *global* batch's
/// labelled pixels (one small all-reduce of the count), and a rank's share is its summed
/// cross-entropy over that count times the world size (the reducer divides by it), so the
/// averaged gradient is the global mean's.
struct EvaluatorTask<'a> {
    vs: &'a nn::VarStore,
    net: &'a SegNet,
    labels: &'a LabelSpec,
    opt: Adam,
    data: BatchStream,
    dist: Dist,
}

impl TrainTask for EvaluatorTask<'_> {
    type Error = EvalError;

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = store_state("net", self.vs);
        s.extend(self.opt.state("opt"));
        s
    }

    fn seek(&mut self, step: u64) -> Result<()> {
        Ok(self.data.seek(step)?)
    }

    fn step(&mut self, _step: u64) -> Result<StepLog> {
        let batch = self.data.next_batch()?;
        let target = self.labels.labels_of(&batch)?;
        let photo = batch.target.as_ref().ok_or_else(|| {
            EvalError::Input("a labeled pair without its photo reached the evaluator".into())
        })?;
        let out = self.net.forward(photo)?;
        let sum =
            out.logits
                .cross_entropy_loss(&target, None::<Tensor>, Reduction::Sum, IGNORE, 0.0);
        let loss = if self.dist.is_distributed() {
            let valid = target.ne(IGNORE).sum(Kind::Float);
            self.dist.all_reduce_sum(std::slice::from_ref(&valid))?;
            sum / valid.clamp_min(1.0) * self.dist.sum_scale()
        } else {
            let valid = target.ne(IGNORE).sum(Kind::Float).clamp_min(1.0);
            sum / valid
        };
        self.opt.backward_step(&loss)?;
        Ok(vec![("loss".into(), LogValue::of(&loss))])
    }
}

fn train_evaluator(ctx: &StageContext<'_>, p: &Params, split_dir: &std::path::Path) -> Result<()> {
    let manifest = SplitManifest::load(split_dir)?;
    let labels = LabelSpec::for_split(&manifest, p.foreground_threshold as u8)?;
    let device = tch_device(ctx.device);
    let dist = Dist::new(ctx.rank, device)?;
    if device == tch::Device::Cpu {
        // One thread by default (the same float sums on every machine); ranks on one CPU
        // split the budget between them.
        let threads = dist.rank_threads(p.torch_threads, tch::get_num_threads().max(1));
        if threads > 0 {
            tch::set_num_threads(threads);
        }
    }
    tch::manual_seed(p.seed as i64);
    let arch = SegNetConfig {
        width: p.width,
        num_classes: labels.num_classes() as i64,
    };
    let mut vs = nn::VarStore::new(device);
    let net = SegNet::new(&vs.root(), &arch)?;
    // The evaluator's Adam since its first release: beta1 0.9, the composed update.
    let mut opt = Adam::over(
        &vs,
        AdamConfig {
            lr: p.lr,
            beta1: 0.9,
            update: AdamUpdate::Composed,
            ..AdamConfig::default()
        },
    )?;
    opt.distribute(&dist)?;

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
    let n_images = loader.len();
    let loader = if dist.is_distributed() {
        loader.shard(dist.rank(), dist.world())?
    } else {
        loader
    };
    let mut task = EvaluatorTask {
        vs: &vs,
        net: &net,
        labels: &labels,
        opt,
        data: BatchStream::new(loader, "labeled")?,
        dist: dist.clone(),
    };
    let loop_cfg = LoopConfig {
        steps: p.steps,
        checkpoint_every: p.checkpoint_every,
        seed: p.seed,
        // The reported loss: the mean of the last tenth of the steps.
        tail: (p.steps / 10).max(1) as usize,
        dist: dist.clone(),
        ..LoopConfig::default()
    };
    let outcome = run_loop(ctx, &loop_cfg, &mut task)?;
    drop(task);
    if !dist.is_leader() {
        // Rank 0 writes the outputs; the others wait for it at the barrier.
        dist.barrier()?;
        return Ok(());
    }
    let final_loss = outcome
        .tail_of("loss")
        .ok_or_else(|| EvalError::Check("the training loop logged no loss".into()))?;

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
        n_images,
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
    metrics.insert("train_images".into(), (n_images as u64).into());
    metrics.insert("test_images".into(), (report.num_images as u64).into());
    write_json(&ctx.out_dir.join("metrics.json"), &metrics)?;
    // Rank 0's output is committed only once every rank has finished.
    dist.barrier()?;
    Ok(())
}
