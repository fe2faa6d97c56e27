//! The `synth` and `split` stage kinds (schemas in `stages/synth.yaml`, `stages/split.yaml`).

use std::path::PathBuf;

use serde::Deserialize;
use ugc_engine::{KindSchema, StageContext, StageError, StageKind};

use crate::dataset::{DatasetInfo, DatasetSpec, Direction, Format, read_dataset};
use crate::error::DataError;
use crate::split::{SplitParams, split_dataset};
use crate::synth::{SynthConfig, SynthTask, synth_with};
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

#[derive(Debug, Deserialize)]
struct SynthParams {
    task: String,
    n: usize,
    n_test: usize,
    size: u32,
    seed: u64,
    classes: usize,
}

impl StageKind for SynthStage {
    fn schema(&self) -> &KindSchema {
        &self.schema
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let p: SynthParams = ctx.typed_params()?;
        let cfg = SynthConfig {
            task: p.task.parse::<SynthTask>()?,
            n: p.n,
            n_test: p.n_test,
            size: p.size,
            seed: p.seed,
            classes: p.classes,
        };
        ctx.progress.start("synth", (cfg.n + cfg.n_test) as u64);
        let report = synth_with(&cfg, ctx.out_dir, default_threads())?;
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetParams {
    #[serde(default)]
    format: Option<Format>,
    #[serde(default)]
    root: Option<PathBuf>,
    #[serde(default)]
    direction: Option<Direction>,
    #[serde(default)]
    train_split: Option<String>,
    #[serde(default)]
    test_split: Option<String>,
    #[serde(default)]
    extra_unlabeled: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct SplitStageParams {
    #[serde(default)]
    dataset: Option<serde_json::Value>,
    label_ratio: f64,
    holdout: f64,
    seed: u64,
    #[serde(default)]
    skip_bad: bool,
}

fn resolve_dataset(
    ctx: &StageContext<'_>,
    raw: Option<serde_json::Value>,
) -> Result<DatasetSpec, StageError> {
    let d: DatasetParams = match raw {
        None | Some(serde_json::Value::Null) => DatasetParams::default(),
        Some(v) => serde_json::from_value(v).map_err(|e| {
            StageError::Config(format!("stage `{}` parameter `dataset`: {e}", ctx.node))
        })?,
    };
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
        let p: SplitStageParams = ctx.typed_params()?;
        let params = SplitParams {
            label_ratio: p.label_ratio,
            holdout: p.holdout,
            seed: p.seed,
            skip_bad: p.skip_bad,
            threads: default_threads(),
        };
        params.check()?;
        let spec = resolve_dataset(ctx, p.dataset)?;
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
