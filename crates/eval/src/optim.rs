//! Adam with state we can checkpoint. `tch::nn::Optimizer` keeps its moments inside
//! libtorch where they cannot be saved, so a stage resumed after a crash would restart
//! Adam from zero moments and train differently from an uninterrupted run. Here the moments
//! are plain tensors saved with the weights, so a resumed run is bit-identical on the CPU.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Kind, Tensor, nn::VarStore};

use crate::error::{EvalError, Result};

/// Adam (Kingma & Ba) with bias correction, no weight decay.
pub struct Adam {
    /// Trainable variables sorted by name (shallow copies sharing storage with the store).
    vars: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Number of updates applied so far.
    pub t: i64,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Adam {
    pub fn new(vs: &VarStore, lr: f64) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let m = vars.iter().map(|(_, t)| t.zeros_like()).collect();
        let v = vars.iter().map(|(_, t)| t.zeros_like()).collect();
        Adam {
            vars,
            m,
            v,
            t: 0,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// `loss.backward()`, one update, gradients cleared.
    pub fn backward_step(&mut self, loss: &Tensor) {
        for (_, w) in self.vars.iter_mut() {
            w.zero_grad();
        }
        loss.backward();
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        tch::no_grad(|| {
            for (i, (_, w)) in self.vars.iter_mut().enumerate() {
                let g = w.grad();
                if !g.defined() {
                    continue;
                }
                let _ = self.m[i]
                    .g_mul_scalar_(self.beta1)
                    .g_add_(&(&g * (1.0 - self.beta1)));
                let _ = self.v[i]
                    .g_mul_scalar_(self.beta2)
                    .g_add_(&(g.square() * (1.0 - self.beta2)));
                let denom = (&self.v[i] / bc2).sqrt() + self.eps;
                let upd = (&self.m[i] / bc1) / denom * self.lr;
                let _ = w.g_sub_(&upd);
            }
        });
    }

    /// Saves weights, moments, the step count and `extra` named numbers (e.g. running loss
    /// sums) to `path` (safetensors, written to a temporary name and renamed so a crash never
    /// leaves a torn checkpoint).
    pub fn save(&self, path: &Path, step: u64, extra: &[(&str, f64)]) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::with_capacity(3 * self.vars.len() + 2);
        for (i, (n, w)) in self.vars.iter().enumerate() {
            named.push((format!("w.{n}"), w.detach().to_device(Device::Cpu)));
            named.push((format!("m.{n}"), self.m[i].to_device(Device::Cpu)));
            named.push((format!("v.{n}"), self.v[i].to_device(Device::Cpu)));
        }
        named.push(("adam_t".into(), Tensor::from_slice(&[self.t])));
        named.push(("step".into(), Tensor::from_slice(&[step as i64])));
        for (k, v) in extra {
            named.push((format!("extra.{k}"), Tensor::from_slice(&[*v])));
        }
        let tmp = path.with_extension("tmp.safetensors");
        Tensor::write_safetensors(&named, &tmp)
            .map_err(|e| EvalError::torch(format!("writing checkpoint {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path).map_err(|e| EvalError::io(path, e))
    }

    /// Restores a checkpoint written by [`Adam::save`]; returns the step to continue from
    /// and the extra numbers. Every tensor must be present with the right shape, else the
    /// file is refused.
    pub fn load(&mut self, path: &Path) -> Result<(u64, BTreeMap<String, f64>)> {
        let tensors: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| EvalError::torch(format!("reading checkpoint {}", path.display()), e))?
            .into_iter()
            .collect();
        let get = |k: &str, like: &Tensor| -> Result<Tensor> {
            let t = tensors
                .get(k)
                .ok_or_else(|| EvalError::bad(path, format!("checkpoint lacks tensor `{k}`")))?;
            if t.size() != like.size() {
                return Err(EvalError::bad(
                    path,
                    format!(
                        "checkpoint tensor `{k}` has shape {:?}, expected {:?}",
                        t.size(),
                        like.size()
                    ),
                ));
            }
            Ok(t.to_device(like.device()).to_kind(like.kind()))
        };
        let scalar = |k: &str| -> Result<i64> {
            tensors
                .get(k)
                .filter(|t| t.numel() == 1 && t.kind() == Kind::Int64)
                .map(|t| t.int64_value(&[0]))
                .ok_or_else(|| EvalError::bad(path, format!("checkpoint lacks scalar `{k}`")))
        };
        let mut restored = Vec::with_capacity(self.vars.len());
        for (i, (n, w)) in self.vars.iter().enumerate() {
            restored.push((
                get(&format!("w.{n}"), w)?,
                get(&format!("m.{n}"), &self.m[i])?,
                get(&format!("v.{n}"), &self.v[i])?,
            ));
        }
        let t = scalar("adam_t")?;
        let step = scalar("step")?;
        tch::no_grad(|| {
            for (i, (w, m, v)) in restored.into_iter().enumerate() {
                self.vars[i].1.copy_(&w);
                self.m[i] = m;
                self.v[i] = v;
            }
        });
        self.t = t;
        let extra = tensors
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("extra.")?;
                (v.numel() == 1).then(|| (name.to_string(), v.double_value(&[0])))
            })
            .collect();
        Ok((step.max(0) as u64, extra))
    }
}
