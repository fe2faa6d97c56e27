//! The `evaluator` stage as 2 data-parallel ranks (CPU, Gloo; each rank a process of this
//! test binary, `ugc_train::testing`) against 1 rank with the same global batch, odd so the
//! shards are uneven (3 rows: 2 + 1, and a last batch of 2: 1 + 1). The loss is a mean over
//! the global batch's labelled pixels, whose count differs per shard: the check that the
//! ranks scale by the global count, not their own.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tch::Tensor;
use ugc_engine::rank::RankEnv;
use ugc_engine::testing::with_defaults;
use ugc_engine::{CancelToken, DeviceKind, Progress, StageContext, StageError, StageKind};
use ugc_train::testing::{rank_dir, run_ranks};

use crate::common::*;

const PARAMS_VAR: &str = "UGC_T_PARAMS";
const SPLIT_VAR: &str = "UGC_T_SPLIT";
/// The step at which the last rank's cancel token fires (unset: run to the end).
const CANCEL_VAR: &str = "UGC_T_CANCEL";

struct CancelAt(Option<u64>, CancelToken);

impl Progress for CancelAt {
    fn start(&self, _: &str, _: u64) {}
    fn set(&self, step: u64) {
        if self.0.is_some_and(|a| step >= a) {
            self.1.cancel();
        }
    }
    fn message(&self, _: &str) {}
}

/// One rank: the evaluator stage with the parent's parameters, `out-<rank>/` and the
/// shared `scratch/`; `result-<rank>.json` says whether it finished or was cancelled.
fn rank_body(dir: &Path) {
    let params: Value = serde_json::from_str(&std::env::var(PARAMS_VAR).unwrap()).unwrap();
    let split = PathBuf::from(std::env::var(SPLIT_VAR).unwrap());
    let rank = RankEnv::from_process_env().unwrap();
    let (r, last) = rank.as_ref().map_or((0, 0), |e| (e.rank, e.world - 1));
    let at = std::env::var(CANCEL_VAR)
        .ok()
        .filter(|_| r == last)
        .map(|v| v.parse().unwrap());
    let out = dir.join(format!("out-{r}"));
    std::fs::create_dir_all(&out).unwrap();
    let scratch = dir.join("scratch");
    let token = CancelToken::new();
    let prog = CancelAt(at, token.clone());
    let inputs = [ugc_engine::testing::input("split", "split", &split)];
    let env = BTreeMap::new();
    let ctx = StageContext {
        node: "n",
        kind: "evaluator",
        params: &params,
        inputs: &inputs,
        out_dir: &out,
        scratch_dir: &scratch,
        device: DeviceKind::Cpu,
        progress: &prog,
        cancel: &token,
        env: &env,
        rank: rank.as_ref(),
    };
    let res = evaluator_stage().run(&ctx);
    let result = json!({
        "ok": res.is_ok(),
        "cancelled": matches!(res, Err(StageError::Cancelled)),
        "error": res.err().map(|e| e.to_string()),
    });
    std::fs::write(dir.join(format!("result-{r}.json")), result.to_string()).unwrap();
}

fn ranks(world: usize, dir: &Path, params: &Value, split: &Path, cancel: Option<u64>) -> Value {
    const NAME: &str = "dist::evaluator_two_ranks_match_one_with_uneven_shards";
    let mut env = vec![
        (PARAMS_VAR, params.to_string()),
        (SPLIT_VAR, split.display().to_string()),
    ];
    if let Some(s) = cancel {
        env.push((CANCEL_VAR, s.to_string()));
    }
    run_ranks(NAME, world, dir, &env);
    read_json(&dir.join("result-0.json"))
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// `sqrt(sum ||a_k - b_k||^2 / sum ||c_k||^2)` over the names `b` has with `prefix`.
fn ratio(
    a: &HashMap<String, Tensor>,
    b: &HashMap<String, Tensor>,
    c: impl Fn(&str) -> Tensor,
    prefix: &str,
) -> f64 {
    let sq = |t: Tensor| {
        t.to_kind(tch::Kind::Double)
            .square()
            .sum(tch::Kind::Double)
            .double_value(&[])
    };
    let (mut num, mut den) = (0.0, 0.0);
    for (k, tb) in b.iter().filter(|(k, _)| k.starts_with(prefix)) {
        if tb.kind() != tch::Kind::Float {
            continue;
        }
        num += sq(&a[k] - tb);
        den += sq(c(k));
    }
    assert!(den > 0.0, "nothing under `{prefix}`");
    (num / den).sqrt()
}

/// The step-1 checkpoint (weights and Adam's `m = (1 - beta1) g`: the reduced gradient of
/// step 1) and the final weights of a run as `world` ranks; the initial weights too.
fn trace(world: usize, p: &Value, split: &Path) -> [HashMap<String, Tensor>; 3] {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = |s: u64| {
        tensors(
            &dir.path()
                .join(format!("scratch/ckpt/ckpt-{s}.safetensors")),
        )
    };
    assert_eq!(
        ranks(world, dir.path(), p, split, Some(0))["cancelled"],
        true
    );
    let w0 = ckpt(0);
    assert_eq!(
        ranks(world, dir.path(), p, split, Some(1))["cancelled"],
        true
    );
    let step1 = ckpt(1);
    let r = ranks(world, dir.path(), p, split, None);
    assert_eq!(r["ok"], true, "{r}");
    if world > 1 {
        let other = dir.path().join("out-1");
        assert_eq!(std::fs::read_dir(other).unwrap().count(), 0, "rank 1 wrote");
    }
    let last = tensors(&dir.path().join("out-0/evaluator/model.safetensors"));
    [w0, step1, last]
}

/// Tolerances as the method's data-parallel tests (`ugc-method`, `dist.rs`): the step-1
/// gradients are the same sums grouped by shard; the longest are a conv's weight gradient
/// over `B·H·W = 3·16·16 = 768` pixels, `sqrt(768) u ≈ 2e-6` each under random-sign
/// rounding (`u = 2^-24`), over the net's few layers `~1e-5`: `1e-4` with margin. A rank
/// dividing by its own pixel count (or a missing all-reduce) changes them by O(1). The
/// weights after 6 steps: within `2e-2` of the distance they moved (Adam's update is
/// homogeneous of degree 0 in the gradient, so each step adds about the gradient's relative
/// error; the net has no normalisation layer, so no gradient is pure rounding noise).
#[test]
fn evaluator_two_ranks_match_one_with_uneven_shards() {
    if let Some(dir) = rank_dir() {
        return rank_body(&dir);
    }
    let _rng = ugc_engine::testing::torch_rng();
    let data = make_split("edges2photo", 8, 2, 16, 1.0);
    let p = with_defaults(
        &schema("evaluator"),
        json!({"width": 4, "steps": 6, "batch_size": 3, "checkpoint_every": 0}),
    );
    let [w0, one1, one] = trace(1, &p, &data.split);
    let [w0b, two1, two] = trace(2, &p, &data.split);
    assert_eq!(ratio(&w0b, &w0, |k| w0[k].shallow_clone(), ""), 0.0);
    let g = ratio(&two1, &one1, |k| one1[k].shallow_clone(), "opt.m.");
    eprintln!("step-1 gradient relative difference {g:e}");
    assert!(g <= 1e-4, "step-1 gradients differ by {g:e}");
    let moved = |k: &str| &one[k] - &w0[&format!("net.{k}")];
    let d = ratio(&two, &one, moved, "");
    eprintln!("weights differ by {d:e} of the distance moved");
    assert!(d <= 2e-2, "weights differ by {d:e} of the distance moved");
}
