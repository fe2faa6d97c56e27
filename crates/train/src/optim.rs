//! Adam over plain tensors, so that its whole state (moments and step count) is a list of
//! named tensors the checkpoint saves and restores exactly: tch's optimisers keep their
//! state inside libtorch where it cannot be serialised, and a resumed run would restart
//! from zero moments and train differently from an uninterrupted one.
//!
//! The update (no weight decay, no amsgrad), with `bc1 = 1 - b1^t`, `bc2 = 1 - b2^t`:
//! `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`, then [`AdamUpdate`] says how `p`
//! moves: libtorch's fused kernel (`torch.optim.Adam(fused=True)`) or the same formula
//! composed of separate tensor operations (which rounds differently).

use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::dist::Dist;
use crate::error::TrainError;

/// How the parameter update is computed. Both are Adam with bias correction; they differ
/// in rounding only, so each kind keeps the one its results were produced with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdamUpdate {
    /// `p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)` by libtorch's fused kernel
    /// (`ugc_torch_ext::fused_adam`): one kernel for all parameters, the method's kinds.
    #[default]
    Fused,
    /// `p -= (m / bc1) / (sqrt(v / bc2) + eps) * lr` as separate tensor operations: the
    /// `evaluator` kind's update, kept so its trained weights stay byte-identical.
    Composed,
}

/// Adam hyper-parameters; defaults are pix2pix's (`beta1 0.5`, `beta2 0.999`, lr 2e-4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub update: AdamUpdate,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 2e-4,
            beta1: 0.5,
            beta2: 0.999,
            eps: 1e-8,
            update: AdamUpdate::Fused,
        }
    }
}

impl AdamConfig {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), TrainError> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TrainError::param(
                "lr",
                self.lr,
                "must be a positive number",
            ));
        }
        for (n, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(TrainError::param(n, b, "must be in [0, 1)"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(TrainError::param("eps", self.eps, "must be positive"));
        }
        Ok(())
    }
}

/// Learning-rate schedule: constant, then (optionally) linear decay to zero over the last
/// `decay_steps` steps (pix2pix's `linear` policy expressed in steps instead of epochs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub base: f64,
    pub steps: u64,
    pub decay_steps: u64,
}

impl LrSchedule {
    /// A constant rate `base` over `steps` steps.
    pub fn constant(base: f64, steps: u64) -> Self {
        LrSchedule {
            base,
            steps,
            decay_steps: 0,
        }
    }

    /// The learning rate used for step `step` (0-based).
    pub fn at(&self, step: u64) -> f64 {
        let decay = self.decay_steps.min(self.steps);
        let start = self.steps - decay;
        if decay == 0 || step < start {
            return self.base;
        }
        // pix2pix: lr * (1 - (k + 1) / (n_decay + 1)) at decay step k.
        let k = (step - start) as f64;
        self.base * (1.0 - (k + 1.0) / (decay as f64 + 1.0))
    }
}

/// All trainable parameters of a var store by name (running statistics excluded), sorted.
pub fn trainable(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Steps between finiteness probes of the first parameter (1 = the first step, then
/// every 16th).
const FINITE_CHECK_EVERY: i64 = 16;

/// One Adam optimiser over a list of named parameters.
pub struct Adam {
    cfg: AdamConfig,
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Steps taken (int64 scalar on the CPU), a tensor so it checkpoints with the moments.
    t: Tensor,
    /// Averages the gradients over the ranks of a data-parallel stage (`None`: one process).
    reducer: Option<ugc_torch_ext::dist::GradReducer>,
}

impl Adam {
    /// An optimiser over `params` (e.g. [`trainable`] of a VarStore).
    pub fn new(mut params: Vec<(String, Tensor)>, cfg: AdamConfig) -> Result<Self, TrainError> {
        cfg.validate()?;
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |p: &Tensor| Tensor::zeros_like(p).set_requires_grad(false);
        let m = params.iter().map(|(_, p)| zeros(p)).collect();
        let v = params.iter().map(|(_, p)| zeros(p)).collect();
        Ok(Adam {
            cfg,
            params,
            m,
            v,
            t: Tensor::from(0i64),
            reducer: None,
        })
    }

    /// Averages this optimiser's gradients over the ranks of `dist` (no-op with one
    /// process): bucketed all-reduces launched during [`Adam::backward`], the sum divided
    /// by the world size (with losses scaled by [`Dist::scale`], the global-batch mean).
    pub fn distribute(&mut self, dist: &Dist) -> Result<(), TrainError> {
        let Some(pg) = dist.group() else {
            return Ok(());
        };
        let params: Vec<Tensor> = self.params.iter().map(|(_, p)| p.shallow_clone()).collect();
        let scale = 1.0 / dist.world() as f64;
        // DDP's bucket sizes (the reducer's defaults).
        let r = ugc_torch_ext::dist::GradReducer::new(pg, &params, scale)
            .map_err(|e| TrainError::torch("setting up the gradient all-reduce", e))?;
        self.reducer = Some(r);
        Ok(())
    }

    /// The step's last backward pass of `loss`: with ranks, arms the reducer first, so each
    /// bucket's all-reduce starts as soon as its gradients are complete.
    pub fn backward(&self, loss: &Tensor) -> Result<(), TrainError> {
        if let Some(r) = &self.reducer {
            r.arm();
        }
        loss.f_backward()
            .map_err(|e| TrainError::torch("the backward pass", e))
    }

    /// An earlier backward pass of the same step (e.g. the sandwich rule's first sub-nets):
    /// gradients accumulate locally; the step's [`Adam::backward`] reduces them all.
    pub fn accumulate(&self, loss: &Tensor) -> Result<(), TrainError> {
        loss.f_backward()
            .map_err(|e| TrainError::torch("the backward pass", e))
    }

    /// An optimiser over the trainable parameters of `vs`.
    pub fn over(vs: &VarStore, cfg: AdamConfig) -> Result<Self, TrainError> {
        Adam::new(trainable(vs), cfg)
    }

    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> i64 {
        self.t.int64_value(&[])
    }

    /// Drops the gradients of every parameter (`zero_grad(set_to_none=True)`): the next
    /// backward writes fresh gradients instead of zero-filling and accumulating.
    pub fn zero_grad(&mut self) {
        for (name, p) in &self.params {
            if let Err(e) = ugc_torch_ext::clear_grad(p) {
                // Cannot fail for a live tensor; fall back to zeroing in place if it ever does.
                tracing::warn!("clearing the gradient of `{name}`: {e}; zeroing it instead");
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.detach_();
                    let _ = g.zero_();
                }
            }
        }
    }

    /// `zero_grad`, [`Adam::backward`], then one update at the configured `lr`.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<(), TrainError> {
        self.zero_grad();
        self.backward(loss)?;
        self.step(self.cfg.lr)
    }

    /// One update with learning rate `lr`. A parameter without a gradient (e.g. in a block
    /// the step's sub-nets skipped) counts as gradient zero: its moments decay and it keeps
    /// moving with its momentum, exactly as `torch.optim.Adam` after
    /// `zero_grad(set_to_none=False)`. This makes the update independent of whether libtorch
    /// has allocated a gradient yet, which a resumed run (fresh gradients) relies on to
    /// match an uninterrupted one. Fails when the first parameter is found non-finite (probed
    /// on the first step and every `FINITE_CHECK_EVERY` steps after it).
    /// With ranks, the reducer's `finish` first: every rank updates from the same averaged
    /// gradients.
    pub fn step(&mut self, lr: f64) -> Result<(), TrainError> {
        if let Some(r) = &self.reducer {
            r.finish()
                .map_err(|e| TrainError::torch("the gradient all-reduce", e))?;
        }
        let t = self.steps_taken() + 1;
        let _ = self.t.fill_(t);
        let Some((first_name, first)) = self.params.first() else {
            return Ok(());
        };
        let grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|(_, p)| {
                let g = p.grad();
                if g.defined() { g } else { p.zeros_like() }
            })
            .collect();
        match self.cfg.update {
            AdamUpdate::Fused => {
                let params: Vec<Tensor> =
                    self.params.iter().map(|(_, p)| p.shallow_clone()).collect();
                // The step count as the fused kernel wants it: float32 on the parameters' device.
                let step = Tensor::from(t as f32).to_device(first.device());
                let hyper = ugc_torch_ext::AdamHyper {
                    lr,
                    beta1: self.cfg.beta1,
                    beta2: self.cfg.beta2,
                    eps: self.cfg.eps,
                };
                ugc_torch_ext::fused_adam(&params, &grads, &self.m, &self.v, &step, hyper)
                    .map_err(|e| TrainError::torch("Adam update", e))?;
            }
            AdamUpdate::Composed => self.composed_update(&grads, t, lr),
        }
        if t % FINITE_CHECK_EVERY == 1 {
            // A host read is a device synchronisation on a GPU, so not every step.
            let s = tch::no_grad(|| first.sum(Kind::Double).double_value(&[]));
            if !s.is_finite() {
                return Err(TrainError::Numeric(format!(
                    "parameter `{first_name}` became non-finite by optimiser step {t}"
                )));
            }
        }
        Ok(())
    }

    /// [`AdamUpdate::Composed`]: the operations, in the order, the evaluator has always used.
    fn composed_update(&self, grads: &[Tensor], t: i64, lr: f64) {
        let (b1, b2, eps) = (self.cfg.beta1, self.cfg.beta2, self.cfg.eps);
        let bc1 = 1.0 - b1.powi(t as i32);
        let bc2 = 1.0 - b2.powi(t as i32);
        tch::no_grad(|| {
            for (i, (_, w)) in self.params.iter().enumerate() {
                let g = &grads[i];
                let (mut m, mut v) = (self.m[i].shallow_clone(), self.v[i].shallow_clone());
                let _ = m.g_mul_scalar_(b1).g_add_(&(g * (1.0 - b1)));
                let _ = v.g_mul_scalar_(b2).g_add_(&(g.square() * (1.0 - b2)));
                let denom = (&v / bc2).sqrt() + eps;
                let upd = (&m / bc1) / denom * lr;
                let _ = w.shallow_clone().g_sub_(&upd);
            }
        });
    }

    /// The optimiser state as named tensors (`{prefix}.m.<param>`, `{prefix}.v.<param>`,
    /// `{prefix}.t`): live tensors, so a checkpoint restore copies into them in place.
    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len() + 1);
        for (i, (n, _)) in self.params.iter().enumerate() {
            out.push((format!("{prefix}.m.{n}"), self.m[i].shallow_clone()));
            out.push((format!("{prefix}.v.{n}"), self.v[i].shallow_clone()));
        }
        out.push((format!("{prefix}.t"), self.t.shallow_clone()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_constant_then_linear_to_zero() {
        let s = LrSchedule {
            base: 1.0,
            steps: 10,
            decay_steps: 4,
        };
        assert_eq!(s.at(0), 1.0);
        assert_eq!(s.at(5), 1.0);
        // A linear decay in float64: a few roundings of values <= 1.
        assert!((s.at(6) - 0.8).abs() <= 4.0 * f64::EPSILON);
        assert!((s.at(9) - 0.2).abs() <= 4.0 * f64::EPSILON);
        assert_eq!(LrSchedule::constant(0.5, 10).at(9), 0.5);
    }

    /// The rule docs/engine.md states for `init_from`: a continuation equals one longer
    /// run only if the rates of the dep's steps were the longer run's.
    #[test]
    fn a_continuation_has_the_longer_runs_rates_only_when_the_dep_did_not_decay() {
        let run = |steps, decay_steps| LrSchedule {
            base: 1.0,
            steps,
            decay_steps,
        };
        let rates = |s: &LrSchedule, n: u64| (0..n).map(|i| s.at(i)).collect::<Vec<_>>();
        // A constant 4-step dep, an 8-step run decaying over its last 4: the same 4 rates.
        assert_eq!(rates(&run(4, 0), 4), rates(&run(8, 4), 4));
        // Decaying over its last 5, the longer run is below the base at step 3 already.
        assert_ne!(rates(&run(4, 0), 4), rates(&run(8, 5), 4));
        // A dep that decayed trained its last steps below the longer run's rates.
        assert_ne!(rates(&run(4, 2), 4), rates(&run(8, 0), 4));
    }

    #[test]
    fn bad_config_names_the_field() {
        let e = AdamConfig {
            beta1: 1.5,
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("beta1 = 1.5"), "{e}");
    }

    /// Both updates are Adam: on one step from zero moments each moves every parameter by
    /// about `lr` against the sign of its gradient (`m / sqrt(v)` = sign(g) after bias
    /// correction, up to eps and a few float32 roundings).
    #[test]
    fn fused_and_composed_updates_take_the_same_first_step() {
        for update in [AdamUpdate::Fused, AdamUpdate::Composed] {
            let w = Tensor::from_slice(&[1.0f32, -2.0, 3.0]).set_requires_grad(true);
            let cfg = AdamConfig {
                lr: 0.1,
                update,
                ..Default::default()
            };
            let mut opt = Adam::new(vec![("w".into(), w.shallow_clone())], cfg).unwrap();
            let target = Tensor::from_slice(&[0.0f32, 0.0, 10.0]);
            opt.backward_step(&(&w - target).square().sum(Kind::Float))
                .unwrap();
            let got: Vec<f32> = Vec::try_from(&w.detach()).unwrap();
            for (g, want) in got.iter().zip([0.9f32, -1.9, 3.1]) {
                assert!((g - want).abs() <= 1e-6, "{update:?}: {got:?}");
            }
            assert_eq!(opt.steps_taken(), 1);
        }
    }
}
