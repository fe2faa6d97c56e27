//! The `train` stage: conventional supervised training of one fixed architecture on the
//! split's labeled pairs (baselines: the original model on 100% labels, or the student
//! architecture alone on X% labels). Unlabeled inputs are never used: their targets are
//! withheld by design, and the "100% labels" baseline is a split with `label_ratio: 1.0`.

use std::path::PathBuf;

use serde_json::Value;
use tch::Device;
use ugc_engine::{KindSchema, StageContext, StageError, StageKind};
use ugc_nn::export::{WEIGHTS_FILE, export_subnet, read_meta};
use ugc_nn::{ArchConfig, SubnetConfig, build_generator};

use crate::error::MethodError;
use crate::gan::{GanLossWeights, SubnetSchedule};
use crate::losses::DistillWeights;
use crate::setup;
use crate::supernet::{GanSetup, build_task, metrics, sample_chw};
use ugc_train::run_loop;

/// Where a `train` stage records how its architecture was chosen (see `TrainStage::origin`).
pub const ORIGIN_FILE: &str = "origin.json";

/// `train` parameters (`crates/kinds/src/train/`).
pub use ugc_kinds::train::Params as TrainParams;

/// The `train` stage kind.
pub struct TrainStage {
    schema: KindSchema,
}

impl TrainStage {
    pub fn new(schema: KindSchema) -> Self {
        TrainStage { schema }
    }

    /// The architecture to train and, with `init_weights`, the weights to start from.
    fn resolve_arch(
        ctx: &StageContext<'_>,
        p: &TrainParams,
        manifest: &ugc_data::SplitManifest,
    ) -> Result<(ArchConfig, Option<PathBuf>), MethodError> {
        if let Some(dep) = &p.from_dep {
            let input = ctx.inputs.iter().find(|i| &i.name == dep).ok_or_else(|| {
                MethodError::param("from_dep", dep, "is not among this stage's deps")
            })?;
            let dir = input.dir.join("model");
            let meta = read_meta(&dir)?;
            let init = p.init_weights.then(|| dir.join(WEIGHTS_FILE));
            return Ok((meta.arch, init));
        }
        let v = p.arch.as_ref().ok_or_else(|| {
            MethodError::param("arch", "null", "give `arch` (a map) or `from_dep`")
        })?;
        let full = setup::arch_from_param("arch", &Value::Object(v.clone()), manifest)?;
        let Some(cs) = &p.config else {
            return Ok((full, None));
        };
        let sub: SubnetConfig = cs
            .parse()
            .map_err(|e: ugc_nn::NnError| MethodError::param("config", cs, e.to_string()))?;
        // The compact config needs the supernet's structure only: build it on the CPU
        // without recording anything and keep the config.
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let g = tch::no_grad(|| build_generator(&vs.root(), &full))?;
        g.search_space()
            .check(&sub)
            .map_err(|e| MethodError::param("config", cs, e.to_string()))?;
        Ok((g.compact_config(&sub)?, None))
    }

    /// How the architecture was chosen (`origin.json`), so that a report can tell a
    /// searched sub-net trained on its own from the original model without guessing from
    /// its widths: `arch_from` is `arch` (the map as given), `config` (a sub-net of it) or
    /// `dep` (`from_dep`'s model); `subnet` says whether the architecture is a sub-net cut
    /// from a supernet (a `config`, a `search` or `distill` dep's model, or that of a
    /// `train` dep whose own origin says so).
    fn origin(ctx: &StageContext<'_>, p: &TrainParams) -> Result<Value, MethodError> {
        if let Some(dep) = &p.from_dep {
            let input = ctx.inputs.iter().find(|i| &i.name == dep).ok_or_else(|| {
                MethodError::param("from_dep", dep, "is not among this stage's deps")
            })?;
            let subnet = match input.kind.as_str() {
                "search" | "distill" => true,
                "train" => {
                    let path = input.dir.join(ORIGIN_FILE);
                    match std::fs::read_to_string(&path) {
                        Ok(text) => serde_json::from_str::<Value>(&text)
                            .map_err(|e| MethodError::Json { path, source: e })?
                            .get("subnet")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                        Err(e) => return Err(MethodError::io(&path, e)),
                    }
                }
                _ => false,
            };
            return Ok(serde_json::json!({
                "arch_from": "dep", "dep": dep, "dep_kind": input.kind, "subnet": subnet,
            }));
        }
        Ok(match &p.config {
            Some(cs) => serde_json::json!({"arch_from": "config", "config": cs, "subnet": true}),
            None => serde_json::json!({"arch_from": "arch", "subnet": false}),
        })
    }

    fn run_inner(&self, ctx: &StageContext<'_>) -> Result<(), MethodError> {
        let p: TrainParams = serde_json::from_value(ctx.params.clone())
            .map_err(|e| MethodError::param("params", ctx.node, e.to_string()))?;
        let split = setup::open_split(ctx)?;
        let (arch, init) = Self::resolve_arch(ctx, &p, &split.manifest)?;
        let origin = Self::origin(ctx, &p)?;
        let largest = ugc_nn::search_space(&arch)?.largest();
        let weights = GanLossWeights {
            l1: p.common.lambda_l1,
            distill: 0.0,
            distill_terms: DistillWeights::default(),
        };
        let setup = GanSetup {
            schedule: SubnetSchedule::Fixed(largest.clone()),
            weights,
            init: init.as_deref(),
            ..GanSetup::default()
        };
        let mut built = build_task(ctx, &split, &arch, &p.common, setup)?;
        let outcome = run_loop(ctx, &built.loop_cfg, &mut built.task)?;
        built.task.accel.finish(&built.task.vs_g)?;
        if !built.dist.is_leader() {
            // Rank 0 writes the outputs; the others wait for it at the barrier.
            built.dist.barrier()?;
            return Ok(());
        }
        let meta = export_subnet(
            built.task.gen_.as_ref(),
            &largest,
            &ctx.out_dir.join("model"),
        )?;
        let mut extra = vec![
            ("steps", p.common.steps as f64),
            ("params", meta.params as f64),
        ];
        if let Some(chw) = sample_chw(&built.task) {
            let c = built.task.gen_.cost(&largest, chw)?;
            extra.push(("macs", c.macs as f64));
        }
        extra.push(("labeled", split.manifest.labeled().len() as f64));
        setup::write_json(
            &ctx.out_dir.join("metrics.json"),
            &metrics(&outcome, &extra),
        )?;
        setup::write_json(&ctx.out_dir.join(ORIGIN_FILE), &origin)?;
        // Rank 0's output is committed only once every rank has finished.
        built.dist.barrier()?;
        Ok(())
    }
}

impl StageKind for TrainStage {
    fn schema(&self) -> &KindSchema {
        &self.schema
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        setup::guard_panics("training", || self.run_inner(ctx)).map_err(StageError::from)
    }
}
