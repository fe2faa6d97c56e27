//! What the search reads and how it scores: the hold-out metric, the batch-norm statistics
//! saved around each candidate's recalibration, and the replayable score log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor, nn::VarStore};
use ugc_data::{Batch, SplitManifest, Subset};
use ugc_engine::{CancelToken, StageContext, StageError};
use ugc_nn::{Generator, Mode, SubnetConfig};

use super::algorithm::SearchError;
use crate::MethodError;
use crate::setup::{EvalSpec, LoadedSupernet, encoding_for, load_supernet, read_batches};

/// The configured hold-out metric (a stage parameter, so it lives with the kind's typed
/// parameters); [`MetricScore`] scores with it.
pub use ugc_kinds::search::Metric;

/// Scoring with a [`Metric`] (a trait: the enum lives in libtorch-free `ugc-kinds`).
pub trait MetricScore {
    /// Higher-is-better score of `pred` against `target` (`[N, C, H, W]`, [-1, 1]): the mean
    /// over images.
    fn score(self, pred: &Tensor, target: &Tensor) -> Result<f64, String>;
}

impl MetricScore for Metric {
    fn score(self, pred: &Tensor, target: &Tensor) -> Result<f64, String> {
        if pred.size() != target.size() {
            return Err(format!(
                "output shape {:?} differs from target shape {:?}",
                pred.size(),
                target.size()
            ));
        }
        let per_image: Vec<f64> = match self {
            Metric::L1 => {
                let d = (pred - target).abs().to_kind(Kind::Double).mean_dim(
                    [1i64, 2, 3].as_slice(),
                    false,
                    Kind::Double,
                );
                Vec::<f64>::try_from(&d.to_device(Device::Cpu))
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|v| -v)
                    .collect()
            }
            Metric::Psnr => {
                // An exact reconstruction would give +inf; cap at 100 dB so means stay finite.
                ugc_metrics::image_metrics::psnr(pred, target, 2.0)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|v| v.min(100.0))
                    .collect()
            }
            Metric::Ssim => ugc_metrics::image_metrics::ssim(
                pred,
                target,
                2.0,
                &ugc_metrics::image_metrics::SsimConfig::default(),
            )
            .map_err(|e| e.to_string())?,
        };
        Ok(per_image.iter().sum::<f64>() / per_image.len().max(1) as f64)
    }
}

/// Copies of every batch-norm running statistic of `vs`, to restore after a per-candidate
/// recalibration (the supernet's own statistics must survive the search).
pub fn snapshot_running_stats(vs: &VarStore) -> Vec<(Tensor, Tensor)> {
    vs.variables()
        .into_iter()
        .filter(|(n, _)| n.ends_with("running_mean") || n.ends_with("running_var"))
        .map(|(_, t)| {
            let saved = t.copy();
            (t, saved)
        })
        .collect()
}

/// Restores statistics saved by [`snapshot_running_stats`].
pub fn restore_running_stats(saved: &[(Tensor, Tensor)]) {
    tch::no_grad(|| {
        for (live, copy) in saved {
            let mut live = live.shallow_clone();
            live.copy_(copy);
        }
    });
}

/// Candidate scores already computed for this cache key, kept in the scratch directory so
/// that a search interrupted by a crash or cancel replays them instead of scoring again.
/// The scratch directory belongs to one cache key (same supernet, split and settings), and
/// the evolution is deterministic given the scores, so the replay takes the same path.
/// One line per score: `<config>\t<f64 bits as hex>` (exact); a torn last line is ignored.
struct ScoreLog {
    path: PathBuf,
    known: HashMap<String, f64>,
    file: std::fs::File,
}

impl ScoreLog {
    const FILE: &'static str = "search_scores.tsv";

    fn open(scratch: &Path) -> Result<Self, MethodError> {
        std::fs::create_dir_all(scratch).map_err(|e| MethodError::io(scratch, e))?;
        let path = scratch.join(Self::FILE);
        let mut known = HashMap::new();
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| MethodError::io(&path, e))?;
            for line in text.lines() {
                let Some((cfg, bits)) = line.split_once('\t') else {
                    continue;
                };
                if let Ok(b) = u64::from_str_radix(bits, 16)
                    && bits.len() == 16
                {
                    known.insert(cfg.to_string(), f64::from_bits(b));
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| MethodError::io(&path, e))?;
        Ok(ScoreLog { path, known, file })
    }

    fn record(&mut self, config: &str, score: f64) -> Result<(), String> {
        use std::io::Write;
        // A torn line from a crash mid-write must not glue onto this one.
        writeln!(self.file, "\n{config}\t{:016x}", score.to_bits())
            .and_then(|_| self.file.flush())
            .map_err(|e| format!("writing {}: {e}", self.path.display()))?;
        self.known.insert(config.to_string(), score);
        Ok(())
    }
}

/// The supernet and the split a search reads (its `supernet` and `split` inputs).
pub(super) struct SearchInputs {
    pub(super) sup: LoadedSupernet,
    pub(super) manifest: SplitManifest,
    pub(super) split_dir: PathBuf,
}

impl SearchInputs {
    /// Loads both; a split without a search hold-out is refused (candidates are never scored
    /// on the test split).
    pub(super) fn open(ctx: &StageContext<'_>, device: Device) -> Result<Self, StageError> {
        let sup_dir = ctx.require_input("supernet")?.dir.clone();
        let split_dir: PathBuf = ctx.require_input("split")?.dir.clone();
        let sup = load_supernet(&sup_dir, device)?;
        let manifest = SplitManifest::load(&split_dir).map_err(MethodError::data_at(format!(
            "split of stage `{}`",
            ctx.node
        )))?;
        if manifest.holdout().is_empty() {
            return Err(StageError::Config(format!(
                "stage `{}`: the split has no search hold-out (set the split's `holdout` > 0); \
                 candidates are never scored on the test split",
                ctx.node
            )));
        }
        Ok(SearchInputs {
            sup,
            manifest,
            split_dir,
        })
    }
}

/// How candidates are scored (the `search` schema's defaults in [`Default`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ScoringConfig {
    pub(super) metric: Metric,
    pub(super) batch_size: usize,
    /// Hold-out batches each candidate is scored on.
    pub(super) eval_batches: usize,
    /// Labeled and unlabeled batches (each) for per-candidate BN recalibration.
    pub(super) calib_batches: usize,
    /// Square resize before the networks (as the supernet trained); `None`: native size.
    pub(super) image_size: Option<u32>,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        ScoringConfig {
            metric: Metric::L1,
            batch_size: 8,
            eval_batches: 4,
            calib_batches: 2,
            image_size: None,
        }
    }
}

/// Scores sub-nets of the supernet on the hold-out: the batches held in memory, BN
/// recalibration per candidate (the supernet's own statistics restored after each), and
/// the score log that lets an interrupted search replay its scores.
pub(super) struct HoldoutScorer<'a> {
    generator: &'a dyn Generator,
    metric: Metric,
    holdout: Vec<Batch>,
    /// Recalibration inputs; empty unless the generator has batch norms.
    calib: Vec<Tensor>,
    has_bn: bool,
    saved_stats: Vec<(Tensor, Tensor)>,
    log: ScoreLog,
    cancel: &'a CancelToken,
}

impl<'a> HoldoutScorer<'a> {
    /// Reads the hold-out (and, for BN families, the labeled then unlabeled recalibration
    /// batches), saves the supernet's BN statistics and opens the scratch score log.
    pub(super) fn new(
        inputs: &'a SearchInputs,
        ctx: &StageContext<'a>,
        device: Device,
        cfg: &ScoringConfig,
    ) -> Result<Self, StageError> {
        let sup = &inputs.sup;
        let spec = EvalSpec {
            encoding: encoding_for(&sup.arch, &inputs.manifest)?,
            image_size: cfg.image_size,
            device,
        };
        let read = |subset, max_batches| {
            read_batches(
                &inputs.manifest,
                &inputs.split_dir,
                subset,
                cfg.batch_size,
                max_batches,
                &spec,
            )
        };
        let holdout = read(Subset::Holdout, cfg.eval_batches)?;
        let has_bn = !sup.generator.batch_norms().is_empty();
        let mut calib: Vec<Tensor> = Vec::new();
        if has_bn {
            for subset in [Subset::Labeled, Subset::Unlabeled] {
                for b in read(subset, cfg.calib_batches)? {
                    calib.push(b.input);
                }
            }
        }
        let saved_stats = snapshot_running_stats(&sup.vs);
        let log = ScoreLog::open(ctx.scratch_dir)?;
        if !log.known.is_empty() {
            ctx.progress.message(&format!(
                "resuming: {} candidate scores from an interrupted run",
                log.known.len()
            ));
        }
        Ok(HoldoutScorer {
            generator: sup.generator.as_ref(),
            metric: cfg.metric,
            holdout,
            calib,
            has_bn,
            saved_stats,
            log,
            cancel: ctx.cancel,
        })
    }

    /// Hold-out score of `cfg` (higher is better): replayed from the log when known,
    /// otherwise computed and logged. Checks the cancel token before computing.
    pub(super) fn score(&mut self, cfg: &SubnetConfig) -> Result<f64, SearchError> {
        let key = cfg.to_string();
        if let Some(s) = self.log.known.get(&key) {
            return Ok(*s);
        }
        if self.cancel.is_cancelled() {
            return Err(SearchError::Cancelled);
        }
        let fail = |reason: String| SearchError::Score {
            config: cfg.to_string(),
            reason,
        };
        let gen_ = self.generator;
        if self.has_bn {
            ugc_nn::recalibrate_bn(gen_, cfg, self.calib.iter())
                .map_err(|e| fail(e.to_string()))?;
        }
        let mut total = 0.0;
        let mut n = 0usize;
        for b in &self.holdout {
            let target = b
                .target
                .as_ref()
                .ok_or_else(|| fail("hold-out batch without targets".into()))?;
            let y = tch::no_grad(|| gen_.forward(&b.input, cfg, Mode::Eval))
                .map_err(|e| fail(e.to_string()))?;
            let bs = b.ids.len();
            total += self.metric.score(&y, target).map_err(fail)? * bs as f64;
            n += bs;
        }
        if self.has_bn {
            restore_running_stats(&self.saved_stats);
        }
        let score = total / n.max(1) as f64;
        self.log.record(&key, score).map_err(fail)?;
        Ok(score)
    }

    /// Leaves the supernet's BN statistics recalibrated for `cfg` (not restored), as the
    /// exported sub-net must carry them; a no-op without batch norms.
    pub(super) fn recalibrate_for_export(&self, cfg: &SubnetConfig) -> Result<(), StageError> {
        if self.has_bn {
            ugc_nn::recalibrate_bn(self.generator, cfg, self.calib.iter()).map_err(|e| {
                StageError::Failed(format!("recalibrating the searched student: {e}"))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ugc_nn::{Arch, ArchConfig, build_generator};

    #[test]
    fn bn_statistics_are_restored_after_a_candidate_recalibration() {
        // Draws from libtorch's one generator: not while another test depends on it.
        let _rng = ugc_engine::testing::torch_rng();
        let arch = ArchConfig {
            ngf: 4,
            num_downs: 5,
            ..ArchConfig::new(Arch::Pix2PixUnet)
        };
        let vs = VarStore::new(Device::Cpu);
        let g = build_generator(&vs.root(), &arch).unwrap();
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let stats = |vs: &VarStore| -> Vec<(String, Tensor)> {
            let mut v: Vec<(String, Tensor)> = vs
                .variables()
                .into_iter()
                .filter(|(n, _)| n.ends_with("running_mean") || n.ends_with("running_var"))
                .map(|(n, t)| (n, t.copy()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let before = stats(&vs);
        assert!(!before.is_empty());
        let saved = snapshot_running_stats(&vs);
        let sub = g.search_space().smallest();
        ugc_nn::recalibrate_bn(g.as_ref(), &sub, [&x]).unwrap();
        let changed = stats(&vs)
            .iter()
            .zip(&before)
            .any(|((_, a), (_, b))| !a.equal(b));
        assert!(
            changed,
            "recalibration changed nothing: the test would prove nothing"
        );
        restore_running_stats(&saved);
        for ((n, a), (_, b)) in stats(&vs).iter().zip(&before) {
            assert!(a.equal(b), "{n} not restored");
        }
    }

    #[test]
    fn metric_scores_are_higher_is_better() {
        let t = Tensor::zeros([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let near = &t + 0.1;
        let far = &t + 0.5;
        for m in [Metric::L1, Metric::Psnr, Metric::Ssim] {
            let a = m.score(&near, &t).unwrap();
            let b = m.score(&far, &t).unwrap();
            assert!(a > b, "{m:?}: {a} <= {b}");
        }
        // 0.1 in float32 (relative error u), then a float32 mean of 1536 such values (γ).
        let within = 0.1
            * (ugc_tolerance::U_F32 + ugc_tolerance::gamma(1536, ugc_tolerance::Precision::F32));
        assert!((Metric::L1.score(&near, &t).unwrap() + 0.1).abs() <= within);
        let e = Metric::L1
            .score(&t, &Tensor::zeros([2, 3, 8, 8], (Kind::Float, Device::Cpu)))
            .unwrap_err();
        assert!(e.contains("differs"), "{e}");
    }
}
