//! The CLI integration tests of `ugc-pipe`, in one binary (one link with libtorch):
//! `cargo test -p ugc-pipe --test it <file>::` runs one file's tests, e.g. `pipelines::`.

mod binaries;
mod common;
mod cuda;
mod data_parallel;
mod engine_cli;
mod experiments;
mod live;
mod metrics_cli;
mod model_cli;
mod outputs;
mod paper_pipelines;
mod pipelines;
mod quickstart;
mod slurm;
mod targets;
