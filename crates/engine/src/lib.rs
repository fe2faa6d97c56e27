//! The pipeline engine of ugc-pipe, free of libtorch so it builds and tests in seconds.
//!
//! - [`spec`]: pipeline YAML -> validated, resolved spec (positions in every error).
//! - [`graph`]: spec + matrix -> deduplicated DAG of stage nodes (petgraph).
//! - [`cache`]: content-addressed store, versioned cache keys, records as commit points.
//! - [`lock`]: per-key locks with stale-pid detection.
//! - [`registry`]: SQLite run registry (runs, executions, metrics).
//! - [`executor`]: schedules nodes, runs one stage by key, commits.
//! - [`stage`]: the contract with the code of each stage kind.
//! - [`rank`]: a process's place in a data-parallel stage (torchrun's variables).

pub mod cache;
pub mod dotted;
pub mod events;
pub mod exec;
pub mod executor;
pub mod graph;
pub mod job;
pub mod lock;
pub mod plan;
pub mod rank;
pub mod registry;
pub mod slurm;
pub mod spec;
pub mod sqlite;
pub mod stage;
pub mod testing;

pub use stage::*;
