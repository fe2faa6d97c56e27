//! The `search` stage kind: three searches (student, wide and deep teacher) over the
//! supernet's space, then `configs.json`, the Pareto logs, metrics and the searched student.

use std::path::Path;

use serde::{Deserialize, Serialize};
use ugc_engine::{KindSchema, StageContext, StageError, StageKind};
use ugc_kinds::search::Params as SearchParams;
use ugc_nn::{ArchConfig, SearchSpace, SubnetConfig};

use super::algorithm::{
    Candidate, DepthRule, Evaluator, EvoConfig, SearchError, SearchTask, evolve, pareto_front,
};
use super::inputs::{HoldoutScorer, Metric, ScoringConfig, SearchInputs};
use crate::MethodError;
use crate::setup::{read_json, write_json};

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
    pub fn load(dir: &Path) -> Result<Self, MethodError> {
        read_json(&dir.join("configs.json"))
    }
}

/// The `search` stage kind (`crates/kinds/src/search/schema.yaml`).
pub struct SearchStage {
    schema: KindSchema,
}

impl SearchStage {
    pub fn new(schema: KindSchema) -> Self {
        SearchStage { schema }
    }
}

impl From<&SearchParams> for EvoConfig {
    fn from(p: &SearchParams) -> Self {
        EvoConfig {
            population: p.population,
            generations: p.generations,
            parent_ratio: p.parent_ratio,
            mutation_ratio: p.mutation_ratio,
            mutate_prob: p.mutate_prob,
            ..EvoConfig::default()
        }
    }
}

impl From<&SearchParams> for ScoringConfig {
    fn from(p: &SearchParams) -> Self {
        ScoringConfig {
            metric: p.metric,
            batch_size: p.batch_size,
            eval_batches: p.eval_batches,
            calib_batches: p.calib_batches,
            image_size: p.image_size,
        }
    }
}

/// `ratio` (in (0, 1], the schema's range) of the largest sub-net's MACs.
fn ratio_budget(largest: u64, ratio: f64) -> u64 {
    (largest as f64 * ratio).floor() as u64
}

/// The three searches' MACs budgets, and the largest sub-net's MACs that the ratios scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Budgets {
    student: u64,
    wide_teacher: u64,
    deep_teacher: u64,
    largest: u64,
}

/// One of the three searches: its name (in progress messages), depth rule and budget, with
/// the parameter that set the budget (for error messages).
#[derive(Debug, Clone, Copy)]
struct Search {
    name: &'static str,
    rule: DepthRule,
    budget_macs: u64,
    budget_param: &'static str,
}

/// What the generations loop runs, fixed before any candidate is scored: the space, the
/// input MACs are counted at, the budgets and the evolution settings.
struct SearchPlan {
    input_chw: [i64; 3],
    space: SearchSpace,
    largest: SubnetConfig,
    budgets: Budgets,
    /// `budget_macs` when set, else `budget_ratio`: named when the student budget is too small.
    student_budget_param: &'static str,
    evo: EvoConfig,
    seed: u64,
}

impl SearchPlan {
    /// Counts the largest sub-net's MACs at `input_size` and derives the budgets from it.
    fn new(p: &SearchParams, arch: &ArchConfig, space: SearchSpace) -> Result<Self, StageError> {
        // The planner refuses any other length (`Params::check`); a stage run without the
        // planner still must not fall back to the default silently.
        let input_chw: [i64; 3] = match p.input_size.as_deref() {
            None => [arch.input_nc, 256, 256],
            Some(&[c, h, w]) => [c, h, w],
            Some(v) => {
                return Err(StageError::Config(format!(
                    "parameter `input_size` = {v:?}: expected [C, H, W]"
                )));
            }
        };
        let largest = space.largest();
        let largest_cost = ugc_nn::profile(arch, Some(&largest), input_chw).map_err(|e| {
            StageError::Config(format!("parameter `input_size` = {input_chw:?}: {e}"))
        })?;
        let (student, student_budget_param) = match p.budget_macs {
            Some(b) => (b.floor() as u64, "budget_macs"),
            None => (
                ratio_budget(largest_cost.macs, p.budget_ratio),
                "budget_ratio",
            ),
        };
        let budgets = Budgets {
            student,
            wide_teacher: ratio_budget(largest_cost.macs, p.wide_budget_ratio),
            deep_teacher: ratio_budget(largest_cost.macs, p.deep_budget_ratio),
            largest: largest_cost.macs,
        };
        let evo = EvoConfig::from(p);
        evo.validate()?;
        Ok(SearchPlan {
            input_chw,
            space,
            largest,
            budgets,
            student_budget_param,
            evo,
            seed: p.seed,
        })
    }

    /// Student (free depth), wide teacher (minimal depth), deep teacher (maximal depth), in
    /// this order: the order fixes each one's seed and which candidates the shared cache
    /// already holds.
    fn searches(&self) -> [Search; 3] {
        [
            Search {
                name: "student",
                rule: DepthRule::Free,
                budget_macs: self.budgets.student,
                budget_param: self.student_budget_param,
            },
            Search {
                name: "wide_teacher",
                rule: DepthRule::Min,
                budget_macs: self.budgets.wide_teacher,
                budget_param: "wide_budget_ratio",
            },
            Search {
                name: "deep_teacher",
                rule: DepthRule::Max,
                budget_macs: self.budgets.deep_teacher,
                budget_param: "deep_budget_ratio",
            },
        ]
    }

    /// The generations loop: the three searches (search `i` seeded `seed + i`) sharing
    /// `ev`'s score cache, then the largest sub-net scored for reference. Reports progress
    /// per generation and checks the cancel token between searches.
    fn run<C, S>(
        &self,
        ev: &mut Evaluator<C, S>,
        searches: &[Search; 3],
        ctx: &StageContext<'_>,
    ) -> Result<SearchConfigs, StageError>
    where
        C: FnMut(&SubnetConfig) -> Result<ugc_nn::Cost, SearchError>,
        S: FnMut(&SubnetConfig) -> Result<f64, SearchError>,
    {
        let per_search = (self.evo.generations + 1) as u64;
        ctx.progress
            .start("search", searches.len() as u64 * per_search);
        let mut best = Vec::with_capacity(searches.len());
        for (i, s) in searches.iter().enumerate() {
            if ctx.cancel.is_cancelled() {
                return Err(StageError::Cancelled);
            }
            let task = SearchTask {
                space: &self.space,
                rule: s.rule,
                budget_macs: s.budget_macs,
                budget_param: s.budget_param,
            };
            let seed = self.seed.wrapping_add(i as u64);
            let progress = ctx.progress;
            let base = i as u64 * per_search;
            let c = evolve(ev, &task, &self.evo, seed, |g, best| {
                progress.set(base + g as u64 + 1);
                progress.message(&format!(
                    "{} gen {g}: best {} ({} MACs, score {:.4})",
                    s.name, best.config, best.macs, best.score
                ));
            })?;
            best.push(c);
        }
        let largest = ev.score(&self.largest)?;
        let [student, wide_teacher, deep_teacher]: [Candidate; 3] =
            best.try_into().expect("three searches");
        Ok(SearchConfigs {
            student: student.into(),
            wide_teacher: wide_teacher.into(),
            deep_teacher: deep_teacher.into(),
            largest: largest.into(),
        })
    }
}

impl StageKind for SearchStage {
    fn schema(&self) -> &KindSchema {
        &self.schema
    }

    /// Build (inputs, budgets, the evaluation closure), loop (the three searches), write
    /// (`configs.json`, Pareto logs, metrics, the searched student under `model/`).
    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let p: SearchParams = ctx.typed_params()?;
        if p.torch_threads > 0 {
            tch::set_num_threads(p.torch_threads);
        }
        let device = crate::device::tch_device(ctx.device)?;
        tch::manual_seed(p.seed as i64);

        // Build.
        let inputs = SearchInputs::open(ctx, device)?;
        let arch = &inputs.sup.arch;
        let plan = SearchPlan::new(&p, arch, inputs.sup.generator.search_space())?;
        let searches = plan.searches();
        let metric = p.metric;
        let mut scorer = HoldoutScorer::new(&inputs, ctx, device, &ScoringConfig::from(&p))?;
        let input_chw = plan.input_chw;
        let cost = |cfg: &SubnetConfig| {
            ugc_nn::profile(arch, Some(cfg), input_chw).map_err(|e| SearchError::Cost {
                config: cfg.to_string(),
                reason: e.to_string(),
            })
        };
        let mut ev = Evaluator::new(cost, |cfg: &SubnetConfig| scorer.score(cfg));

        // Loop.
        let configs = plan.run(&mut ev, &searches, ctx)?;

        // Write.
        write_outputs(ctx.out_dir, &configs, &ev.evaluated, metric, &plan.budgets)?;
        drop(ev);
        // The searched student as a sub-net of the supernet, before any distillation: the
        // "NAS" point of the seed's Figure 1, and the architecture a `train` stage can
        // re-train on the labels alone (`from_dep: search`).
        let student: SubnetConfig = configs.student.config.parse().map_err(|e| {
            StageError::Failed(format!("searched student config does not parse: {e}"))
        })?;
        scorer.recalibrate_for_export(&student)?;
        ugc_nn::export::export_subnet(
            inputs.sup.generator.as_ref(),
            &student,
            &ctx.out_dir.join("model"),
        )
        .map_err(|e| StageError::Failed(format!("exporting the searched student: {e}")))?;
        Ok(())
    }
}

/// Writes `configs.json`, the Pareto logs (`pareto.csv`, `pareto.json`: every evaluated
/// candidate) and `metrics.json`.
fn write_outputs(
    out: &Path,
    configs: &SearchConfigs,
    evaluated: &[Candidate],
    metric: Metric,
    budgets: &Budgets,
) -> Result<(), MethodError> {
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
    std::fs::write(&p, csv).map_err(|e| MethodError::io(&p, e))?;
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
            "search.budget_macs": budgets.student,
            "search.wide_budget_macs": budgets.wide_teacher,
            "search.deep_budget_macs": budgets.deep_teacher,
            "search.largest_macs": budgets.largest,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The search schema's defaults, as the stage receives them.
    fn schema_defaults() -> SearchParams {
        let schema = ugc_kinds::Kind::Search.schema();
        let params = ugc_kinds::testing::baseline_params(&schema);
        serde_json::from_value(serde_json::Value::Object(params)).unwrap()
    }

    #[test]
    fn config_defaults_are_the_schema_defaults() {
        let p = schema_defaults();
        assert_eq!(EvoConfig::from(&p), EvoConfig::default());
        assert_eq!(ScoringConfig::from(&p), ScoringConfig::default());
    }

    #[test]
    fn budgets_and_their_parameters_follow_budget_macs_or_budget_ratio() {
        let arch = ArchConfig {
            ngf: 8,
            n_blocks: 6,
            ..ArchConfig::new(ugc_nn::Arch::MobileResnet)
        };
        let space = || ugc_nn::search_space(&arch).unwrap();
        let p = SearchParams {
            input_size: Some(vec![3, 64, 64]),
            ..schema_defaults()
        };
        let largest = ugc_nn::profile(&arch, None, [3, 64, 64]).unwrap().macs;
        let plan = SearchPlan::new(&p, &arch, space()).unwrap();
        assert_eq!(plan.budgets.largest, largest);
        assert_eq!(plan.budgets.student, ratio_budget(largest, 0.25));
        assert_eq!(plan.budgets.wide_teacher, ratio_budget(largest, 0.6));
        let s = plan.searches();
        assert_eq!(
            s.map(|s| s.budget_param),
            ["budget_ratio", "wide_budget_ratio", "deep_budget_ratio"]
        );
        assert_eq!(
            s.map(|s| s.rule),
            [DepthRule::Free, DepthRule::Min, DepthRule::Max]
        );
        let plan = SearchPlan::new(
            &SearchParams {
                budget_macs: Some(12345.7),
                ..p.clone()
            },
            &arch,
            space(),
        )
        .unwrap();
        assert_eq!(plan.budgets.student, 12345);
        assert_eq!(plan.searches()[0].budget_param, "budget_macs");
        let bad = SearchPlan::new(
            &SearchParams {
                input_size: Some(vec![3, 64]),
                ..p
            },
            &arch,
            space(),
        );
        let e = bad.err().expect("two-value input_size").to_string();
        assert!(e.contains("input_size"), "{e}");
    }
}
