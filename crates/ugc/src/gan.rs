//! The GAN training task shared by `supernet` (several sub-nets per step) and `train`
//! (one fixed architecture): one discriminator update and one generator update per step.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::VarStore;
use tch::{Kind, Tensor};
use ugc_nn::{Discriminator, Generator, Mode, SearchSpace, SubnetConfig};
use ugc_train::checkpoint::store_state;
use ugc_train::{Adam, BatchStream, Dist, LogValue, LrSchedule, StepLog, TrainTask, step_seed};

use crate::device::Accel;
use crate::error::MethodError;
use crate::losses::{self, DistillWeights};
use crate::perceptual::{DiscriminatorFeatures, FeatureNet, Vgg16};

/// Which sub-nets a step trains.
#[derive(Debug, Clone, PartialEq)]
pub enum SubnetSchedule {
    /// UGC's sandwich rule: largest, one uniformly random and the smallest sub-net.
    Sandwich,
    /// GAN Compression: one uniformly random sub-net.
    Random,
    /// A fixed architecture (conventional training): always this sub-net.
    Fixed(SubnetConfig),
}

/// Loss weights of a step.
#[derive(Debug, Clone, Copy)]
pub struct GanLossWeights {
    /// L1 to ground truth (pix2pix: 100).
    pub l1: f64,
    /// Multiplier of the OMGD distillation loss on unlabeled inputs.
    pub distill: f64,
    pub distill_terms: DistillWeights,
}

/// Generator + discriminator with their optimisers and data streams.
pub struct GanTask {
    pub vs_g: VarStore,
    pub gen_: Box<dyn Generator>,
    pub vs_d: VarStore,
    pub disc: Box<dyn Discriminator>,
    pub opt_g: Adam,
    pub opt_d: Adam,
    pub lr: LrSchedule,
    pub labeled: BatchStream,
    /// Unlabeled inputs, distilled from the largest sub-net's output (`None` = off).
    pub unlabeled: Option<BatchStream>,
    pub schedule: SubnetSchedule,
    pub weights: GanLossWeights,
    /// VGG16 perceptual features when configured; the discriminator's otherwise.
    pub vgg: Option<Vgg16>,
    pub seed: u64,
    /// GPU settings (autocast dtype, channels-last); all off on the CPU.
    pub accel: Accel,
    /// Fixed example (input, target) for sample images.
    pub sample: Option<(Tensor, Option<Tensor>)>,
    space: SearchSpace,
    /// The stage's data-parallel ranks ([`GanTask::distribute`]; none by default).
    dist: Dist,
}

/// The networks of a [`GanTask`] and their optimisers.
pub struct GanNets {
    pub vs_g: VarStore,
    pub gen_: Box<dyn Generator>,
    pub vs_d: VarStore,
    pub disc: Box<dyn Discriminator>,
    pub opt_g: Adam,
    pub opt_d: Adam,
    /// VGG16 perceptual features when configured; the discriminator's otherwise.
    pub vgg: Option<Vgg16>,
}

/// The data of a [`GanTask`].
pub struct GanData {
    pub labeled: BatchStream,
    /// Unlabeled inputs, distilled from the largest sub-net's output (`None` = off).
    pub unlabeled: Option<BatchStream>,
    /// Fixed example (input, target) for sample images.
    pub sample: Option<(Tensor, Option<Tensor>)>,
}

/// How a [`GanTask`] trains. The default is pix2pix's (lr 2e-4 constant, L1 x 100) under
/// UGC's sandwich rule, no distillation, seed 0, no GPU settings; stages set every field
/// from their parameters.
#[derive(Debug, Clone)]
pub struct GanConfig {
    pub lr: LrSchedule,
    pub schedule: SubnetSchedule,
    pub weights: GanLossWeights,
    pub seed: u64,
    /// GPU settings (autocast dtype, channels-last); all off on the CPU.
    pub accel: Accel,
}

impl Default for GanConfig {
    fn default() -> Self {
        GanConfig {
            lr: LrSchedule::constant(2e-4, 1),
            schedule: SubnetSchedule::Sandwich,
            weights: GanLossWeights {
                l1: 100.0,
                distill: 0.0,
                distill_terms: DistillWeights::default(),
            },
            seed: 0,
            accel: Accel::default(),
        }
    }
}

impl GanTask {
    /// Assembles a task; the search space comes from the generator (a fixed schedule's
    /// sub-net must lie in it).
    pub fn new(nets: GanNets, data: GanData, cfg: GanConfig) -> Result<Self, MethodError> {
        let GanNets {
            vs_g,
            gen_,
            vs_d,
            disc,
            opt_g,
            opt_d,
            vgg,
        } = nets;
        let GanData {
            labeled,
            unlabeled,
            sample,
        } = data;
        let GanConfig {
            lr,
            schedule,
            weights,
            seed,
            accel,
        } = cfg;
        let space = gen_.search_space();
        if let SubnetSchedule::Fixed(s) = &schedule {
            space.check(s)?;
        }
        Ok(GanTask {
            vs_g,
            gen_,
            vs_d,
            disc,
            opt_g,
            opt_d,
            lr,
            labeled,
            unlabeled,
            schedule,
            weights,
            vgg,
            seed,
            accel,
            sample,
            space,
            dist: Dist::none(),
        })
    }

    /// Trains as one rank of `dist` (no-op with one process): both optimisers average
    /// their gradients over the ranks, and every batch norm of the generator and the
    /// discriminator normalises training batches with global-batch statistics. The data
    /// streams must already be sharded for `dist` (their batches are this rank's rows).
    pub fn distribute(&mut self, dist: &Dist) -> Result<(), MethodError> {
        let Some(pg) = dist.group() else {
            return Ok(());
        };
        self.opt_g.distribute(dist)?;
        self.opt_d.distribute(dist)?;
        for bn in self
            .gen_
            .batch_norms()
            .into_iter()
            .chain(self.disc.batch_norms())
        {
            bn.sync_over(pg.clone());
        }
        self.dist = dist.clone();
        Ok(())
    }

    /// The sub-nets trained at `step`, with their log names; the first one's output also
    /// feeds the discriminator update.
    fn subnets(&self, step: u64) -> Vec<(&'static str, SubnetConfig)> {
        let mut rng = ChaCha8Rng::seed_from_u64(step_seed(self.seed, step, 1));
        match &self.schedule {
            SubnetSchedule::Sandwich => vec![
                ("largest", self.space.largest()),
                ("random", self.space.sample(&mut rng)),
                ("smallest", self.space.smallest()),
            ],
            SubnetSchedule::Random => vec![("random", self.space.sample(&mut rng))],
            SubnetSchedule::Fixed(s) => vec![("model", s.clone())],
        }
    }

    fn features(&self, cond: &Tensor, x: &Tensor) -> Vec<Tensor> {
        match &self.vgg {
            Some(v) => v.features(x),
            // With ranks, a batch-norm discriminator's features need the global batch's
            // statistics: `DiscriminatorFeatures` with `Mode::Features` instead of
            // `Calibrate { momentum: 0 }` (the same computation on one process).
            None if self.dist.is_distributed() => {
                let scales = self
                    .disc
                    .forward(&Tensor::cat(&[cond, x], 1), Mode::Features);
                scales
                    .into_iter()
                    .flat_map(|mut s| {
                        s.pop();
                        s
                    })
                    .collect()
            }
            None => DiscriminatorFeatures::new(self.disc.as_ref(), cond).features(x),
        }
    }
}

impl TrainTask for GanTask {
    type Error = MethodError;

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = store_state("g", &self.vs_g);
        out.extend(store_state("d", &self.vs_d));
        out.extend(self.opt_g.state("opt_g"));
        out.extend(self.opt_d.state("opt_d"));
        out
    }

    fn seek(&mut self, step: u64) -> Result<(), MethodError> {
        self.labeled.seek(step)?;
        if let Some(u) = &mut self.unlabeled {
            u.seek(step)?;
        }
        Ok(())
    }

    fn step(&mut self, step: u64) -> Result<StepLog, MethodError> {
        let lr = self.lr.at(step);
        let (batch, rows) = self.labeled.next_shard()?;
        // This rank's share of the labeled per-row means (1.0 with one process).
        let f_l = self.dist.scale(batch.input.size()[0] as usize, rows);
        let accel = self.accel;
        let x = accel.input(&batch.input)?;
        let y = batch
            .target
            .ok_or_else(|| MethodError::Numeric("a labeled batch came without targets".into()))?;
        let y = accel.input(&y)?;
        let subs = self.subnets(step);
        let mut log = Vec::new();

        // Discriminator: real pairs vs the first sub-net's output (the largest under the
        // sandwich rule: the strongest fake keeps D honest for every sub-net).
        let fake0 = accel.run(|| self.gen_.forward(&x, &subs[0].1, Mode::Train))?;
        self.vs_d.unfreeze();
        self.opt_d.zero_grad();
        let loss_d = accel.run(|| {
            let real = self.disc.forward(&Tensor::cat(&[&x, &y], 1), Mode::Train);
            let fake = self
                .disc
                .forward(&Tensor::cat(&[&x, &fake0.detach()], 1), Mode::Train);
            let lr_ = losses::over_scales(&real, losses::hinge_d_real);
            let lf = losses::over_scales(&fake, losses::hinge_d_fake);
            (lr_, lf)
        });
        let loss_d = (Dist::scaled(&loss_d.0, f_l), Dist::scaled(&loss_d.1, f_l));
        let d_total = (&loss_d.0 + &loss_d.1) * 0.5;
        self.opt_d.backward(&d_total)?;
        self.opt_d.step(lr)?;
        log.push(("d_real".to_string(), LogValue::of(&loss_d.0)));
        log.push(("d_fake".to_string(), LogValue::of(&loss_d.1)));
        // The generator's backward passes go through D but need no D weight gradients
        // (pix2pix's `set_requires_grad(netD, False)`); the next step unfreezes it.
        self.vs_d.freeze();

        // Teacher outputs on unlabeled inputs: the largest sub-net, no gradient.
        let distill_on = !matches!(self.schedule, SubnetSchedule::Fixed(_));
        let teacher = match (&mut self.unlabeled, distill_on) {
            (Some(stream), true) => {
                let (ub, rows) = stream.next_shard()?;
                let f_u = self.dist.scale(ub.input.size()[0] as usize, rows);
                let u = accel.input(&ub.input)?;
                let largest = self.space.largest();
                let t =
                    tch::no_grad(|| accel.run(|| self.gen_.forward(&u, &largest, Mode::Train)))?;
                let t = t.to_kind(Kind::Float);
                let ft: Vec<Tensor> = tch::no_grad(|| self.features(&u, &t))
                    .into_iter()
                    .map(|f| f.detach())
                    .collect();
                Some((u, t, ft, f_u))
            }
            _ => None,
        };

        // Generator: each sub-net's loss is back-propagated on its own (gradients
        // accumulate in the shared weights; peak memory stays at one sub-net's graph).
        self.opt_g.zero_grad();
        let last = subs.len() - 1;
        for (i, (name, sub)) in subs.iter().enumerate() {
            let fake = if i == 0 {
                fake0.shallow_clone()
            } else {
                accel.run(|| self.gen_.forward(&x, sub, Mode::Train))?
            };
            let gan = accel.run(|| {
                let p = self
                    .disc
                    .forward(&Tensor::cat(&[&x, &fake], 1), Mode::Train);
                losses::over_scales(&p, losses::hinge_g)
            });
            let gan = Dist::scaled(&gan, f_l);
            let l1 =
                Dist::scaled(&losses::l1(&fake.to_kind(Kind::Float), &y), f_l) * self.weights.l1;
            let mut total = &gan + &l1;
            log.push((format!("{name}_gan"), LogValue::of(&gan)));
            log.push((format!("{name}_l1"), LogValue::of(&l1)));
            if let Some((u, t, ft, f_u)) = &teacher
                && *name != "largest"
            {
                let s = accel
                    .run(|| self.gen_.forward(u, sub, Mode::Train))?
                    .to_kind(Kind::Float);
                let fs = self.features(u, &s);
                let terms = losses::distill_loss(&s, t, &fs, ft, &self.weights.distill_terms)?;
                let d = if self.dist.is_distributed() {
                    // SSIM, Gram and feature L1 are per-row means; TV sums over rows.
                    let means = &terms.ssim + &terms.style + &terms.feature;
                    Dist::scaled(&means, *f_u) + Dist::scaled(&terms.tv, self.dist.sum_scale())
                } else {
                    terms.total
                } * self.weights.distill;
                log.push((format!("{name}_distill"), LogValue::of(&d)));
                total += d;
            }
            if i == last {
                self.opt_g.backward(&total)?;
            } else {
                self.opt_g.accumulate(&total)?;
            }
        }
        self.opt_g.step(lr)?;
        log.push(("lr".to_string(), lr.into()));
        Ok(log)
    }

    fn sample(&mut self, step: u64, dir: &Path) -> Result<(), MethodError> {
        let Some((x, y)) = &self.sample else {
            return Ok(());
        };
        let subs: Vec<SubnetConfig> = match &self.schedule {
            SubnetSchedule::Fixed(s) => vec![s.clone()],
            _ => vec![self.space.largest(), self.space.smallest()],
        };
        // Batch statistics without touching running statistics or dropout.
        let mode = Mode::Calibrate { momentum: 0.0 };
        let mut row: Vec<Tensor> = Vec::new();
        if x.size()[1] == 3 {
            row.push(x.shallow_clone());
        }
        for s in &subs {
            row.push(tch::no_grad(|| self.gen_.forward(x, s, mode))?.to_kind(Kind::Float));
        }
        if let Some(y) = y {
            row.push(y.shallow_clone());
        }
        let grid = Tensor::cat(&row, 3);
        let path = dir.join(format!("step_{step:06}.png"));
        ugc_nn::infer::save_output(&grid, &path)?;
        Ok(())
    }
}
