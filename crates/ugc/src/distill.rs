//! Stage two, part two: adaptive online semi-supervised distillation (`distill`).
//!
//! Every step (one batch of labeled pairs, one batch of unlabeled inputs):
//! 1. the teachers and the student run on the labeled inputs;
//! 2. the discriminator (initialised from the supernet's) takes a hinge step: real pairs
//!    against the fakes of every generator (teachers and student, averaged);
//! 3. each teacher takes a supervised step (hinge GAN + `lambda_l1` x L1 to the target):
//!    the teachers keep improving online, as in OMGD;
//! 4. the student takes a step on hinge GAN + `lambda_l1` x L1 on the labeled pairs plus
//!    OMGD's losses (SSIM, Gram and feature L1 on perceptual features, TV) against every
//!    teacher, on the labeled inputs and on the unlabeled inputs the ADF keeps.
//!
//! Every `adf_every` steps the ADF re-scores all unlabeled inputs with the current teachers
//! (and discriminator) using the `adf` stage's criterion and threshold rule. The kept set is
//! a tensor in the checkpoint, so a resumed run filters exactly as an uninterrupted one.
//!
//! One discriminator serves all generators (a design choice: three discriminators would
//! triple the cost of the most expensive network on the CPU budget, and the teachers and
//! the student solve the same task). Perceptual features: VGG16 from `vgg_weights` when
//! given, the discriminator's intermediate features otherwise.

use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Kind, Tensor, nn::VarStore};
use ugc_data::augment::AugmentConfig;
use ugc_data::{Batch, InputEncoding, Loader, LoaderConfig, SplitManifest, Subset};
use ugc_engine::{KindSchema, StageContext, StageError, StageKind};
use ugc_nn::{Discriminator, Generator, Mode, SubnetConfig, build_generator};
use ugc_train::checkpoint::store_state;
use ugc_train::{
    Adam, AdamConfig, BatchStream, Dist, LogValue, LoopConfig, LoopOutcome, LrSchedule, StepLog,
    TrainTask, run_loop, trainable,
};

use crate::adf::{
    AdfDecision, Criterion, Decision, Teachers, ThresholdRule, adaptive_threshold, keep_decisions,
    load_discriminator, score_batch, write_decision,
};
use crate::device::Accel;
use crate::error::MethodError;
use crate::losses::{self, DistillWeights};
use crate::perceptual::{DiscriminatorFeatures, FeatureNet, Vgg16};
use crate::search::SearchConfigs;
use crate::setup::{EvalSpec, encoding_for, load_supernet, read_batches, write_json};

/// `distill` parameters (`crates/kinds/src/distill/`).
use ugc_kinds::distill::Params as DistillParams;

/// The `distill` stage kind (`stages/distill.yaml`).
pub struct DistillStage {
    schema: KindSchema,
}

impl DistillStage {
    pub fn new(schema: KindSchema) -> Self {
        DistillStage { schema }
    }
}

/// A compact generator whose weights are the slices of sub-net `sub` of `sup` ("NAS" init).
pub fn student_from_supernet(
    sup: &dyn Generator,
    sub: &SubnetConfig,
    device: Device,
) -> Result<(VarStore, Box<dyn Generator>), MethodError> {
    let cfg = sup.compact_config(sub)?;
    let vs = VarStore::new(device);
    let g = build_generator(&vs.root(), &cfg)?;
    let vars = vs.variables();
    let tensors = sup.extract(sub)?;
    if tensors.len() != vars.len() {
        return Err(MethodError::Numeric(format!(
            "student init: {} extracted tensors for {} compact variables",
            tensors.len(),
            vars.len()
        )));
    }
    tch::no_grad(|| -> Result<(), MethodError> {
        for (name, t) in tensors {
            let live = vars.get(&name).ok_or_else(|| {
                MethodError::Numeric(format!("student init: compact model lacks `{name}`"))
            })?;
            let mut live = live.shallow_clone();
            live.f_copy_(&t.to_device(device))
                .map_err(|e| MethodError::torch(format!("copying `{name}`"), e))?;
        }
        Ok(())
    })?;
    Ok((vs, g))
}

/// The online ADF: which unlabeled inputs are kept, and how to re-score them.
struct OnlineAdf {
    /// `None`: every input is kept and never re-scored (no adf dep, or ADF disabled).
    rule: Option<(Criterion, ThresholdRule)>,
    /// Unlabeled ids in manifest order and their index.
    ids: Vec<String>,
    index: HashMap<String, usize>,
    /// 1.0 = kept, per unlabeled id (a checkpointed tensor).
    mask: Tensor,
    /// The last re-scoring, checkpointed so that a run resumed after it still writes
    /// `adf_online/` as an uninterrupted run does: scores per unlabeled id (f64), the
    /// threshold (`[1, t]`, or `[0, 0]` for none) and whether a re-scoring happened
    /// (`[0 or 1]`).
    last_scores: Tensor,
    last_threshold: Tensor,
    rescored: Tensor,
}

impl OnlineAdf {
    fn new(rule: Option<(Criterion, ThresholdRule)>, ids: Vec<String>, mask: &[f32]) -> Self {
        let index = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        let n = ids.len() as i64;
        let f64s = (Kind::Double, Device::Cpu);
        OnlineAdf {
            rule,
            ids,
            index,
            mask: Tensor::from_slice(mask),
            last_scores: Tensor::full([n], f64::NAN, f64s),
            last_threshold: Tensor::zeros([2], f64s),
            rescored: Tensor::zeros([1], f64s),
        }
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        vec![
            ("adf.mask".into(), self.mask.shallow_clone()),
            ("adf.last_scores".into(), self.last_scores.shallow_clone()),
            (
                "adf.last_threshold".into(),
                self.last_threshold.shallow_clone(),
            ),
            ("adf.rescored".into(), self.rescored.shallow_clone()),
        ]
    }

    fn record(&mut self, scores: &[f64], threshold: Option<f64>) {
        tch::no_grad(|| {
            self.last_scores.copy_(&Tensor::from_slice(scores));
            let t = threshold.map_or([0.0, 0.0], |t| [1.0, t]);
            self.last_threshold.copy_(&Tensor::from_slice(&t));
            let _ = self.rescored.fill_(1.0);
        });
    }

    /// The last re-scoring, if there was one.
    fn last(&self) -> Result<Option<Rescoring>, MethodError> {
        if self.rescored.double_value(&[0]) == 0.0 {
            return Ok(None);
        }
        let scores = Vec::<f64>::try_from(&self.last_scores)
            .map_err(|e| MethodError::torch("reading the ADF scores", e))?;
        let t = (self.last_threshold.double_value(&[0]) != 0.0)
            .then(|| self.last_threshold.double_value(&[1]));
        Ok(Some(Rescoring {
            scores,
            threshold: t,
        }))
    }
}

/// Scores (manifest order) and threshold of an online re-scoring.
struct Rescoring {
    scores: Vec<f64>,
    threshold: Option<f64>,
}

struct DistillTask<'a> {
    device: Device,
    /// GPU settings (autocast dtype, channels-last); all off on the CPU.
    accel: Accel,
    student: Box<dyn Generator>,
    student_vs: VarStore,
    teachers: Teachers,
    disc: Box<dyn Discriminator>,
    disc_vs: VarStore,
    vgg: Option<Vgg16>,
    opt_s: Adam,
    opt_t: Vec<Adam>,
    opt_d: Adam,
    sched: LrSchedule,
    labeled: BatchStream,
    unlabeled: Option<BatchStream>,
    adf: OnlineAdf,
    /// Unlabeled inputs for re-scoring (fixed order, no augmentation).
    adf_loader: Option<Loader>,
    adf_every: u64,
    weights: DistillWeights,
    lambda_gan: f64,
    lambda_l1: f64,
    sample_input: Tensor,
    ctx_msg: &'a dyn ugc_engine::Progress,
    /// The stage's data-parallel ranks (none: one process).
    dist: Dist,
}

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[])
}

impl DistillTask<'_> {
    fn perceptual(&self, cond: &Tensor, x: &Tensor) -> Vec<Tensor> {
        match &self.vgg {
            Some(v) => v.features(x),
            // With ranks: the global batch's statistics in a batch-norm discriminator
            // (`Mode::Features`, otherwise `DiscriminatorFeatures`' computation).
            None if self.dist.is_distributed() => self
                .disc
                .forward(&Tensor::cat(&[cond, x], 1), Mode::Features)
                .into_iter()
                .flat_map(|mut s| {
                    s.pop();
                    s
                })
                .collect(),
            None => DiscriminatorFeatures::new(self.disc.as_ref(), cond).features(x),
        }
    }

    fn d_out(&self, cond: &Tensor, img: &Tensor) -> Vec<Vec<Tensor>> {
        self.disc
            .forward(&Tensor::cat(&[cond, img], 1), Mode::Train)
    }

    /// Student loss against every teacher output (teacher outputs are detached here). With
    /// ranks, this rank's share: the per-row mean terms (SSIM, Gram, feature L1) times
    /// `f_mean` ([`Dist::scale`]), the total variation (a sum over rows) times the world size.
    fn distill_terms(
        &self,
        cond: &Tensor,
        s: &Tensor,
        teachers: &[Tensor],
        f_mean: f64,
    ) -> Result<Tensor, MethodError> {
        let fs = self.perceptual(cond, s);
        let mut total = Tensor::zeros([], (Kind::Float, self.device));
        for t in teachers {
            let t = t.detach();
            let ft: Vec<Tensor> = tch::no_grad(|| self.perceptual(cond, &t))
                .into_iter()
                .map(|f| f.detach())
                .collect();
            let terms = losses::distill_loss(s, &t, &fs, &ft, &self.weights)?;
            total += if self.dist.is_distributed() {
                let means = &terms.ssim + &terms.style + &terms.feature;
                Dist::scaled(&means, f_mean) + Dist::scaled(&terms.tv, self.dist.sum_scale())
            } else {
                terms.total
            };
        }
        Ok(total)
    }

    /// Re-scores every unlabeled input with the current teachers and updates the mask. With
    /// ranks, rank 0 decides and broadcasts the decision (mask, scores, threshold): the
    /// scoring runs in `Mode::Eval`, without collectives, so the others just wait for it.
    fn rescore(&mut self) -> Result<(), MethodError> {
        if self.adf.rule.is_none() || self.adf_loader.is_none() {
            return Ok(());
        }
        if self.dist.is_leader() {
            self.rescore_here()?;
        }
        let state: Vec<Tensor> = self.adf.state().into_iter().map(|(_, t)| t).collect();
        self.dist.broadcast(&state, 0)?;
        Ok(())
    }

    fn rescore_here(&mut self) -> Result<(), MethodError> {
        let (Some((criterion, rule)), Some(loader)) = (self.adf.rule, &self.adf_loader) else {
            return Ok(());
        };
        let mut ids = Vec::new();
        let mut scores = Vec::new();
        for b in loader.epoch(0) {
            let b = b?;
            let outs = self.teachers.outputs(&b.input)?;
            let (s, _) = score_batch(criterion, &b.input, &outs, Some(self.disc.as_ref()))
                .map_err(MethodError::Numeric)?;
            ids.extend(b.ids);
            scores.extend(s);
        }
        let threshold = adaptive_threshold(&scores, rule);
        let keep = keep_decisions(&scores, threshold, true);
        let mut mask = vec![0f32; self.adf.ids.len()];
        for (id, k) in ids.iter().zip(&keep) {
            if let Some(&i) = self.adf.index.get(id) {
                mask[i] = if *k { 1.0 } else { 0.0 };
            }
        }
        tch::no_grad(|| {
            self.adf.mask.copy_(&Tensor::from_slice(&mask));
        });
        let kept = keep.iter().filter(|k| **k).count();
        self.ctx_msg.message(&format!(
            "ADF re-scored {} unlabeled inputs: kept {kept}",
            scores.len()
        ));
        // Scores are reported in manifest order.
        let mut ordered = vec![f64::NAN; self.adf.ids.len()];
        for (id, s) in ids.iter().zip(&scores) {
            if let Some(&i) = self.adf.index.get(id) {
                ordered[i] = *s;
            }
        }
        self.adf.record(&ordered, threshold);
        Ok(())
    }

    /// This rank's kept rows of an unlabeled (global) batch, the number of kept rows of the
    /// global batch and the share factor of per-row means over them; `None` when none is
    /// kept. Every rank holds the mask and the whole batch, so all know the kept count
    /// without communicating. Fewer kept rows than ranks: every rank takes all of them
    /// (factor 1; the average of identical gradients is that gradient).
    fn kept_rows(&self, b: &Batch) -> Result<Option<(Tensor, usize, f64)>, MethodError> {
        let mask: Vec<f32> = Vec::<f32>::try_from(&self.adf.mask)
            .map_err(|e| MethodError::torch("reading the ADF mask", e))?;
        let rows: Vec<i64> = b
            .ids
            .iter()
            .enumerate()
            .filter(|(_, id)| {
                self.adf
                    .index
                    .get(*id)
                    .is_some_and(|&i| mask.get(i).copied().unwrap_or(0.0) > 0.5)
            })
            .map(|(r, _)| r as i64)
            .collect();
        if rows.is_empty() {
            return Ok(None);
        }
        let idx = Tensor::from_slice(&rows).to_device(b.input.device());
        let kept = b.input.index_select(0, &idx);
        let k = rows.len();
        if !self.dist.is_distributed() {
            return Ok(Some((kept, k, 1.0)));
        }
        if k < self.dist.world() {
            return Ok(Some((kept, k, 1.0)));
        }
        let (start, n) = self.dist.shard(k);
        let f = self.dist.scale(n, k);
        Ok(Some((kept.narrow(0, start as i64, n as i64), k, f)))
    }
}

impl TrainTask for DistillTask<'_> {
    type Error = MethodError;

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut v = store_state("student", &self.student_vs);
        for (m, e) in self.teachers.models.iter().zip(&self.teachers.entries) {
            v.extend(store_state(&format!("teacher.{}", e.role.name()), &m.vs));
        }
        v.extend(store_state("disc", &self.disc_vs));
        v.extend(self.opt_s.state("opt.student"));
        for (o, e) in self.opt_t.iter().zip(&self.teachers.entries) {
            v.extend(o.state(&format!("opt.teacher.{}", e.role.name())));
        }
        v.extend(self.opt_d.state("opt.disc"));
        v.extend(self.adf.state());
        v
    }

    fn seek(&mut self, step: u64) -> Result<(), MethodError> {
        self.labeled.seek(step)?;
        if let Some(u) = &mut self.unlabeled {
            u.seek(step)?;
        }
        Ok(())
    }

    fn step(&mut self, step: u64) -> Result<StepLog, MethodError> {
        let accel = self.accel;
        accel.run(|| self.step_inner(step))
    }

    fn sample(&mut self, step: u64, dir: &Path) -> Result<(), MethodError> {
        self.sample_student(step, dir)
    }
}

impl DistillTask<'_> {
    fn step_inner(&mut self, step: u64) -> Result<StepLog, MethodError> {
        if self.adf_every > 0 && step > 0 && step.is_multiple_of(self.adf_every) {
            self.rescore()?;
        }
        let lr = self.sched.at(step);
        let (lb, rows) = self.labeled.next_shard()?;
        // This rank's share of the labeled per-row means (1.0 with one process).
        let f_l = self.dist.scale(lb.input.size()[0] as usize, rows);
        let x = self.accel.input(&lb.input)?;
        let y = lb
            .target
            .ok_or_else(|| MethodError::Numeric("labeled batch without targets".into()))?;
        let y = self.accel.input(&y)?;
        let t_out: Vec<Tensor> = self
            .teachers
            .models
            .iter()
            .map(|m| {
                let g = &m.generator;
                g.forward(&x, &g.search_space().largest(), Mode::Train)
            })
            .collect::<Result<_, _>>()?;
        let s_full = self.student.search_space().largest();
        let s_out = self.student.forward(&x, &s_full, Mode::Train)?;
        let mut log = Vec::new();

        // Discriminator: real pairs vs the (detached) fakes of every generator.
        self.disc_vs.unfreeze();
        self.opt_d.zero_grad();
        let real = losses::over_scales(&self.d_out(&x, &y), losses::hinge_d_real);
        let mut fake = Tensor::zeros([], (Kind::Float, self.device));
        for o in t_out.iter().chain(std::iter::once(&s_out)) {
            fake += losses::over_scales(&self.d_out(&x, &o.detach()), losses::hinge_d_fake);
        }
        let fake = fake / (t_out.len() + 1) as f64;
        let loss_d = Dist::scaled(&((&real + &fake) * 0.5), f_l);
        self.opt_d.backward(&loss_d)?;
        self.opt_d.step(lr)?;
        log.push(("d".to_string(), LogValue::of(&loss_d)));
        // The generators' backward passes go through D but need no D weight gradients
        // (pix2pix's `set_requires_grad(netD, False)`); the next step unfreezes it.
        self.disc_vs.freeze();

        // Teachers: supervised GAN + L1 on the labeled pairs.
        for (i, o) in t_out.iter().enumerate() {
            self.opt_t[i].zero_grad();
            let gan = Dist::scaled(
                &losses::over_scales(&self.d_out(&x, o), losses::hinge_g),
                f_l,
            );
            let l1 = Dist::scaled(&losses::l1(o, &y), f_l);
            let loss = &gan * self.lambda_gan + &l1 * self.lambda_l1;
            // Each teacher's step is its own: its only backward, so armed.
            self.opt_t[i].backward(&loss)?;
            self.opt_t[i].step(lr)?;
            let role = self.teachers.entries[i].role.name();
            log.push((format!("t_{role}_l1"), LogValue::of(&l1)));
        }

        // Student: GAN + L1 on labeled, OMGD losses against every teacher on labeled and
        // ADF-kept unlabeled inputs.
        self.opt_s.zero_grad();
        let gan = Dist::scaled(
            &losses::over_scales(&self.d_out(&x, &s_out), losses::hinge_g),
            f_l,
        );
        let l1 = Dist::scaled(&losses::l1(&s_out, &y), f_l);
        let kd = self.distill_terms(&x, &s_out, &t_out, f_l)?;
        let mut loss = &gan * self.lambda_gan + &l1 * self.lambda_l1 + &kd;
        let mut kd_u_val = LogValue::Host(0.0);
        let mut n_u = 0i64;
        if let Some(u) = &mut self.unlabeled {
            let ub = u.next_batch()?;
            if let Some((xu, k, f_u)) = self.kept_rows(&ub)? {
                let xu = self.accel.input(&xu)?;
                n_u = k as i64;
                let tu = self.teachers.outputs(&xu)?;
                let su = self.student.forward(&xu, &s_full, Mode::Train)?;
                let kd_u = self.distill_terms(&xu, &su, &tu, f_u)?;
                kd_u_val = LogValue::of(&kd_u);
                loss += kd_u;
            }
        }
        self.opt_s.backward(&loss)?;
        self.opt_s.step(lr)?;
        let kept = LogValue::of(&self.adf.mask.sum(Kind::Float));
        log.extend([
            ("s_gan".to_string(), LogValue::of(&gan)),
            ("s_l1".to_string(), LogValue::of(&l1)),
            ("s_kd".to_string(), LogValue::of(&kd)),
            ("s_kd_unlabeled".to_string(), kd_u_val),
            ("unlabeled_used".to_string(), (n_u as f64).into()),
            ("adf_kept".to_string(), kept),
        ]);
        Ok(log)
    }

    fn sample_student(&mut self, step: u64, dir: &Path) -> Result<(), MethodError> {
        let s_full = self.student.search_space().largest();
        let y = tch::no_grad(|| {
            self.student
                .forward(&self.sample_input, &s_full, Mode::Eval)
        })?;
        let path = dir.join(format!("student_{step:06}.png"));
        ugc_nn::infer::save_output(&y.narrow(0, 0, 1), &path)?;
        Ok(())
    }
}

fn adam(params: Vec<(String, Tensor)>, lr: f64, beta1: f64) -> Result<Adam, MethodError> {
    let cfg = AdamConfig {
        lr,
        beta1,
        ..AdamConfig::default()
    };
    Ok(Adam::new(params, cfg)?)
}

impl StageKind for DistillStage {
    fn schema(&self) -> &KindSchema {
        &self.schema
    }

    /// Build (models, data, optimisers), loop (the shared training core), write (outputs).
    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let p: DistillParams = ctx.typed_params()?;
        crate::setup::guard_panics("distillation", || {
            let mut built = build(ctx, &p)?;
            let outcome = run_loop(ctx, &built.loop_cfg, &mut built.task)?;
            let dist = built.task.dist.clone();
            if dist.is_leader() {
                write(ctx, &p, built, &outcome)?;
            }
            // Rank 0's output is committed only once every rank has finished.
            dist.barrier().map_err(MethodError::from)?;
            Ok::<(), StageError>(())
        })
    }
}

/// What [`build`] makes for the loop, and what [`write`] needs after it.
struct Built<'a> {
    task: DistillTask<'a>,
    loop_cfg: LoopConfig,
    manifest: SplitManifest,
    split_dir: std::path::PathBuf,
    configs: SearchConfigs,
    enc: InputEncoding,
    device: Device,
}

/// Loads the deps and builds the student, teachers, discriminator, data streams and
/// optimisers (in the order that fixes the random initialisation).
fn build<'a>(ctx: &StageContext<'a>, p: &DistillParams) -> Result<Built<'a>, StageError> {
    let device = crate::device::tch_device(ctx.device)?;
    let dist = Dist::new(ctx.rank, device).map_err(MethodError::from)?;
    // Ranks on one CPU split the stage's thread budget between them.
    let threads = if device == Device::Cpu {
        dist.rank_threads(p.torch_threads, tch::get_num_threads().max(1))
    } else {
        p.torch_threads
    };
    if threads > 0 {
        tch::set_num_threads(threads);
    }
    tch::manual_seed(p.seed as i64);
    let split_dir = ctx.require_input("split")?.dir.clone();
    let teachers_dir = ctx.require_input("teachers")?.dir.clone();
    let search_dir = ctx.require_input("search")?.dir.clone();
    let sup_dir = ctx.require_input("supernet")?.dir.clone();
    let adf_dir = ctx.input_of_kind("adf").map(|i| i.dir.clone());

    let manifest = SplitManifest::load(&split_dir).map_err(MethodError::data_at(format!(
        "split of stage `{}`",
        ctx.node
    )))?;
    let configs = SearchConfigs::load(&search_dir)?;
    let sup = load_supernet(&sup_dir, device)?;
    let sub: SubnetConfig = configs.student.config.parse().map_err(|e| {
        StageError::Data(format!(
            "{}: student config: {e}",
            search_dir.join("configs.json").display()
        ))
    })?;
    let (student_vs, student) = student_from_supernet(sup.generator.as_ref(), &sub, device)?;
    let arch = sup.arch.clone();
    drop(sup);
    let teachers = Teachers::load(&teachers_dir, device)?;
    let (disc_vs, disc) = load_discriminator(&sup_dir, device)?;
    let vgg = match &p.vgg_weights {
        Some(path) => Some(Vgg16::load(path, device)?),
        None => None,
    };
    let enc: InputEncoding = encoding_for(&arch, &manifest)?;
    let augment = AugmentConfig {
        load_size: p.image_size.map(|s| (s, s)),
        crop_size: p.crop.map(|s| (s, s)),
        random: true,
        flip: p.flip,
    };
    let train_cfg = |bs: usize, seed: u64| LoaderConfig {
        encoding: enc,
        device,
        threads: p.threads.max(1),
        augment,
        ..LoaderConfig::train(bs, seed)
    };
    let labeled = Loader::new(
        &manifest,
        &split_dir,
        Subset::Labeled,
        train_cfg(p.batch_size, p.seed),
    )
    .map_err(MethodError::data_at("labeled loader"))?;
    // Labeled batches are sharded by the loader; unlabeled ones are read whole and the
    // ADF-kept rows sharded in the step (the kept count must be the global batch's).
    let labeled = if dist.is_distributed() {
        labeled
            .shard(dist.rank(), dist.world())
            .map_err(MethodError::data_at("labeled loader"))?
    } else {
        labeled
    };
    let labeled = BatchStream::new(labeled, "labeled").map_err(MethodError::from)?;
    let n_unl = manifest.unlabeled().len();
    // The unlabeled stream keeps a short last batch, so a few unlabeled inputs (fewer
    // than `unlabeled_batch_size`) are still used.
    let unlabeled = if n_unl > 0 {
        let l = Loader::new(
            &manifest,
            &split_dir,
            Subset::Unlabeled,
            LoaderConfig {
                drop_last: false,
                ..train_cfg(p.unlabeled_batch_size, p.seed.wrapping_add(1))
            },
        )
        .map_err(MethodError::data_at("unlabeled loader"))?;
        Some(BatchStream::new(l, "unlabeled").map_err(MethodError::from)?)
    } else {
        None
    };

    // Initial ADF decision: the adf stage's kept set (everything without an adf dep).
    let ids: Vec<String> = manifest.unlabeled().iter().map(|u| u.id.clone()).collect();
    let (mask, rule) = match &adf_dir {
        None => (vec![1f32; ids.len()], None),
        Some(dir) => {
            let d = AdfDecision::load(dir)?;
            let kept = d.kept_set();
            let mask = ids
                .iter()
                .map(|i| {
                    if !d.enabled || kept.contains(i) {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            (mask, d.enabled.then_some((d.criterion, d.threshold_rule)))
        }
    };
    let adf_loader = if rule.is_some() && p.adf_every > 0 && n_unl > 0 {
        Some(
            Loader::new(
                &manifest,
                &split_dir,
                Subset::Unlabeled,
                LoaderConfig {
                    encoding: enc,
                    device,
                    threads: 1,
                    augment: AugmentConfig {
                        load_size: p.image_size.map(|s| (s, s)),
                        crop_size: None,
                        random: false,
                        flip: false,
                    },
                    ..LoaderConfig::eval(p.unlabeled_batch_size)
                },
            )
            .map_err(MethodError::data_at("unlabeled loader"))?,
        )
    } else {
        None
    };
    let sample_input = read_batches(
        &manifest,
        &split_dir,
        Subset::Labeled,
        1,
        1,
        &EvalSpec {
            encoding: enc,
            image_size: p.image_size,
            device,
        },
    )?
    .into_iter()
    .next()
    .map(|b| b.input)
    .ok_or_else(|| StageError::Config("the split has no labeled pairs".into()))?;

    let accel = Accel::new(device, p.amp, p.amp_dtype.as_str(), p.channels_last)?;
    for vs in std::iter::once(&student_vs)
        .chain(teachers.models.iter().map(|m| &m.vs))
        .chain(std::iter::once(&disc_vs))
    {
        accel.prepare(vs)?;
    }
    let mut opt_s = adam(trainable(&student_vs), p.lr, p.beta1)?;
    let mut opt_t = teachers
        .models
        .iter()
        .map(|m| adam(trainable(&m.vs), p.lr, p.beta1))
        .collect::<Result<Vec<_>, _>>()?;
    let mut opt_d = adam(trainable(&disc_vs), p.lr, p.beta1)?;
    for o in std::iter::once(&mut opt_s)
        .chain(opt_t.iter_mut())
        .chain(std::iter::once(&mut opt_d))
    {
        o.distribute(&dist).map_err(MethodError::from)?;
    }
    if let Some(pg) = dist.group() {
        let bns = student
            .batch_norms()
            .into_iter()
            .chain(
                teachers
                    .models
                    .iter()
                    .flat_map(|m| m.generator.batch_norms()),
            )
            .chain(disc.batch_norms());
        for bn in bns {
            bn.sync_over(pg.clone());
        }
    }
    let task = DistillTask {
        device,
        accel,
        student,
        student_vs,
        teachers,
        disc,
        disc_vs,
        vgg,
        opt_s,
        opt_t,
        opt_d,
        sched: LrSchedule {
            base: p.lr,
            steps: p.steps,
            decay_steps: p.lr_decay_steps,
        },
        labeled,
        unlabeled,
        adf: OnlineAdf::new(rule, ids, &mask),
        adf_loader,
        adf_every: p.adf_every,
        weights: p.distill_weights,
        lambda_gan: p.lambda_gan,
        lambda_l1: p.lambda_l1,
        sample_input,
        ctx_msg: ctx.progress,
        dist: dist.clone(),
    };
    let loop_cfg = LoopConfig {
        steps: p.steps,
        checkpoint_every: p.checkpoint_every,
        sample_every: p.sample_every,
        seed: p.seed,
        phase: "distill".into(),
        dist,
        ..LoopConfig::default()
    };
    Ok(Built {
        task,
        loop_cfg,
        manifest,
        split_dir,
        configs,
        enc,
        device,
    })
}

/// Writes the compact student, the final teachers, the last online ADF decision and
/// `metrics.json` (the loop already published `log.csv` and `samples/`).
fn write(
    ctx: &StageContext<'_>,
    p: &DistillParams,
    built: Built<'_>,
    outcome: &LoopOutcome,
) -> Result<(), StageError> {
    let Built {
        task,
        manifest,
        split_dir,
        configs,
        enc,
        device,
        ..
    } = built;
    for vs in std::iter::once(&task.student_vs)
        .chain(task.teachers.models.iter().map(|m| &m.vs))
        .chain(std::iter::once(&task.disc_vs))
    {
        task.accel.finish(vs)?;
    }

    // Outputs: the compact student, the final teachers, the last online ADF decision.
    let s_full = task.student.search_space().largest();
    let meta =
        ugc_nn::export::export_subnet(task.student.as_ref(), &s_full, &ctx.out_dir.join("model"))
            .map_err(MethodError::nn_at("exporting the student"))?;
    for (m, e) in task.teachers.models.iter().zip(&task.teachers.entries) {
        let g = &m.generator;
        ugc_nn::export::export_subnet(
            g.as_ref(),
            &g.search_space().largest(),
            &ctx.out_dir.join("teachers_final").join(e.role.name()),
        )
        .map_err(MethodError::nn_at(format!(
            "exporting the {} teacher",
            e.role.name()
        )))?;
    }
    if let (Some((criterion, rule)), Some(Rescoring { scores, threshold })) =
        (task.adf.rule, task.adf.last()?)
    {
        let dir = ctx.out_dir.join("adf_online");
        std::fs::create_dir_all(&dir).map_err(|e| MethodError::io(&dir, e))?;
        let keep: Vec<bool> = scores
            .iter()
            .map(|s| threshold.is_none_or(|t| *s >= t))
            .collect();
        write_decision(
            &dir,
            &Decision {
                ids: &task.adf.ids,
                scores: &scores,
                keep: &keep,
                enabled: true,
                criterion,
                rule,
                threshold,
            },
        )?;
    }
    // Hold-out L1 of the student (the search's scoring set; never the test split).
    let mut metrics = serde_json::Map::new();
    let holdout = read_batches(
        &manifest,
        &split_dir,
        Subset::Holdout,
        p.batch_size,
        usize::MAX,
        &EvalSpec {
            encoding: enc,
            image_size: p.image_size,
            device,
        },
    )?;
    if !holdout.is_empty() {
        let (mut sum, mut n) = (0.0, 0usize);
        for b in &holdout {
            if let Some(t) = &b.target {
                let y = tch::no_grad(|| task.student.forward(&b.input, &s_full, Mode::Eval))
                    .map_err(MethodError::nn_at("student on the hold-out"))?;
                sum += scalar(&(y - t).abs().mean(Kind::Double)) * b.ids.len() as f64;
                n += b.ids.len();
            }
        }
        metrics.insert("distill.holdout_l1".into(), (sum / n.max(1) as f64).into());
    }
    for (k, v) in &outcome.tail_mean {
        metrics.insert(format!("distill.{k}"), (*v).into());
    }
    metrics.insert("student.macs".into(), configs.student.macs.into());
    metrics.insert("student.params".into(), meta.params.into());
    metrics.insert(
        "distill.adf_kept_final".into(),
        scalar(&task.adf.mask.sum(Kind::Float)).into(),
    );
    Ok(write_json(
        &ctx.out_dir.join("metrics.json"),
        &serde_json::Value::Object(metrics),
    )?)
}
