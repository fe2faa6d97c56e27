//! The evolutionary search itself: population, mutation, crossover and selection under a
//! MACs budget, with a score cache shared across searches.

use std::collections::HashMap;

use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use ugc_engine::StageError;
use ugc_nn::{SearchSpace, SubnetConfig};

/// Errors of the search algorithm itself (bad settings, an impossible budget).
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("parameter `{param}` = {value}: {reason}")]
    Param {
        param: String,
        value: String,
        reason: String,
    },
    #[error(
        "no sub-net fits the budget `{param}` = {budget} MACs: the smallest allowed sub-net \
         ({smallest}) needs {smallest_macs} MACs"
    )]
    BudgetTooSmall {
        param: String,
        budget: u64,
        smallest: String,
        smallest_macs: u64,
    },
    #[error("profiling {config}: {reason}")]
    Cost { config: String, reason: String },
    #[error("scoring {config}: {reason}")]
    Score { config: String, reason: String },
    /// The stage's cancel token was seen between two candidates.
    #[error("cancelled")]
    Cancelled,
}

impl From<SearchError> for StageError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Cancelled => StageError::Cancelled,
            SearchError::Score { .. } => StageError::Failed(e.to_string()),
            _ => StageError::Config(e.to_string()),
        }
    }
}

/// Evolution settings (DESIGN §2 defaults in [`EvoConfig::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvoConfig {
    pub population: usize,
    pub generations: usize,
    pub parent_ratio: f64,
    pub mutation_ratio: f64,
    pub mutate_prob: f64,
    /// Redraws allowed for one child before it falls back to (a copy of) a parent.
    pub max_tries: usize,
}

impl Default for EvoConfig {
    fn default() -> Self {
        EvoConfig {
            population: 100,
            generations: 10,
            parent_ratio: 0.25,
            mutation_ratio: 0.5,
            mutate_prob: 0.2,
            max_tries: 1000,
        }
    }
}

impl EvoConfig {
    /// Checks ranges; the error names the parameter.
    pub fn validate(&self) -> Result<(), SearchError> {
        let bad = |p: &str, v: String, r: &str| SearchError::Param {
            param: p.into(),
            value: v,
            reason: r.into(),
        };
        if self.population < 2 {
            return Err(bad(
                "population",
                self.population.to_string(),
                "must be at least 2",
            ));
        }
        for (p, v) in [
            ("parent_ratio", self.parent_ratio),
            ("mutation_ratio", self.mutation_ratio),
        ] {
            if !(v > 0.0 && v < 1.0) {
                return Err(bad(p, v.to_string(), "must be in (0, 1)"));
            }
        }
        if self.parent_ratio + self.mutation_ratio > 1.0 {
            return Err(bad(
                "mutation_ratio",
                self.mutation_ratio.to_string(),
                "parent_ratio + mutation_ratio must be at most 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.mutate_prob) {
            return Err(bad(
                "mutate_prob",
                self.mutate_prob.to_string(),
                "must be in [0, 1]",
            ));
        }
        if self.max_tries == 0 {
            return Err(bad("max_tries", "0".into(), "must be at least 1"));
        }
        Ok(())
    }

    fn n_parents(&self) -> usize {
        ((self.population as f64 * self.parent_ratio).round() as usize).max(1)
    }

    fn n_mutations(&self) -> usize {
        (self.population as f64 * self.mutation_ratio).round() as usize
    }
}

/// Which depth-elastic blocks a search may vary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DepthRule {
    /// Any present/skipped pattern the space allows (the student).
    Free,
    /// Every skippable block skipped (the wide teacher).
    Min,
    /// Every block present (the deep teacher).
    Max,
}

impl DepthRule {
    /// Forces `cfg`'s depth switches to the rule.
    pub fn apply(self, cfg: &mut SubnetConfig, space: &SearchSpace) {
        match self {
            DepthRule::Free => {}
            DepthRule::Min => {
                cfg.depth = space.blocks.iter().map(|b| !b.skippable).collect();
            }
            DepthRule::Max => cfg.depth = vec![true; space.blocks.len()],
        }
    }
}

/// A scored candidate. `score` is higher-is-better.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub config: String,
    pub macs: u64,
    pub params: u64,
    pub score: f64,
}

/// Profiles and scores configs, remembering every result so that a config is scored once
/// across generations and across the student / teacher searches.
pub struct Evaluator<C, S>
where
    C: FnMut(&SubnetConfig) -> Result<ugc_nn::Cost, SearchError>,
    S: FnMut(&SubnetConfig) -> Result<f64, SearchError>,
{
    cost: C,
    score: S,
    costs: HashMap<SubnetConfig, ugc_nn::Cost>,
    scores: HashMap<SubnetConfig, f64>,
    /// Every scored candidate, in the order first scored.
    pub evaluated: Vec<Candidate>,
}

impl<C, S> Evaluator<C, S>
where
    C: FnMut(&SubnetConfig) -> Result<ugc_nn::Cost, SearchError>,
    S: FnMut(&SubnetConfig) -> Result<f64, SearchError>,
{
    pub fn new(cost: C, score: S) -> Self {
        Evaluator {
            cost,
            score,
            costs: HashMap::new(),
            scores: HashMap::new(),
            evaluated: Vec::new(),
        }
    }

    /// MACs and params of `cfg` (cached).
    pub fn cost(&mut self, cfg: &SubnetConfig) -> Result<ugc_nn::Cost, SearchError> {
        if let Some(c) = self.costs.get(cfg) {
            return Ok(*c);
        }
        let c = (self.cost)(cfg)?;
        self.costs.insert(cfg.clone(), c);
        Ok(c)
    }

    /// Score of `cfg` (cached); records the candidate the first time.
    pub fn score(&mut self, cfg: &SubnetConfig) -> Result<Candidate, SearchError> {
        let c = self.cost(cfg)?;
        let score = match self.scores.get(cfg) {
            Some(s) => *s,
            None => {
                let s = (self.score)(cfg)?;
                if !s.is_finite() {
                    return Err(SearchError::Score {
                        config: cfg.to_string(),
                        reason: format!("the score is not finite ({s})"),
                    });
                }
                self.scores.insert(cfg.clone(), s);
                self.evaluated.push(Candidate {
                    config: cfg.to_string(),
                    macs: c.macs,
                    params: c.params,
                    score: s,
                });
                s
            }
        };
        Ok(Candidate {
            config: cfg.to_string(),
            macs: c.macs,
            params: c.params,
            score,
        })
    }
}

/// One search: the space, the depth rule and the budget (with the parameter that set it,
/// for error messages).
#[derive(Debug, Clone)]
pub struct SearchTask<'a> {
    pub space: &'a SearchSpace,
    pub rule: DepthRule,
    pub budget_macs: u64,
    pub budget_param: &'a str,
}

fn draw_within<C, S, R>(
    ev: &mut Evaluator<C, S>,
    task: &SearchTask<'_>,
    tries: usize,
    rng: &mut R,
    mut make: impl FnMut(&mut R) -> SubnetConfig,
) -> Result<Option<SubnetConfig>, SearchError>
where
    C: FnMut(&SubnetConfig) -> Result<ugc_nn::Cost, SearchError>,
    S: FnMut(&SubnetConfig) -> Result<f64, SearchError>,
    R: Rng,
{
    for _ in 0..tries {
        let mut c = make(rng);
        task.rule.apply(&mut c, task.space);
        if ev.cost(&c)?.macs <= task.budget_macs {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

fn mutate<R: Rng>(parent: &SubnetConfig, space: &SearchSpace, p: f64, rng: &mut R) -> SubnetConfig {
    let mut c = parent.clone();
    for (w, choice) in c.widths.iter_mut().zip(&space.widths) {
        if rng.random_bool(p) {
            *w = choice.choices[rng.random_range(0..choice.choices.len())];
        }
    }
    for (d, b) in c.depth.iter_mut().zip(&space.blocks) {
        if b.skippable && rng.random_bool(p) {
            *d = rng.random_bool(0.5);
        }
    }
    c
}

fn crossover<R: Rng>(a: &SubnetConfig, b: &SubnetConfig, rng: &mut R) -> SubnetConfig {
    SubnetConfig {
        widths: a
            .widths
            .iter()
            .zip(&b.widths)
            .map(|(x, y)| if rng.random_bool(0.5) { *x } else { *y })
            .collect(),
        depth: a
            .depth
            .iter()
            .zip(&b.depth)
            .map(|(x, y)| if rng.random_bool(0.5) { *x } else { *y })
            .collect(),
    }
}

/// Sorts best first; ties broken by MACs then by config string, so the order (and the
/// whole search) is deterministic for a seed.
fn rank(pop: &mut [Candidate]) {
    pop.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.macs.cmp(&b.macs))
            .then(a.config.cmp(&b.config))
    });
}

/// Runs one evolutionary search and returns the best candidate found. Every candidate it
/// scores satisfies `task.budget_macs` and `task.rule`.
pub fn evolve<C, S>(
    ev: &mut Evaluator<C, S>,
    task: &SearchTask<'_>,
    evo: &EvoConfig,
    seed: u64,
    mut on_generation: impl FnMut(usize, &Candidate),
) -> Result<Candidate, SearchError>
where
    C: FnMut(&SubnetConfig) -> Result<ugc_nn::Cost, SearchError>,
    S: FnMut(&SubnetConfig) -> Result<f64, SearchError>,
{
    evo.validate()?;
    let space = task.space;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // The smallest config under the rule: if it does not fit, nothing does.
    let mut smallest = space.smallest();
    task.rule.apply(&mut smallest, space);
    let smallest_macs = ev.cost(&smallest)?.macs;
    if smallest_macs > task.budget_macs {
        return Err(SearchError::BudgetTooSmall {
            param: task.budget_param.into(),
            budget: task.budget_macs,
            smallest: smallest.to_string(),
            smallest_macs,
        });
    }
    let mut configs = Vec::with_capacity(evo.population);
    for _ in 0..evo.population {
        let c = draw_within(ev, task, evo.max_tries, &mut rng, |r| space.sample(r))?;
        // A budget so tight that random draws miss it: the smallest sub-net always fits.
        configs.push(c.unwrap_or_else(|| smallest.clone()));
    }
    let mut best: Option<Candidate> = None;
    for generation in 0..=evo.generations {
        let mut pop = Vec::with_capacity(configs.len());
        for c in &configs {
            pop.push(ev.score(c)?);
        }
        rank(&mut pop);
        if best.as_ref().is_none_or(|b| {
            pop[0].score > b.score || (pop[0].score == b.score && pop[0].macs < b.macs)
        }) {
            best = Some(pop[0].clone());
        }
        on_generation(generation, best.as_ref().expect("set above"));
        if generation == evo.generations {
            break;
        }
        let parents: Vec<SubnetConfig> = pop[..evo.n_parents().min(pop.len())]
            .iter()
            .map(|c| {
                c.config
                    .parse()
                    .expect("candidates hold valid config strings")
            })
            .collect();
        let mut next = parents.clone();
        for _ in 0..evo.n_mutations() {
            let p = parents[rng.random_range(0..parents.len())].clone();
            let c = draw_within(ev, task, evo.max_tries, &mut rng, |r| {
                mutate(&p, space, evo.mutate_prob, r)
            })?;
            next.push(c.unwrap_or(p));
        }
        while next.len() < evo.population {
            let a = parents[rng.random_range(0..parents.len())].clone();
            let b = parents[rng.random_range(0..parents.len())].clone();
            let c = draw_within(ev, task, evo.max_tries, &mut rng, |r| crossover(&a, &b, r))?;
            next.push(c.unwrap_or(a));
        }
        configs = next;
    }
    Ok(best.expect("at least one generation ran"))
}

/// Marks the non-dominated candidates (fewer MACs and higher score are better): `a`
/// dominates `b` when it is no worse in both and strictly better in one. Exact duplicates
/// of a front point are all on the front.
pub fn pareto_front(cands: &[Candidate]) -> Vec<bool> {
    cands
        .iter()
        .map(|b| {
            !cands.iter().any(|a| {
                a.macs <= b.macs && a.score >= b.score && (a.macs < b.macs || a.score > b.score)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ugc_nn::{Arch, ArchConfig, BlockChoice, Cost, WidthChoice};

    /// 4 positions x 3 widths x 2 skippable blocks = 324 sub-nets; MACs = sum of squared
    /// widths + 100 per present block.
    fn toy_space() -> SearchSpace {
        SearchSpace {
            widths: (0..4)
                .map(|i| WidthChoice {
                    name: format!("p{i}"),
                    full: 8,
                    choices: vec![2, 4, 8],
                })
                .collect(),
            blocks: (0..3)
                .map(|i| BlockChoice {
                    name: format!("block{i}"),
                    skippable: i >= 1,
                })
                .collect(),
        }
    }

    fn toy_cost(c: &SubnetConfig) -> Result<Cost, SearchError> {
        let w: i64 = c.widths.iter().map(|w| w * w).sum();
        let d = c.depth.iter().filter(|&&b| b).count() as i64;
        Ok(Cost {
            macs: (w + 100 * d) as u64,
            params: c.widths.iter().sum::<i64>() as u64,
        })
    }

    fn small_evo() -> EvoConfig {
        EvoConfig {
            population: 20,
            generations: 12,
            ..EvoConfig::default()
        }
    }

    #[test]
    fn finds_the_known_optimum_of_a_synthetic_score() {
        let space = toy_space();
        let target: SubnetConfig = "w=8_2_4_8;d=1_0_1".parse().unwrap();
        // Target MACs: 64+4+16+64 + 200 = 348; the budget admits it but not everything.
        let budget = 360;
        let t = target.clone();
        let score = move |c: &SubnetConfig| -> Result<f64, SearchError> {
            let dw: i64 = c
                .widths
                .iter()
                .zip(&t.widths)
                .map(|(a, b)| (a - b).abs())
                .sum();
            let dd = c.depth.iter().zip(&t.depth).filter(|(a, b)| a != b).count() as i64;
            Ok(-((dw + 4 * dd) as f64))
        };
        let mut ev = Evaluator::new(toy_cost, score);
        let task = SearchTask {
            space: &space,
            rule: DepthRule::Free,
            budget_macs: budget,
            budget_param: "budget_macs",
        };
        let best = evolve(&mut ev, &task, &small_evo(), 3, |_, _| {}).unwrap();
        assert_eq!(best.config, target.to_string());
        assert_eq!(best.score, 0.0);
        // Every scored candidate is inside the budget and in the space.
        for c in &ev.evaluated {
            assert!(c.macs <= budget, "{} has {} MACs", c.config, c.macs);
            assert!(space.contains(&c.config.parse().unwrap()));
        }
        // The search did not enumerate the space.
        assert!(ev.evaluated.len() < 324, "{}", ev.evaluated.len());
    }

    #[test]
    fn every_candidate_respects_the_budget_checked_with_the_profiler() {
        let arch = ArchConfig {
            ngf: 8,
            n_blocks: 6,
            ..ArchConfig::new(Arch::MobileResnet)
        };
        let space = ugc_nn::search_space(&arch).unwrap();
        let input = [3, 64, 64];
        let largest = ugc_nn::profile(&arch, None, input).unwrap().macs;
        let budget = largest * 3 / 10;
        let cost = |c: &SubnetConfig| {
            ugc_nn::profile(&arch, Some(c), input).map_err(|e| SearchError::Cost {
                config: c.to_string(),
                reason: e.to_string(),
            })
        };
        let mut seen = 0usize;
        // The score re-profiles independently: a candidate over budget fails the test.
        let score = |c: &SubnetConfig| -> Result<f64, SearchError> {
            let m = ugc_nn::profile(&arch, Some(c), input).unwrap().macs;
            assert!(m <= budget, "{c} scored with {m} MACs > budget {budget}");
            seen += 1;
            Ok(m as f64) // prefer big sub-nets: pushes against the budget
        };
        let mut ev = Evaluator::new(cost, score);
        for rule in [DepthRule::Free, DepthRule::Min, DepthRule::Max] {
            let task = SearchTask {
                space: &space,
                rule,
                budget_macs: budget,
                budget_param: "budget_ratio",
            };
            let best = evolve(&mut ev, &task, &small_evo(), 1, |_, _| {}).unwrap();
            let cfg: SubnetConfig = best.config.parse().unwrap();
            match rule {
                DepthRule::Min => assert!(
                    cfg.depth
                        .iter()
                        .zip(&space.blocks)
                        .all(|(d, b)| *d != b.skippable)
                ),
                DepthRule::Max => assert!(cfg.depth.iter().all(|d| *d)),
                DepthRule::Free => {}
            }
            assert!(best.macs <= budget);
            // Pushing for MACs gets close to the budget.
            assert!(best.macs as f64 > 0.8 * budget as f64, "{}", best.macs);
        }
        drop(ev);
        assert!(seen > 20);
    }

    #[test]
    fn impossible_budget_names_the_parameter() {
        let space = toy_space();
        let mut ev = Evaluator::new(toy_cost, |_: &SubnetConfig| Ok(0.0));
        let task = SearchTask {
            space: &space,
            rule: DepthRule::Max,
            budget_macs: 200,
            budget_param: "deep_budget_ratio",
        };
        let e = evolve(&mut ev, &task, &small_evo(), 0, |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("deep_budget_ratio") && e.contains("316"), "{e}");
        let bad = EvoConfig {
            parent_ratio: 0.0,
            ..small_evo()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("parent_ratio"), "{e}");
    }

    #[test]
    fn same_seed_same_search_other_seed_other_path() {
        let space = toy_space();
        let run = |seed| {
            let score = |c: &SubnetConfig| -> Result<f64, SearchError> {
                Ok(c.widths
                    .iter()
                    .enumerate()
                    .map(|(i, w)| (w * (i as i64 + 1)) as f64)
                    .sum::<f64>()
                    - 7.0 * c.depth.iter().filter(|&&d| d).count() as f64)
            };
            let mut ev = Evaluator::new(toy_cost, score);
            let task = SearchTask {
                space: &space,
                rule: DepthRule::Free,
                budget_macs: 250,
                budget_param: "budget_macs",
            };
            let best = evolve(&mut ev, &task, &small_evo(), seed, |_, _| {}).unwrap();
            (best, ev.evaluated)
        };
        let (a, ea) = run(5);
        let (b, eb) = run(5);
        assert_eq!(a, b);
        assert_eq!(ea, eb);
        let (_, ec) = run(6);
        assert_ne!(ea, ec);
    }

    fn cand(macs: u64, score: f64) -> Candidate {
        Candidate {
            config: format!("w={macs}"),
            macs,
            params: 0,
            score,
        }
    }

    #[test]
    fn pareto_front_keeps_exactly_the_non_dominated() {
        let c = vec![
            cand(10, 1.0), // front: cheapest
            cand(20, 3.0), // front
            cand(20, 2.0), // dominated by (20, 3)
            cand(30, 3.0), // dominated by (20, 3): same score, more MACs
            cand(40, 5.0), // front: best score
            cand(15, 0.5), // dominated by (10, 1)
            cand(40, 5.0), // duplicate of a front point: kept
        ];
        assert_eq!(
            pareto_front(&c),
            vec![true, true, false, false, true, false, true]
        );
        assert!(pareto_front(&[]).is_empty());
    }
}
