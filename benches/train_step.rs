//! Issue #7 item 1: training-step throughput (images/s) of the supernet step and the online
//! distillation step, built from the project's networks (`ugc-nn`) and training core
//! (`ugc-method`: losses, Adam, discriminator features).
//!
//!     cargo bench --bench train_step -- [--step supernet|distill] [--threads N] [--batch B]
//!         [--size S] [--ngf G] [--ndf D] [--warmup W] [--repeats R] [--steps-per-repeat K]
//!         [--device cpu|cuda] [--autocast off|bf16|fp16] [--channels-last true|false]
//!         [--freeze-d true|false] [--log-every N] [--out DIR]
//!
//! *gantask*: the project's real supernet step, `ugc_method::gan::GanTask::step` under the
//! sandwich rule (largest + random + smallest sub-net), fed by the pix2pix data loader
//! (1 decode thread) from a synthetic edges2photo split at `S x S`.
//! *supernet*: the same computation as *gantask* written out with the same library calls
//! but on fixed in-memory tensors (no loader): D update on (real, largest fake) with
//! `(real + fake) / 2`, then `hinge_g + 100 * L1` of each sub-net back-propagated on its own,
//! losses read to the host as the log does. This is the step the PyTorch twin mirrors.
//! *loader*: the *gantask* loader alone (images/s it supplies at the same size and batch).
//! *distill*: the computation of `ugc_method::distill::DistillTask::step` (private, so
//! rebuilt here from the same library calls) on a labeled batch without an unlabeled stream:
//! a wide and a deep teacher and the student all forward; one PatchGAN update on real vs all
//! their detached outputs; each teacher takes `hinge_g + 100 L1`; the student takes
//! `hinge_g + 100 L1 + sum over teachers of distill_loss` with the discriminator's features
//! (`DiscriminatorFeatures`) as the perceptual network. D is frozen during the generators'
//! backward passes in both steps, as there (`--freeze-d false` to measure the difference).
//!
//! *Data parallel* (issue 13 item 6): started as ranks with torchrun's variables (`RANK`,
//! `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`; `scripts/bench/ddp.sh` does it), the
//! *supernet* step runs as the product's data-parallel stages do: every rank takes its
//! rows of the global batch `--batch`, the optimisers average gradients through
//! `Adam::distribute` (bucketed all-reduce overlapped with the last backward of the step),
//! and with `--sync-bn true` the discriminator's batch norms use global-batch statistics.
//! Rank 0 prints the line; images/s counts the global batch.
//!
//! The random sub-nets are drawn from a seeded RNG and written to `--out/subnets.json` so
//! `scripts/bench/train_step.py` replays exactly the same sequence. Prints one JSON line
//! with the median (and min/max) images/s over R repeats of K steps after W warm-up steps.

use std::path::PathBuf;
use std::time::Instant;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use serde_json::json;
use tch::{Device, Kind, Tensor, nn::VarStore};
use ugc_data::{
    DatasetSpec, Direction, Format, Loader, LoaderConfig, SplitParams, Subset, SynthConfig,
    SynthTask, read_dataset, split_dataset, synth_with,
};
use ugc_engine::NullProgress;
use ugc_engine::rank::RankEnv;
use ugc_method::device::Accel;
use ugc_method::gan::{GanConfig, GanData, GanLossWeights, GanNets, GanTask, SubnetSchedule};
use ugc_method::losses::{
    DistillWeights, distill_loss, hinge_d_fake, hinge_d_real, hinge_g, l1, over_scales,
};
use ugc_method::perceptual::{DiscriminatorFeatures, FeatureNet};
use ugc_nn::{
    Arch, ArchConfig, DiscConfig, Discriminator, Generator, Mode, SubnetConfig,
    build_discriminator, build_generator,
};
use ugc_train::{Adam, AdamConfig, BatchStream, Dist, LrSchedule, TrainTask};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Clone)]
struct Args {
    step: String,
    threads: i32,
    batch: i64,
    size: i64,
    ngf: i64,
    ndf: i64,
    warmup: usize,
    repeats: usize,
    per_repeat: usize,
    device: Device,
    /// CUDA autocast dtype (`off`, `bf16`, `fp16`), as the stages' `amp` / `amp_dtype`.
    autocast: String,
    /// CUDA channels-last weights and inputs, as the stages' `channels_last`.
    channels_last: bool,
    /// Read logged losses every this many steps (1 = every step).
    log_every: usize,
    /// Freeze the discriminator during the generator backward passes, as `GanTask::step`
    /// and `DistillTask::step` do (pix2pix's `set_requires_grad(netD, False)`); `false`
    /// measures what that saves.
    freeze_d: bool,
    /// With ranks: synchronised batch norm in the discriminator (the product's default).
    sync_bn: bool,
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        step: "supernet".into(),
        threads: 2,
        batch: 4,
        size: 64,
        ngf: 16,
        ndf: 16,
        warmup: 2,
        repeats: 5,
        per_repeat: 3,
        device: Device::Cpu,
        autocast: "off".into(),
        channels_last: false,
        freeze_d: true,
        sync_bn: true,
        log_every: 1,
        out: PathBuf::from("target/bench/train_step"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bench" {
            continue;
        }
        let v = it
            .next()
            .ok_or_else(|| format!("flag `{flag}` needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("bad value `{v}` for `{flag}`: {e}");
        match flag.as_str() {
            "--step" => {
                if !["supernet", "gantask", "distill", "loader"].contains(&v.as_str()) {
                    return Err(bad(&"expected supernet, gantask, distill or loader"));
                }
                a.step = v.clone();
            }
            "--threads" => a.threads = v.parse().map_err(|e| bad(&e))?,
            "--batch" => a.batch = v.parse().map_err(|e| bad(&e))?,
            "--size" => a.size = v.parse().map_err(|e| bad(&e))?,
            "--ngf" => a.ngf = v.parse().map_err(|e| bad(&e))?,
            "--ndf" => a.ndf = v.parse().map_err(|e| bad(&e))?,
            "--warmup" => a.warmup = v.parse().map_err(|e| bad(&e))?,
            "--repeats" => a.repeats = v.parse().map_err(|e| bad(&e))?,
            "--steps-per-repeat" => a.per_repeat = v.parse().map_err(|e| bad(&e))?,
            "--out" => a.out = PathBuf::from(&v),
            "--autocast" => {
                if !["off", "bf16", "fp16"].contains(&v.as_str()) {
                    return Err(bad(&"expected off, bf16 or fp16"));
                }
                a.autocast = v.clone();
            }
            "--channels-last" => a.channels_last = v.parse().map_err(|e| bad(&e))?,
            "--freeze-d" => a.freeze_d = v.parse().map_err(|e| bad(&e))?,
            "--sync-bn" => a.sync_bn = v.parse().map_err(|e| bad(&e))?,
            "--log-every" => a.log_every = v.parse().map_err(|e| bad(&e))?,
            "--device" => {
                a.device = match v.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda(0),
                    _ => return Err(bad(&"expected cpu or cuda")),
                }
            }
            _ => return Err(format!("unknown flag `{flag}`")),
        }
    }
    if a.repeats == 0 || a.per_repeat == 0 {
        return Err("--repeats and --steps-per-repeat must be >= 1".into());
    }
    Ok(a)
}

/// Trainable variables of a store by name (buffers such as BN running statistics excluded).
fn trainable(vs: &VarStore) -> Vec<(String, Tensor)> {
    vs.variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect()
}

fn resnet(ngf: i64, n_blocks: i64) -> ArchConfig {
    ArchConfig {
        ngf,
        n_blocks,
        ..ArchConfig::new(Arch::Pix2PixResnet)
    }
}

/// One network with its store and optimiser.
struct Net<T: ?Sized> {
    vs: VarStore,
    net: Box<T>,
    opt: Adam,
}

fn generator(cfg: &ArchConfig, device: Device, accel: Accel) -> Res<Net<dyn Generator>> {
    let vs = VarStore::new(device);
    let net = build_generator(&vs.root(), cfg)?;
    accel.prepare(&vs)?;
    let opt = Adam::new(trainable(&vs), AdamConfig::default())?;
    Ok(Net { vs, net, opt })
}

fn discriminator(cfg: &DiscConfig, device: Device, accel: Accel) -> Res<Net<dyn Discriminator>> {
    let vs = VarStore::new(device);
    let net = build_discriminator(&vs.root(), cfg)?;
    accel.prepare(&vs)?;
    let opt = Adam::new(trainable(&vs), AdamConfig::default())?;
    Ok(Net { vs, net, opt })
}

/// Logged losses of the mirrored steps: read to the host every `every` steps in one
/// transfer (`--log-every`; 1 = every step, as a plain loop with `.item()`; the product's
/// training loop reads every 16).
struct LossLog {
    every: usize,
    steps: usize,
    pending: Vec<Tensor>,
}

impl LossLog {
    fn new(every: usize) -> Self {
        LossLog {
            every: every.max(1),
            steps: 0,
            pending: Vec::new(),
        }
    }

    fn push(&mut self, t: &Tensor) {
        self.pending.push(t.detach().reshape([1]));
    }

    fn end_step(&mut self) -> Res<()> {
        self.steps += 1;
        if !self.steps.is_multiple_of(self.every) || self.pending.is_empty() {
            return Ok(());
        }
        let all = Tensor::cat(&self.pending, 0)
            .to_kind(Kind::Double)
            .to_device(Device::Cpu);
        self.pending.clear();
        if Vec::<f64>::try_from(&all)?.iter().any(|v| !v.is_finite()) {
            return Err("non-finite loss".into());
        }
        Ok(())
    }
}

/// D update on real pairs and detached fakes: `(real + mean over fakes) / 2` (hinge), as
/// `DistillTask::step` does (and `GanTask::step` with one fake).
fn d_update(
    d: &mut Net<dyn Discriminator>,
    x: &Tensor,
    y: &Tensor,
    fakes: &[&Tensor],
) -> Res<Tensor> {
    d.opt.zero_grad();
    let real = over_scales(
        &d.net.forward(&Tensor::cat(&[x, y], 1), Mode::Train),
        hinge_d_real,
    );
    let mut fake = Tensor::zeros([], (Kind::Float, x.device()));
    for f in fakes {
        let out = d
            .net
            .forward(&Tensor::cat(&[x, &f.detach()], 1), Mode::Train);
        fake += over_scales(&out, hinge_d_fake);
    }
    let loss = (real + fake / fakes.len() as f64) * 0.5;
    loss.backward();
    d.opt.step(2e-4)?;
    Ok(loss)
}

/// `hinge_g + 100 * L1` of one generator output against the (frozen) discriminator.
fn g_loss(d: &Net<dyn Discriminator>, x: &Tensor, y: &Tensor, fake: &Tensor) -> Tensor {
    let out = d.net.forward(&Tensor::cat(&[x, fake], 1), Mode::Train);
    over_scales(&out, hinge_g) + l1(fake, y) * 100.0
}

struct Supernet {
    g: Net<dyn Generator>,
    d: Net<dyn Discriminator>,
    largest: SubnetConfig,
    smallest: SubnetConfig,
    random: Vec<SubnetConfig>,
    freeze_d: bool,
    log: LossLog,
    /// This rank's loss factor `n_r W / N` (1.0 with one process or equal shards).
    scale: f64,
}

impl Supernet {
    /// Mirrors `ugc_method::gan::GanTask::step` under the sandwich rule without a data
    /// loader: D on (real, largest fake) with `(real + fake) / 2`, then each sub-net's
    /// `hinge_g + 100 * L1` back-propagated on its own, losses read to the host for the log.
    fn step(&mut self, i: usize, x: &Tensor, y: &Tensor) -> Res<()> {
        let fake_l = self.g.net.forward(x, &self.largest, Mode::Train)?;
        self.d.opt.zero_grad();
        let real = over_scales(
            &self.d.net.forward(&Tensor::cat(&[x, y], 1), Mode::Train),
            hinge_d_real,
        );
        let fake = over_scales(
            &self
                .d
                .net
                .forward(&Tensor::cat(&[x, &fake_l.detach()], 1), Mode::Train),
            hinge_d_fake,
        );
        let d_loss = (&real + &fake) * 0.5;
        self.d.opt.backward(&Dist::scaled(&d_loss, self.scale))?;
        self.d.opt.step(2e-4)?;
        self.log.push(&real);
        self.log.push(&fake);
        if self.freeze_d {
            self.d.vs.freeze();
        }
        self.g.opt.zero_grad();
        let random = &self.random[i % self.random.len()];
        for (k, sub) in [&self.largest, random, &self.smallest]
            .into_iter()
            .enumerate()
        {
            let out = if k == 0 {
                fake_l.shallow_clone()
            } else {
                self.g.net.forward(x, sub, Mode::Train)?
            };
            let p = self.d.net.forward(&Tensor::cat(&[x, &out], 1), Mode::Train);
            let gan = over_scales(&p, hinge_g);
            let rec = l1(&out, y) * 100.0;
            self.log.push(&gan);
            self.log.push(&rec);
            let loss = Dist::scaled(&(gan + rec), self.scale);
            // The last sub-net's backward is the step's last: the reducer overlaps it.
            if k < 2 {
                self.g.opt.accumulate(&loss)?;
            } else {
                self.g.opt.backward(&loss)?;
            }
        }
        self.g.opt.step(2e-4)?;
        if self.freeze_d {
            self.d.vs.unfreeze();
        }
        self.log.end_step()
    }
}

struct Distill {
    teachers: Vec<Net<dyn Generator>>,
    student: Net<dyn Generator>,
    d: Net<dyn Discriminator>,
    weights: DistillWeights,
    freeze_d: bool,
    log: LossLog,
}

impl Distill {
    /// Mirrors `ugc_method::distill::DistillTask::step` on a labeled batch (no unlabeled
    /// stream, so no ADF): D on real vs every teacher's and the student's detached output,
    /// each teacher's `hinge_g + 100 L1`, then the student's `hinge_g + 100 L1 + sum over
    /// teachers of distill_loss` with the discriminator's features; D frozen after its
    /// update, as there.
    fn step(&mut self, x: &Tensor, y: &Tensor) -> Res<()> {
        let mut outs = Vec::new();
        for t in &self.teachers {
            let full = t.net.search_space().largest();
            outs.push(t.net.forward(x, &full, Mode::Train)?);
        }
        let s_full = self.student.net.search_space().largest();
        let s = self.student.net.forward(x, &s_full, Mode::Train)?;
        let mut fakes: Vec<&Tensor> = outs.iter().collect();
        fakes.push(&s);
        self.d.vs.unfreeze();
        let d_loss = d_update(&mut self.d, x, y, &fakes)?;
        self.log.push(&d_loss);
        if self.freeze_d {
            self.d.vs.freeze();
        }
        for (t, out) in self.teachers.iter_mut().zip(&outs) {
            t.opt.zero_grad();
            let rec = l1(out, y);
            g_loss(&self.d, x, y, out).backward();
            t.opt.step(2e-4)?;
            self.log.push(&rec);
        }
        self.student.opt.zero_grad();
        let feats = DiscriminatorFeatures::new(self.d.net.as_ref(), x);
        let fs = feats.features(&s);
        let mut kd = Tensor::zeros([], (Kind::Float, x.device()));
        for out in &outs {
            let t = out.detach();
            let ft: Vec<Tensor> = tch::no_grad(|| feats.features(&t))
                .into_iter()
                .map(|f| f.detach())
                .collect();
            kd += distill_loss(&s, &t, &fs, &ft, &self.weights)?.total;
        }
        let gan = over_scales(
            &self.d.net.forward(&Tensor::cat(&[x, &s], 1), Mode::Train),
            hinge_g,
        );
        let rec = l1(&s, y);
        (&gan + &rec * 100.0 + &kd).backward();
        self.student.opt.step(2e-4)?;
        for t in [&gan, &rec, &kd] {
            self.log.push(t);
        }
        self.log.end_step()
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The pix2pix training loader (1 decode thread, random flip) over a synthetic edges2photo
/// split of 64 pairs at `size`, every target kept; the directory must outlive the loader.
fn synthetic_loader(batch: usize, size: i64, dev: Device) -> Res<(tempfile::TempDir, Loader)> {
    let data = tempfile::tempdir()?;
    let (src, split) = (data.path().join("src"), data.path().join("split"));
    let synth = SynthConfig {
        n_test: 1,
        ..SynthConfig::new(SynthTask::Edges2photo, 64, size as u32, 0)
    };
    synth_with(&synth, &src, 1)?;
    let spec = DatasetSpec {
        format: Format::Aligned,
        root: src,
        direction: Direction::AtoB,
        train_split: "train".into(),
        test_split: "val".into(),
        extra_unlabeled: None,
    };
    let params = SplitParams {
        label_ratio: 1.0,
        holdout: 0.0,
        seed: 0,
        skip_bad: false,
        threads: 1,
    };
    let m = split_dataset(&read_dataset(&spec)?, &params, &split, &NullProgress)?;
    let mut cfg = LoaderConfig::train(batch, 0);
    cfg.threads = 1;
    cfg.device = dev;
    let loader = Loader::new(&m, &split, Subset::Labeled, cfg)?;
    Ok((data, loader))
}

/// `--step loader`: images/s of the loader *gantask* uses, alone (item 4: what the loader
/// supplies against what the step consumes, same size and batch). One warm-up epoch, then
/// `repeats` timed epochs of 64 pairs.
fn loader_only(a: &Args) -> Res<()> {
    let (_data, loader) = synthetic_loader(a.batch as usize, a.size, a.device)?;
    for b in loader.epoch(0) {
        b?;
    }
    let mut ips = Vec::with_capacity(a.repeats);
    for r in 0..a.repeats {
        let t = Instant::now();
        let mut n = 0i64;
        for b in loader.epoch(r as u64 + 1) {
            n += b?.input.size()[0];
        }
        sync(a.device);
        ips.push(n as f64 / t.elapsed().as_secs_f64());
    }
    let med = median(&mut ips);
    println!(
        "{}",
        json!({
            "bench": "loader",
            "impl": "ugc-pipe",
            "images_per_s": med,
            "min": ips[0],
            "max": ips[ips.len() - 1],
            "repeats": a.repeats,
            "batch": a.batch,
            "size": a.size,
            "decode_threads": 1,
            "device": format!("{:?}", a.device),
        })
    );
    Ok(())
}

fn main() -> Res<()> {
    let a = parse_args()?;
    tch::set_num_threads(a.threads);
    tch::manual_seed(0);
    let dev = a.device;
    if let Device::Cuda(_) = dev {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let accel = Accel::new(
        dev,
        a.autocast != "off",
        if a.autocast == "fp16" { "fp16" } else { "bf16" },
        a.channels_last,
    )?;
    std::fs::create_dir_all(&a.out)?;
    let total_steps = a.warmup + a.repeats * a.per_repeat;
    let rank = RankEnv::from_process_env()?;
    let dist = Dist::new(rank.as_ref(), dev)?;
    if dist.is_distributed() && a.step != "supernet" {
        return Err(format!("--step {} has no data-parallel form; use supernet", a.step).into());
    }
    // Every rank draws the same global batch and keeps its rows.
    let (start, rows) = dist.shard(a.batch as usize);
    let rand = || {
        (Tensor::rand([a.batch, 3, a.size, a.size], (Kind::Float, dev)) * 2.0 - 1.0).narrow(
            0,
            start as i64,
            rows as i64,
        )
    };
    let (x, y) = (accel.input(&rand())?, accel.input(&rand())?);
    let disc_cfg = DiscConfig::patchgan(6, a.ndf);

    if a.step == "loader" {
        return loader_only(&a);
    }
    let mut run_step: Box<dyn FnMut(usize) -> Res<()>>;
    let setup;
    match a.step.as_str() {
        "supernet" => {
            let cfg = resnet(a.ngf, 9);
            let g = generator(&cfg, dev, accel)?;
            let space = g.net.search_space();
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let random: Vec<SubnetConfig> =
                (0..total_steps).map(|_| space.sample(&mut rng)).collect();
            let sub_json: Vec<_> = random
                .iter()
                .map(|s| json!({"widths": s.widths, "depth": s.depth}))
                .collect();
            std::fs::write(
                a.out.join("subnets.json"),
                serde_json::to_string(&json!({
                    "largest": {"widths": space.largest().widths, "depth": space.largest().depth},
                    "smallest": {"widths": space.smallest().widths, "depth": space.smallest().depth},
                    "random": sub_json,
                }))?,
            )?;
            setup = json!({"generator": "pix2pix-resnet supernet", "ngf": a.ngf, "n_blocks": 9,
                "disc": "patchgan", "ndf": a.ndf, "subnets_per_step": 3, "freeze_d": a.freeze_d,
                "world": dist.world(), "sync_bn": a.sync_bn && dist.is_distributed()});
            let mut g = g;
            let mut d = discriminator(&disc_cfg, dev, accel)?;
            g.opt.distribute(&dist)?;
            d.opt.distribute(&dist)?;
            if let (true, Some(pg)) = (a.sync_bn, dist.group()) {
                for bn in d.net.batch_norms() {
                    bn.sync_over(pg.clone());
                }
            }
            let mut st = Supernet {
                largest: space.largest(),
                smallest: space.smallest(),
                random,
                freeze_d: a.freeze_d,
                log: LossLog::new(a.log_every),
                scale: dist.scale(rows, a.batch as usize),
                g,
                d,
            };
            let (x, y) = (x.shallow_clone(), y.shallow_clone());
            run_step = Box::new(move |i| st.step(i, &x, &y));
        }
        "gantask" => {
            // The real supernet step, data loader included.
            let (data, loader) = synthetic_loader(a.batch as usize, a.size, dev)?;
            let labeled = BatchStream::new(loader, "labeled")?;
            let g = generator(&resnet(a.ngf, 9), dev, accel)?;
            let d = discriminator(&disc_cfg, dev, accel)?;
            let mut task = GanTask::new(
                GanNets {
                    vs_g: g.vs,
                    gen_: g.net,
                    vs_d: d.vs,
                    disc: d.net,
                    opt_g: g.opt,
                    opt_d: d.opt,
                    vgg: None,
                },
                GanData {
                    labeled,
                    unlabeled: None,
                    sample: None,
                },
                GanConfig {
                    lr: LrSchedule::constant(2e-4, total_steps as u64),
                    schedule: SubnetSchedule::Sandwich,
                    weights: GanLossWeights {
                        l1: 100.0,
                        distill: 1.0,
                        distill_terms: DistillWeights::default(),
                    },
                    seed: 0,
                    accel,
                },
            )?;
            task.seek(0)?;
            setup = json!({"generator": "pix2pix-resnet supernet", "ngf": a.ngf, "n_blocks": 9,
                "disc": "patchgan", "ndf": a.ndf, "subnets_per_step": 3,
                "step": "ugc_method::gan::GanTask::step (sandwich), loader: 1 thread"});
            run_step = Box::new(move |i| {
                let _keep = &data;
                task.step(i as u64)?;
                Ok(())
            });
        }
        _ => {
            // Wide teacher: the full width, fewer blocks; deep teacher: more blocks; the
            // student: half the width (OMGD's wide/deep pair around a narrow student).
            let wide = resnet(a.ngf, 6);
            let deep = resnet(a.ngf / 2, 12);
            let student = resnet(a.ngf / 2, 6);
            setup = json!({"teachers": [{"ngf": wide.ngf, "n_blocks": wide.n_blocks},
                {"ngf": deep.ngf, "n_blocks": deep.n_blocks}],
                "student": {"ngf": student.ngf, "n_blocks": student.n_blocks},
                "disc": "patchgan", "ndf": a.ndf, "perceptual": "discriminator features",
                "freeze_d": a.freeze_d});
            let mut st = Distill {
                teachers: vec![generator(&wide, dev, accel)?, generator(&deep, dev, accel)?],
                student: generator(&student, dev, accel)?,
                d: discriminator(&disc_cfg, dev, accel)?,
                weights: DistillWeights::default(),
                freeze_d: a.freeze_d,
                log: LossLog::new(a.log_every),
            };
            let (x, y) = (x.shallow_clone(), y.shallow_clone());
            run_step = Box::new(move |_| st.step(&x, &y));
        }
    }

    let mut run_step = move |i: usize| accel.run(|| run_step(i));
    for i in 0..a.warmup {
        run_step(i)?;
    }
    sync(dev);
    let mut ips = Vec::with_capacity(a.repeats);
    for r in 0..a.repeats {
        // Ranks start each timed repeat together.
        dist.barrier()?;
        let t = Instant::now();
        for k in 0..a.per_repeat {
            run_step(a.warmup + r * a.per_repeat + k)?;
        }
        sync(dev);
        ips.push((a.per_repeat as i64 * a.batch) as f64 / t.elapsed().as_secs_f64());
    }
    let med = median(&mut ips);
    if !dist.is_leader() {
        return Ok(());
    }
    println!(
        "{}",
        json!({
            "bench": "train_step",
            "impl": "ugc-pipe",
            "step": a.step,
            "images_per_s": med,
            "min": ips[0],
            "max": ips[ips.len() - 1],
            "repeats": a.repeats,
            "steps_per_repeat": a.per_repeat,
            "warmup": a.warmup,
            "batch": a.batch,
            "size": a.size,
            "threads": tch::get_num_threads(),
            "device": format!("{dev:?}"),
            "world": dist.world(),
            "autocast": format!("{:?}", accel.autocast),
            "channels_last": accel.channels_last,
            "log_every": a.log_every,
            "setup": setup,
        })
    );
    Ok(())
}
