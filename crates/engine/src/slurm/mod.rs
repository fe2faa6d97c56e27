//! The Slurm executor's parts (issue 14): settings, the sbatch script of a stage, the
//! client of Slurm's commands, the worker's attempt file and heartbeat, and the state
//! machine that decides each stage's fate from the cache first and Slurm second, and
//! the head's record of every job (registry rows, progress from the log).
//! `executor::run_dag` drives them for `ugc-pipe run --executor slurm`; see
//! docs/engine.md, "Slurm executor".

pub mod attempt;
pub mod book;
pub mod monitor;
pub mod queue;
pub mod script;
pub mod settings;
