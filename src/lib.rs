//! The library of the `ugc-pipe` head binary, free of libtorch: the command line
//! ([`cli`]), the built-in stage kinds' schemas ([`stages`]), the run-time environment
//! ([`runtime`]) and the progress display ([`ui`]). The `ugc-pipe-worker` binary
//! (`src/bin/ugc-pipe-worker/`) adds libtorch and the stage kinds' code. The engine,
//! models, data and metrics live in their own crates (`crates/`).

pub mod cli;
pub mod runtime;
pub mod stages;
pub mod ui;
