//! The `supernet` stage: semi-supervised training of a weight-sharing generator (UGC stage
//! one). Each step trains the largest, one random and the smallest sub-net (sandwich rule;
//! `sandwich: false` trains one random sub-net as GAN Compression does): labeled pairs give
//! hinge GAN + L1 to ground truth, unlabeled inputs give OMGD's distillation loss from the
//! largest sub-net's (detached) output. See `docs/method.md`.

use std::path::Path;

use serde_json::{Map, Value};
use tch::nn::VarStore;
use ugc_data::Subset;
use ugc_engine::{KindSchema, StageContext, StageError, StageKind};
use ugc_kinds::common::Disc;
use ugc_nn::{ArchConfig, DiscArch, DiscConfig, build_discriminator, build_generator};
use ugc_train::{
    Adam, AdamConfig, BatchStream, Dist, LoopConfig, LoopOutcome, LrSchedule, run_loop, step_seed,
};

use crate::device::{Accel, tch_device};
use crate::error::MethodError;
use crate::gan::{GanConfig, GanData, GanLossWeights, GanNets, GanTask, SubnetSchedule};
use crate::perceptual::Vgg16;
use crate::setup::{self, DataParams, SplitData};

pub use ugc_kinds::common::CommonParams;
/// `supernet` parameters (`crates/kinds/src/supernet/`).
pub use ugc_kinds::supernet::Params as SupernetParams;

/// What the training code derives from [`CommonParams`] (a trait: the struct lives in
/// `ugc-kinds`, which knows nothing of loaders and discriminators).
pub(crate) trait CommonParamsExt {
    fn data(&self) -> DataParams;
    /// The discriminator config: `auto` follows the family (DESIGN §2).
    fn disc_config(&self, arch: &ArchConfig) -> DiscConfig;
}

impl CommonParamsExt for CommonParams {
    fn data(&self) -> DataParams {
        DataParams {
            batch_size: self.batch_size,
            image_size: self.image_size,
            crop: self.crop,
            flip: self.flip,
            threads: self.threads,
        }
    }

    fn disc_config(&self, arch: &ArchConfig) -> DiscConfig {
        let auto = setup::default_disc(arch, self.ndf);
        let nc = arch.input_nc + arch.output_nc;
        match self.disc {
            Disc::Auto => auto,
            Disc::Patchgan if auto.arch == DiscArch::Patchgan => auto,
            Disc::Patchgan => DiscConfig::patchgan(nc, self.ndf),
            Disc::Multiscale => DiscConfig::multiscale(nc, self.ndf),
        }
    }
}

/// Everything built for a GAN training run before the loop starts.
pub(crate) struct Built {
    pub task: GanTask,
    pub arch: ArchConfig,
    pub disc: DiscConfig,
    pub loop_cfg: LoopConfig,
    /// The stage's ranks (also in `loop_cfg`): rank 0 writes, all pass the final barrier.
    pub dist: Dist,
}

/// What differs between the GAN training kinds (`supernet`, `train`) beyond their common
/// parameters. The default: sandwich rule, labeled pairs only, pix2pix's L1 weight, the
/// discriminator's perceptual features, freshly initialised weights.
pub(crate) struct GanSetup<'a> {
    pub schedule: SubnetSchedule,
    /// Distil the largest sub-net into the others on the unlabeled inputs.
    pub unlabeled: bool,
    pub weights: GanLossWeights,
    /// VGG16 weights for perceptual features.
    pub vgg: Option<&'a Path>,
    /// Generator weights to start from.
    pub init: Option<&'a Path>,
}

impl Default for GanSetup<'_> {
    fn default() -> Self {
        GanSetup {
            schedule: SubnetSchedule::Sandwich,
            unlabeled: false,
            weights: GanConfig::default().weights,
            vgg: None,
            init: None,
        }
    }
}

/// Builds generator (of `arch`), discriminator, optimisers and data streams.
pub(crate) fn build_task(
    ctx: &StageContext<'_>,
    split: &SplitData,
    arch: &ArchConfig,
    common: &CommonParams,
    setup: GanSetup<'_>,
) -> Result<Built, MethodError> {
    let GanSetup {
        schedule,
        unlabeled,
        weights,
        vgg,
        init,
    } = setup;
    let device = tch_device(ctx.device)?;
    let dist = Dist::new(ctx.rank, device)?;
    // Ranks on one CPU split the stage's thread budget between them.
    let threads = if device == tch::Device::Cpu {
        dist.rank_threads(common.torch_threads, tch::get_num_threads().max(1))
    } else {
        common.torch_threads
    };
    if threads > 0 {
        // Tiny CPU nets on a busy machine run several times faster on one thread than with
        // libtorch's default (its workers spin while waiting for a core).
        tch::set_num_threads(threads);
    }
    let encoding = setup::encoding_for(arch, &split.manifest)?;
    let data = common.data();
    // Weights are initialised from the stage seed (not the per-step stream).
    tch::manual_seed(step_seed(common.seed, u64::MAX, 7) as i64);
    let mut vs_g = VarStore::new(device);
    let gen_ = build_generator(&vs_g.root(), arch)?;
    if let Some(file) = init {
        vs_g.load(file).map_err(|e| MethodError::Weights {
            path: file.to_path_buf(),
            reason: format!("cannot initialise the generator: {e}"),
        })?;
    }
    let disc_cfg = common.disc_config(arch);
    let vs_d = VarStore::new(device);
    let disc = build_discriminator(&vs_d.root(), &disc_cfg)?;
    let adam = AdamConfig {
        lr: common.lr,
        beta1: common.beta1,
        beta2: common.beta2,
        ..AdamConfig::default()
    };
    let accel = Accel::new(
        device,
        common.amp,
        common.amp_dtype.as_str(),
        common.channels_last,
    )?;
    accel.prepare(&vs_g)?;
    accel.prepare(&vs_d)?;
    let opt_g = Adam::over(&vs_g, adam)?;
    let opt_d = Adam::over(&vs_d, adam)?;
    let shard = |l: ugc_data::Loader| -> Result<ugc_data::Loader, MethodError> {
        if dist.is_distributed() {
            Ok(l.shard(dist.rank(), dist.world())?)
        } else {
            Ok(l)
        }
    };
    let labeled = BatchStream::new(
        shard(setup::train_loader(
            split,
            Subset::Labeled,
            &data,
            encoding,
            common.seed,
            device,
        )?)?,
        "labeled",
    )?;
    let unlabeled = if unlabeled && !split.manifest.unlabeled().is_empty() {
        // Keep a short last batch: a handful of unlabeled inputs (fewer than `batch_size`)
        // must still be used rather than refused.
        let mut cfg = setup::train_loader_config(&data, encoding, common.seed ^ 0x5555, device);
        cfg.drop_last = false;
        let loader = ugc_data::Loader::new(&split.manifest, &split.dir, Subset::Unlabeled, cfg)?;
        Some(BatchStream::new(shard(loader)?, "unlabeled")?)
    } else {
        None
    };
    let vgg = vgg.map(|p| Vgg16::load(p, device)).transpose()?;
    let sample = {
        let l = setup::eval_loader(split, Subset::Labeled, &data, encoding, 1, device)?;
        let mut ep = l.epoch(0);
        match ep.next() {
            Some(b) => {
                let b = b?;
                Some((b.input, b.target))
            }
            None => None,
        }
    };
    if let Some((x, _)) = &sample {
        let s = x.size();
        setup::check_disc_input(&disc_cfg, s[2], s[3])?;
    }
    let mut task = GanTask::new(
        GanNets {
            vs_g,
            gen_,
            vs_d,
            disc,
            opt_g,
            opt_d,
            vgg,
        },
        GanData {
            labeled,
            unlabeled,
            sample,
        },
        GanConfig {
            lr: LrSchedule {
                base: common.lr,
                steps: common.steps,
                decay_steps: common.lr_decay_steps,
            },
            schedule,
            weights,
            seed: common.seed,
            accel,
        },
    )?;
    task.distribute(&dist)?;
    let loop_cfg = LoopConfig {
        steps: common.steps,
        checkpoint_every: common.checkpoint_every,
        sample_every: common.sample_every,
        seed: common.seed,
        dist: dist.clone(),
        ..LoopConfig::default()
    };
    Ok(Built {
        task,
        arch: arch.clone(),
        disc: disc_cfg,
        loop_cfg,
        dist,
    })
}

/// Flat `metrics.json`: mean of each logged loss over the last steps, plus run figures
/// (nothing about resuming: a resumed run writes the same bytes as an uninterrupted one).
pub(crate) fn metrics(outcome: &LoopOutcome, extra: &[(&str, f64)]) -> Value {
    let mut m = Map::new();
    for (k, v) in &outcome.tail_mean {
        m.insert(format!("loss.{k}"), Value::from(*v));
    }
    for (k, v) in extra {
        m.insert((*k).to_string(), Value::from(*v));
    }
    Value::Object(m)
}

/// The `supernet` stage kind.
pub struct SupernetStage {
    schema: KindSchema,
}

impl SupernetStage {
    pub fn new(schema: KindSchema) -> Self {
        SupernetStage { schema }
    }

    fn run_inner(&self, ctx: &StageContext<'_>) -> Result<(), MethodError> {
        let p: SupernetParams = serde_json::from_value(ctx.params.clone())
            .map_err(|e| MethodError::param("params", ctx.node, e.to_string()))?;
        let split = setup::open_split(ctx)?;
        let arch = setup::arch_from_param("arch", &Value::Object(p.arch.clone()), &split.manifest)?;
        let schedule = if p.sandwich {
            SubnetSchedule::Sandwich
        } else {
            SubnetSchedule::Random
        };
        let weights = GanLossWeights {
            l1: p.common.lambda_l1,
            distill: p.lambda_distill,
            distill_terms: p.distill_weights,
        };
        let setup = GanSetup {
            schedule,
            unlabeled: p.unlabeled,
            weights,
            vgg: p.vgg_weights.as_deref(),
            ..GanSetup::default()
        };
        let mut built = build_task(ctx, &split, &arch, &p.common, setup)?;
        let outcome = run_loop(ctx, &built.loop_cfg, &mut built.task)?;
        built.task.accel.finish(&built.task.vs_g)?;
        built.task.accel.finish(&built.task.vs_d)?;
        if built.dist.is_leader() {
            Self::write(ctx, &p, &built, &outcome)?;
        }
        // Rank 0's output is committed only once every rank has finished.
        built.dist.barrier()?;
        Ok(())
    }

    /// The outputs (rank 0 only): weights, configs, metrics.
    fn write(
        ctx: &StageContext<'_>,
        p: &SupernetParams,
        built: &Built,
        outcome: &LoopOutcome,
    ) -> Result<(), MethodError> {
        let dir = ctx.out_dir.join("supernet");
        std::fs::create_dir_all(&dir).map_err(|e| MethodError::io(&dir, e))?;
        let gpath = dir.join("generator.safetensors");
        built
            .task
            .vs_g
            .save(&gpath)
            .map_err(|e| MethodError::torch(format!("writing {}", gpath.display()), e))?;
        setup::write_json(&dir.join("arch.json"), &built.arch)?;
        let dpath = dir.join("discriminator.safetensors");
        built
            .task
            .vs_d
            .save(&dpath)
            .map_err(|e| MethodError::torch(format!("writing {}", dpath.display()), e))?;
        setup::write_json(&dir.join("disc.json"), &built.disc)?;
        let chw = sample_chw(&built.task);
        let space = built.task.gen_.search_space();
        let mut extra = vec![("steps", p.common.steps as f64)];
        if let Some(chw) = chw {
            let big = built.task.gen_.cost(&space.largest(), chw)?;
            let small = built.task.gen_.cost(&space.smallest(), chw)?;
            extra.push(("macs_largest", big.macs as f64));
            extra.push(("params_largest", big.params as f64));
            extra.push(("macs_smallest", small.macs as f64));
            extra.push(("params_smallest", small.params as f64));
        }
        extra.push((
            "unlabeled_used",
            f64::from(u8::from(built.task.unlabeled.is_some())),
        ));
        setup::write_json(&ctx.out_dir.join("metrics.json"), &metrics(outcome, &extra))?;
        Ok(())
    }
}

/// `[C, H, W]` of the training inputs (from the sample batch), for MACs figures.
pub(crate) fn sample_chw(task: &GanTask) -> Option<[i64; 3]> {
    task.sample.as_ref().map(|(x, _)| {
        let s = x.size();
        [s[1], s[2], s[3]]
    })
}

impl StageKind for SupernetStage {
    fn schema(&self) -> &KindSchema {
        &self.schema
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        setup::guard_panics("supernet training", || self.run_inner(ctx)).map_err(StageError::from)
    }
}
