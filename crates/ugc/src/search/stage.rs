//! The `search` stage kind: three searches (student, wide and deep teacher) over the
//! supernet's space, then `configs.json`, the Pareto logs, metrics and the searched student.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;
use ugc_data::{SplitManifest, Subset};
use ugc_engine::{KindSchema, StageContext, StageError, StageKind};
use ugc_nn::{Mode, SubnetConfig};

use super::algorithm::{
    Candidate, DepthRule, Evaluator, EvoConfig, SearchError, SearchTask, evolve, pareto_front,
};
use super::inputs::{Metric, MetricScore, ScoreLog, restore_running_stats, snapshot_running_stats};
use super::shared::{
    EvalSpec, data_err, input_encoding, io_err, load_supernet, read_batches, read_json, write_json,
};
use ugc_kinds::search::Params as SearchParams;

/// `configs.json` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChosenConfig {
    pub config: String,
    pub macs: u64,
    pub params: u64,
    pub score: f64,
}

impl From<Candidate> for ChosenConfig {
    fn from(c: Candidate) -> Self {
        ChosenConfig {
            config: c.config,
            macs: c.macs,
            params: c.params,
            score: c.score,
        }
    }
}

/// `configs.json` of a search output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchConfigs {
    pub student: ChosenConfig,
    pub wide_teacher: ChosenConfig,
    pub deep_teacher: ChosenConfig,
    pub largest: ChosenConfig,
}

impl SearchConfigs {
    /// Reads `<dir>/configs.json` of a search stage output.
    pub fn load(dir: &Path) -> Result<Self, StageError> {
        read_json(&dir.join("configs.json"))
    }
}

/// The `search` stage kind (`stages/search.yaml`).
pub struct SearchStage {
    schema: KindSchema,
}

impl SearchStage {
    pub fn new(schema: KindSchema) -> Self {
        SearchStage { schema }
    }
}

/// `ratio` (in (0, 1], the schema's range) of the largest sub-net's MACs.
fn ratio_budget(largest: u64, ratio: f64) -> u64 {
    (largest as f64 * ratio).floor() as u64
}

impl StageKind for SearchStage {
    fn schema(&self) -> &KindSchema {
        &self.schema
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let p: SearchParams = ctx.typed_params()?;
        if p.torch_threads > 0 {
            tch::set_num_threads(p.torch_threads);
        }
        let device = crate::device::tch_device(ctx.device)?;
        tch::manual_seed(p.seed as i64);
        let sup_dir = ctx.require_input("supernet")?.dir.clone();
        let split_dir: PathBuf = ctx.require_input("split")?.dir.clone();
        let sup = load_supernet(&sup_dir, device)?;
        let manifest = SplitManifest::load(&split_dir)
            .map_err(data_err(format!("split of stage `{}`", ctx.node)))?;
        if manifest.holdout().is_empty() {
            return Err(StageError::Config(format!(
                "stage `{}`: the split has no search hold-out (set the split's `holdout` > 0); \
                 candidates are never scored on the test split",
                ctx.node
            )));
        }
        // The planner refuses any other length (`Params::check`); a stage run without the
        // planner still must not fall back to the default silently.
        let input_chw: [i64; 3] = match p.input_size.as_deref() {
            None => [sup.arch.input_nc, 256, 256],
            Some(&[c, h, w]) => [c, h, w],
            Some(v) => {
                return Err(StageError::Config(format!(
                    "parameter `input_size` = {v:?}: expected [C, H, W]"
                )));
            }
        };
        let arch = sup.arch.clone();
        let space = sup.generator.search_space();
        let largest = space.largest();
        let largest_cost = ugc_nn::profile(&arch, Some(&largest), input_chw).map_err(|e| {
            StageError::Config(format!("parameter `input_size` = {input_chw:?}: {e}"))
        })?;
        let (budget, budget_param) = match p.budget_macs {
            Some(b) => (b.floor() as u64, "budget_macs"),
            None => (
                ratio_budget(largest_cost.macs, p.budget_ratio),
                "budget_ratio",
            ),
        };
        let wide_budget = ratio_budget(largest_cost.macs, p.wide_budget_ratio);
        let deep_budget = ratio_budget(largest_cost.macs, p.deep_budget_ratio);
        let evo = EvoConfig {
            population: p.population,
            generations: p.generations,
            parent_ratio: p.parent_ratio,
            mutation_ratio: p.mutation_ratio,
            mutate_prob: p.mutate_prob,
            ..EvoConfig::default()
        };
        evo.validate()?;

        let enc = input_encoding(&arch, &manifest)?;
        let holdout = read_batches(
            &manifest,
            &split_dir,
            Subset::Holdout,
            p.batch_size,
            p.eval_batches,
            &EvalSpec {
                encoding: enc,
                image_size: p.image_size,
                device,
            },
        )?;
        let has_bn = !sup.generator.batch_norms().is_empty();
        let mut calib: Vec<Tensor> = Vec::new();
        if has_bn {
            for subset in [Subset::Labeled, Subset::Unlabeled] {
                for b in read_batches(
                    &manifest,
                    &split_dir,
                    subset,
                    p.batch_size,
                    p.calib_batches,
                    &EvalSpec {
                        encoding: enc,
                        image_size: p.image_size,
                        device,
                    },
                )? {
                    calib.push(b.input);
                }
            }
        }
        let saved_stats = snapshot_running_stats(&sup.vs);
        let gen_ = &sup.generator;
        let metric = p.metric;
        let cancel = ctx.cancel;
        let mut log = ScoreLog::open(ctx.scratch_dir)?;
        if !log.known.is_empty() {
            ctx.progress.message(&format!(
                "resuming: {} candidate scores from an interrupted run",
                log.known.len()
            ));
        }
        let score = |cfg: &SubnetConfig| -> Result<f64, SearchError> {
            let key = cfg.to_string();
            if let Some(s) = log.known.get(&key) {
                return Ok(*s);
            }
            if cancel.is_cancelled() {
                return Err(SearchError::Cancelled);
            }
            let fail = |reason: String| SearchError::Score {
                config: cfg.to_string(),
                reason,
            };
            if has_bn {
                ugc_nn::recalibrate_bn(gen_.as_ref(), cfg, calib.iter())
                    .map_err(|e| fail(e.to_string()))?;
            }
            let mut total = 0.0;
            let mut n = 0usize;
            for b in &holdout {
                let target = b
                    .target
                    .as_ref()
                    .ok_or_else(|| fail("hold-out batch without targets".into()))?;
                let y = tch::no_grad(|| gen_.forward(&b.input, cfg, Mode::Eval))
                    .map_err(|e| fail(e.to_string()))?;
                let bs = b.ids.len();
                total += metric.score(&y, target).map_err(fail)? * bs as f64;
                n += bs;
            }
            if has_bn {
                restore_running_stats(&saved_stats);
            }
            let score = total / n.max(1) as f64;
            log.record(&key, score).map_err(fail)?;
            Ok(score)
        };
        let cost = |cfg: &SubnetConfig| {
            ugc_nn::profile(&arch, Some(cfg), input_chw).map_err(|e| SearchError::Cost {
                config: cfg.to_string(),
                reason: e.to_string(),
            })
        };
        let mut ev = Evaluator::new(cost, score);
        let tasks = [
            ("student", DepthRule::Free, budget, budget_param),
            (
                "wide_teacher",
                DepthRule::Min,
                wide_budget,
                "wide_budget_ratio",
            ),
            (
                "deep_teacher",
                DepthRule::Max,
                deep_budget,
                "deep_budget_ratio",
            ),
        ];
        let total = (tasks.len() * (evo.generations + 1)) as u64;
        ctx.progress.start("search", total);
        let mut best = Vec::new();
        for (i, (name, rule, b, param)) in tasks.iter().enumerate() {
            if ctx.cancel.is_cancelled() {
                return Err(StageError::Cancelled);
            }
            let task = SearchTask {
                space: &space,
                rule: *rule,
                budget_macs: *b,
                budget_param: param,
            };
            let seed = p.seed.wrapping_add(i as u64);
            let progress = ctx.progress;
            let base = (i * (evo.generations + 1)) as u64;
            let c = evolve(&mut ev, &task, &evo, seed, |g, best| {
                progress.set(base + g as u64 + 1);
                progress.message(&format!(
                    "{name} gen {g}: best {} ({} MACs, score {:.4})",
                    best.config, best.macs, best.score
                ));
            })?;
            best.push(c);
        }
        let largest_c = ev.score(&largest)?;
        let mut it = best.into_iter();
        let configs = SearchConfigs {
            student: it.next().expect("three searches").into(),
            wide_teacher: it.next().expect("three searches").into(),
            deep_teacher: it.next().expect("three searches").into(),
            largest: largest_c.into(),
        };
        write_outputs(
            ctx.out_dir,
            &configs,
            &ev.evaluated,
            metric,
            [budget, wide_budget, deep_budget],
            largest_cost.macs,
        )?;
        drop(ev);
        // The searched student as a sub-net of the supernet, before any distillation: the
        // "NAS" point of the seed's Figure 1, and the architecture a `train` stage can
        // re-train on the labels alone (`from_dep: search`).
        let student: SubnetConfig = configs.student.config.parse().map_err(|e| {
            StageError::Failed(format!("searched student config does not parse: {e}"))
        })?;
        if has_bn {
            ugc_nn::recalibrate_bn(gen_.as_ref(), &student, calib.iter()).map_err(|e| {
                StageError::Failed(format!("recalibrating the searched student: {e}"))
            })?;
        }
        ugc_nn::export::export_subnet(gen_.as_ref(), &student, &ctx.out_dir.join("model"))
            .map_err(|e| StageError::Failed(format!("exporting the searched student: {e}")))?;
        Ok(())
    }
}

fn write_outputs(
    out: &Path,
    configs: &SearchConfigs,
    evaluated: &[Candidate],
    metric: Metric,
    budgets: [u64; 3],
    largest_macs: u64,
) -> Result<(), StageError> {
    write_json(&out.join("configs.json"), configs)?;
    let front = pareto_front(evaluated);
    let mut rows: Vec<(&Candidate, bool)> = evaluated.iter().zip(front).collect();
    rows.sort_by(|a, b| a.0.macs.cmp(&b.0.macs).then(a.0.config.cmp(&b.0.config)));
    let mut csv = String::from("config,macs,params,score,pareto\n");
    let mut json_rows = Vec::new();
    for (c, on) in &rows {
        csv.push_str(&format!(
            "{},{},{},{},{}\n",
            c.config, c.macs, c.params, c.score, on
        ));
        json_rows.push(serde_json::json!({
            "config": c.config, "macs": c.macs, "params": c.params,
            "score": c.score, "pareto": on,
        }));
    }
    let p = out.join("pareto.csv");
    std::fs::write(&p, csv).map_err(io_err(&p))?;
    write_json(
        &out.join("pareto.json"),
        &serde_json::json!({ "metric": metric, "higher_is_better": true, "candidates": json_rows }),
    )?;
    let n_front = rows.iter().filter(|(_, on)| *on).count();
    write_json(
        &out.join("metrics.json"),
        &serde_json::json!({
            "search.evaluated": evaluated.len(),
            "search.pareto": n_front,
            "search.budget_macs": budgets[0],
            "search.wide_budget_macs": budgets[1],
            "search.deep_budget_macs": budgets[2],
            "search.largest_macs": largest_macs,
            "student.macs": configs.student.macs,
            "student.params": configs.student.params,
            "student.score": configs.student.score,
            "wide_teacher.macs": configs.wide_teacher.macs,
            "wide_teacher.score": configs.wide_teacher.score,
            "deep_teacher.macs": configs.deep_teacher.macs,
            "deep_teacher.score": configs.deep_teacher.score,
            "largest.score": configs.largest.score,
        }),
    )
}
