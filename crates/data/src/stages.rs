//! The `synth` and `split` stage kinds; their schemas and typed parameters are in
//! `ugc-kinds` (`crates/kinds/src/{synth,split}/`).

use ugc_engine::{KindSchema, StageContext, StageError, StageKind};
use ugc_kinds::split::Dataset;

use crate::dataset::{DatasetInfo, DatasetSpec, read_dataset};
use crate::error::DataError;
use crate::split::{SplitParams, split_dataset};
use crate::synth::{SynthConfig, synth_bad_with};
use crate::validate::default_threads;

fn write_json(ctx: &StageContext<'_>, name: &str, v: &serde_json::Value) -> Result<(), StageError> {
    let p = ctx.out_dir.join(name);
    let text = serde_json::to_string_pretty(v).expect("json value serializes");
    std::fs::write(&p, text).map_err(|e| StageError::io(p.display().to_string(), e))
}

/// Generates a built-in synthetic dataset into the stage output.
pub struct SynthStage {
    schema: KindSchema,
}

impl SynthStage {
    pub fn new(schema: KindSchema) -> Self {
        SynthStage { schema }
    }
}

impl StageKind for SynthStage {
    fn schema(&self) -> &KindSchema {
        &self.schema
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let p: ugc_kinds::synth::Params = ctx.typed_params()?;
        let cfg = SynthConfig {
            task: p.task,
            n: p.n,
            n_test: p.n_test,
            size: p.size,
            seed: p.seed,
            classes: p.classes,
        };
        ctx.progress.start("synth", (cfg.n + cfg.n_test) as u64);
        let bad = p.bad_unlabeled();
        let report = synth_bad_with(&cfg, bad.as_ref(), ctx.out_dir, default_threads())?;
        ctx.progress.set((cfg.n + cfg.n_test) as u64);
        // Timing goes to the log only: outputs must be identical for identical inputs.
        ctx.progress.message(&format!(
            "{}: {} images in {:.2}s ({:.0} images/s)",
            report.task,
            report.n_train + report.n_test,
            report.seconds,
            report.images_per_sec
        ));
        Ok(())
    }
}

/// Splits a dataset into labeled / unlabeled / hold-out / test and materialises it.
pub struct SplitStage {
    schema: KindSchema,
}

impl SplitStage {
    pub fn new(schema: KindSchema) -> Self {
        SplitStage { schema }
    }
}

/// The dataset `d` names, with what it leaves out taken from the root's `dataset.json` or
/// a `synth` dep (the root must exist: it is data on disk).
fn resolve_dataset(ctx: &StageContext<'_>, d: Dataset) -> Result<DatasetSpec, StageError> {
    let root = match (d.root, ctx.input_of_kind("synth")) {
        (Some(r), _) => r,
        (None, Some(s)) => s.dir.clone(),
        (None, None) => {
            return Err(StageError::Config(format!(
                "stage `{}`: parameter `dataset.root` is not set and no `synth` stage is among its deps",
                ctx.node
            )));
        }
    };
    if !root.is_dir() {
        return Err(DataError::MissingRoot {
            param: "dataset.root".into(),
            path: root,
        }
        .into());
    }
    let info = DatasetInfo::load(&root)?;
    let format = match (d.format, &info) {
        (Some(f), _) => f,
        (None, Some(i)) => i.format,
        (None, None) => {
            return Err(DataError::param(
                "dataset.format",
                format!(
                    "not set and {} has no dataset.json to say (aligned | cityscapes)",
                    root.display()
                ),
            )
            .into());
        }
    };
    Ok(DatasetSpec {
        format,
        direction: d
            .direction
            .or(info.as_ref().map(|i| i.direction))
            .unwrap_or_default(),
        train_split: d.train_split.unwrap_or_else(|| "train".into()),
        test_split: d
            .test_split
            .or(info.and_then(|i| i.test_split))
            .unwrap_or_else(|| "val".into()),
        extra_unlabeled: d.extra_unlabeled,
        root,
    })
}

impl StageKind for SplitStage {
    fn schema(&self) -> &KindSchema {
        &self.schema
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let p: ugc_kinds::split::Params = ctx.typed_params()?;
        let params = SplitParams {
            label_ratio: p.label_ratio,
            holdout: p.holdout,
            seed: p.seed,
            skip_bad: p.skip_bad,
            threads: default_threads(),
        };
        let spec = resolve_dataset(ctx, p.dataset.unwrap_or_default())?;
        let index = read_dataset(&spec)?;
        if ctx.cancel.is_cancelled() {
            return Err(StageError::Cancelled);
        }
        let m = split_dataset(&index, &params, ctx.out_dir, ctx.progress)?;
        if !m.skipped.is_empty() {
            let list: Vec<String> = m.skipped.iter().map(|p| p.to_string()).collect();
            ctx.progress.message(&format!(
                "skipped {} bad file(s) (paths relative to `dataset.root` {}): {}",
                m.skipped.len(),
                index.root.display(),
                list.join("; ")
            ));
        }
        let c = &m.counts;
        write_json(
            ctx,
            "metrics.json",
            &serde_json::json!({
                "train_total": c.train_total,
                "labeled": c.labeled,
                "unlabeled": c.unlabeled,
                "extra_unlabeled": c.extra_unlabeled,
                "holdout": c.holdout,
                "test": c.test,
                "skipped": c.skipped,
            }),
        )
    }
}
