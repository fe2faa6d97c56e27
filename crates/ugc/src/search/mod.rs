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

mod algorithm;
mod inputs;
mod stage;

pub use algorithm::{
    Candidate, DepthRule, Evaluator, EvoConfig, SearchError, SearchTask, evolve, pareto_front,
};
pub use inputs::{Metric, MetricScore, restore_running_stats, snapshot_running_stats};
pub use stage::{ChosenConfig, SearchConfigs, SearchStage};
