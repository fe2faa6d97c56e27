//! Adam written over plain tensors, so that its whole state (moments and step count) is a
//! list of named tensors the checkpoint saves and restores exactly. tch's optimizers keep
//! their state inside libtorch where it cannot be serialised.
//!
//! The update is `torch.optim.Adam(fused=True)`'s, run by libtorch's fused kernel through
//! `ugc_torch_ext::fused_adam` (no weight decay, no amsgrad):
//! `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
//! `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::MethodError;

/// Adam hyper-parameters; defaults are pix2pix's (`beta1 0.5`, `beta2 0.999`, lr 2e-4).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 2e-4,
            beta1: 0.5,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

impl AdamConfig {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), MethodError> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(MethodError::param(
                "lr",
                self.lr,
                "must be a positive number",
            ));
        }
        for (n, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(MethodError::param(n, b, "must be in [0, 1)"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(MethodError::param("eps", self.eps, "must be positive"));
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
}

impl Adam {
    /// An optimiser over `params` (e.g. a VarStore's trainable variables, by name).
    pub fn new(mut params: Vec<(String, Tensor)>, cfg: AdamConfig) -> Result<Self, MethodError> {
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
        })
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

    /// One update with learning rate `lr`. A parameter without a gradient (e.g. in a block
    /// the step's sub-nets skipped) counts as gradient zero: its moments decay and it keeps
    /// moving with its momentum, exactly as `torch.optim.Adam` after
    /// `zero_grad(set_to_none=False)`. This makes the update independent of whether libtorch
    /// has allocated a gradient yet, which a resumed run (fresh gradients) relies on to
    /// match an uninterrupted one. Fails when the first parameter is found non-finite (probed
    /// on the first step and every `FINITE_CHECK_EVERY` steps after it).
    pub fn step(&mut self, lr: f64) -> Result<(), MethodError> {
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
        let params: Vec<Tensor> = self.params.iter().map(|(_, p)| p.shallow_clone()).collect();
        // The step count as the fused kernel wants it: float32 on the parameters' device.
        let step = Tensor::from(t as f32).to_device(first.device());
        let hyper = ugc_torch_ext::AdamHyper {
            lr,
            beta1: self.cfg.beta1,
            beta2: self.cfg.beta2,
            eps: self.cfg.eps,
        };
        ugc_torch_ext::fused_adam(&params, &grads, &self.m, &self.v, &step, hyper)
            .map_err(|e| MethodError::torch("Adam update", e))?;
        if t % FINITE_CHECK_EVERY == 1 {
            // A host read is a device synchronisation on a GPU, so not every step.
            let s = tch::no_grad(|| first.sum(Kind::Double).double_value(&[]));
            if !s.is_finite() {
                return Err(MethodError::Numeric(format!(
                    "parameter `{first_name}` became non-finite by optimiser step {t}"
                )));
            }
        }
        Ok(())
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
        let c = LrSchedule {
            base: 0.5,
            steps: 10,
            decay_steps: 0,
        };
        assert_eq!(c.at(9), 0.5);
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
}
