//! Stage two, part one: evolutionary search of sub-nets under MACs budgets.
//!
//! The evolution follows GAN Compression / CAT (DESIGN §2): a population of sub-nets sampled
//! *only* inside the budget, the best `parent_ratio` kept as parents, `mutation_ratio` of the
//! next population made by mutating a parent (each gene resampled with `mutate_prob`), the
//! rest by uniform crossover of two parents. A child outside the budget is redrawn, so the
//! budget, measured by the analytic profiler, holds for *every* candidate ever scored.
//!
//! Three searches run in the same space and share one score cache:
//! - the student: free depth, `budget`;
//! - the wide teacher: every skippable block skipped (minimal depth), widths under the wide
//!   teacher budget (OMGD's wide teacher: capacity from width only);
//! - the deep teacher: every block present (maximal depth), widths under the deep teacher
//!   budget (OMGD's deep teacher: the extra residual blocks present).
//!
//! Scores are "higher is better": `-L1`, PSNR (dB) or SSIM on the split's search hold-out
//! (never the test split), after BN recalibration for BN families.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn::VarStore};
use ugc_data::{InputEncoding, Loader, LoaderConfig, SplitManifest, Subset};
use ugc_engine::{KindSchema, StageContext, StageError, StageKind};
use ugc_nn::{ArchConfig, Generator, Mode, SearchSpace, SubnetConfig, build_generator};

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

// ---------------------------------------------------------------------------------------
// Inputs shared by the stage kinds of this module family (search, teachers, adf, distill).
// ---------------------------------------------------------------------------------------

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StageError + '_ {
    move |e| StageError::io(path.display().to_string(), e)
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StageError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| StageError::Data(format!("{}: {e}", path.display())))
}

pub(crate) fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), StageError> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| StageError::Failed(format!("serialising {}: {e}", path.display())))?;
    std::fs::write(path, text).map_err(io_err(path))
}

pub(crate) fn nn_err(
    context: impl std::fmt::Display,
) -> impl FnOnce(ugc_nn::NnError) -> StageError {
    move |e| StageError::Failed(format!("{context}: {e}"))
}

pub(crate) fn data_err(
    context: impl std::fmt::Display,
) -> impl FnOnce(ugc_data::DataError) -> StageError {
    move |e| StageError::Data(format!("{context}: {e}"))
}

/// A supernet stage's weights, loaded: `supernet/arch.json` + `supernet/generator.safetensors`.
pub struct LoadedSupernet {
    pub arch: ArchConfig,
    pub vs: VarStore,
    pub generator: Box<dyn Generator>,
}

/// Loads the generator supernet from a `supernet` stage output folder.
pub fn load_supernet(dir: &Path, device: Device) -> Result<LoadedSupernet, StageError> {
    let arch: ArchConfig = read_json(&dir.join("supernet/arch.json"))?;
    let mut vs = VarStore::new(device);
    let generator = build_generator(&vs.root(), &arch).map_err(nn_err(format!(
        "{}",
        dir.join("supernet/arch.json").display()
    )))?;
    let w = dir.join("supernet/generator.safetensors");
    vs.load(&w)
        .map_err(|e| StageError::Data(format!("{}: {e}", w.display())))?;
    Ok(LoadedSupernet {
        arch,
        vs,
        generator,
    })
}

/// How a split's inputs are encoded for a generator of `arch`.
pub fn input_encoding(arch: &ArchConfig, m: &SplitManifest) -> Result<InputEncoding, StageError> {
    // The same rule the supernet stage trained with (`setup::encoding_for`).
    Ok(crate::setup::encoding_for(arch, m)?)
}

/// How evaluation batches are prepared: the generator's input encoding, an optional square
/// resize (as the supernet trained), and the device.
#[derive(Debug, Clone, Copy)]
pub struct EvalSpec {
    pub encoding: InputEncoding,
    pub image_size: Option<u32>,
    pub device: Device,
}

/// Reads up to `max_batches` batches of a subset (fixed order, no augmentation) into memory.
pub fn read_batches(
    manifest: &SplitManifest,
    split_dir: &Path,
    subset: Subset,
    batch_size: usize,
    max_batches: usize,
    spec: &EvalSpec,
) -> Result<Vec<ugc_data::Batch>, StageError> {
    let mut cfg = LoaderConfig {
        encoding: spec.encoding,
        device: spec.device,
        threads: 1,
        ..LoaderConfig::eval(batch_size)
    };
    cfg.augment.load_size = spec.image_size.map(|s| (s, s));
    let loader = Loader::new(manifest, split_dir, subset, cfg).map_err(data_err(format!(
        "{subset:?} loader of {}",
        split_dir.display()
    )))?;
    let mut out = Vec::new();
    for b in loader.epoch(0).take(max_batches) {
        out.push(b.map_err(data_err(format!(
            "{subset:?} batch of {}",
            split_dir.display()
        )))?);
    }
    Ok(out)
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

// ---------------------------------------------------------------------------------------
// The `search` stage kind.
// ---------------------------------------------------------------------------------------

use ugc_kinds::search::Params as SearchParams;

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

    fn open(scratch: &Path) -> Result<Self, StageError> {
        std::fs::create_dir_all(scratch).map_err(io_err(scratch))?;
        let path = scratch.join(Self::FILE);
        let mut known = HashMap::new();
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
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
            .map_err(io_err(&path))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use ugc_nn::{Arch, BlockChoice, Cost, WidthChoice};

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

    #[test]
    fn bn_statistics_are_restored_after_a_candidate_recalibration() {
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
