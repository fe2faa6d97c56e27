//! Command-line surface (names fixed by DESIGN.md section 5). Each verb group lives in its
//! own module; this one parses arguments and maps results to exit codes:
//! 0 success, 1 a stage or command failed, 2 bad input (usage, pipeline, data), 130 interrupted.

pub mod args;
mod exp;
pub mod forward;
mod logs;
pub mod metrics;
mod names;
mod pipeline;
pub mod store;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use metrics::MetricsVerb;

use crate::runtime::DeviceChoice;

/// Exit code for bad user input (usage, pipeline file, parameters).
pub const EXIT_USAGE: i32 = 2;
/// Exit code for a failed stage or command.
pub const EXIT_FAILED: i32 = 1;
/// Exit code after SIGINT/SIGTERM.
pub const EXIT_INTERRUPTED: i32 = 130;

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn usage(msg: impl std::fmt::Display) -> Self {
        Self {
            code: EXIT_USAGE,
            message: msg.to_string(),
        }
    }
    pub fn failed(msg: impl std::fmt::Display) -> Self {
        Self {
            code: EXIT_FAILED,
            message: msg.to_string(),
        }
    }
}

pub type CliResult = Result<i32, CliError>;

/// `--json`: prints `value` as one JSON line; otherwise runs `text`, which prints for people.
pub fn print_json_or<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce(),
) -> Result<(), CliError> {
    if json {
        println!(
            "{}",
            serde_json::to_string(value).map_err(CliError::failed)?
        );
    } else {
        text();
    }
    Ok(())
}

#[derive(Parser, Debug)]
#[command(
    name = "ugc-pipe",
    version,
    about = "Compress image-to-image GANs with UGC, as cached, resumable pipelines"
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Verb,
}

/// Options shared by the verbs that read a pipeline.
#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    /// The pipeline YAML file.
    pub pipeline: PathBuf,
    /// Override a parameter: `--set lr=0.1` (pipeline param) or `--set split.seed=3` (stage param).
    #[arg(long = "set", value_name = "K=V")]
    pub set: Vec<String>,
    /// Cache root (default: `cache/` of the project holding the pipeline; env UGC_PIPE_CACHE).
    #[arg(long, env = "UGC_PIPE_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// Device for stages that use the accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
}

/// Which cache the verbs on a cache (`runs`, `gc`, `unlock`, `verify`) use: the rule of
/// every verb (README "Where the cache is"): `--cache-dir`, else `UGC_PIPE_CACHE`, else
/// the pipeline's project `cache/` (as `run` uses), else the nearest `cache/` in the
/// current directory or one of its parents.
#[derive(Args, Debug, Clone)]
pub struct CacheArgs {
    /// A pipeline whose project's cache to use, as `run` would (`runs` then lists its runs
    /// only).
    #[arg(value_name = "PIPELINE")]
    pub pipeline: Option<PathBuf>,
    /// Cache root (default: PIPELINE's project `cache/`, else the nearest `cache/` here or
    /// in a parent folder; env UGC_PIPE_CACHE).
    #[arg(long, env = "UGC_PIPE_CACHE")]
    pub cache_dir: Option<PathBuf>,
}

/// Where `run` executes its stages.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutorKind {
    /// Stage processes on this machine.
    #[default]
    Local,
    /// One `sbatch` job per stage, against a cache on a shared filesystem.
    Slurm,
}

/// `run`'s executor options.
#[derive(Args, Debug, Clone)]
pub struct ExecutorArgs {
    /// Run stages on this machine (`local`) or as Slurm jobs (`slurm`).
    #[arg(long, value_enum, default_value = "local")]
    pub executor: ExecutorKind,
    /// Executor settings for this site (a YAML mapping); beats the pipeline's `executor:`.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Override one executor setting: `--executor-set partition=gpu`. Repeatable; beats
    /// the profile.
    #[arg(long = "executor-set", value_name = "K=V")]
    pub executor_set: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Run a pipeline: execute what is not cached.
    Run {
        #[command(flatten)]
        p: PipelineArgs,
        /// Run only these stages (all their matrix nodes) or node ids, and what they need
        /// (their ancestors); none: the whole pipeline.
        #[arg(value_name = "TARGET")]
        targets: Vec<String>,
        /// Print the plan (what runs, what is cached, why) and run nothing.
        #[arg(long)]
        dry_run: bool,
        /// Re-run this stage (all its matrix instances) even if cached. Repeatable.
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        /// Let independent branches finish after a stage fails.
        #[arg(long)]
        keep_going: bool,
        /// Stages run at the same time (at most one per GPU). Default: number of CPUs.
        #[arg(long, short = 'j', value_parser = args::parse_jobs)]
        jobs: Option<usize>,
        /// Machine-readable output: one JSON object per line on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        executor: ExecutorArgs,
    },
    /// Cached / stale (with reason) / missing, per stage.
    Status {
        #[command(flatten)]
        p: PipelineArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the DAG.
    Dag {
        #[command(flatten)]
        p: PipelineArgs,
        /// Graphviz `dot` or a `mermaid` flowchart.
        #[arg(long, value_enum, default_value = "dot")]
        format: DagFormat,
    },
    /// Which component of a stage's cache key changed since its last run.
    Explain {
        #[command(flatten)]
        p: PipelineArgs,
        /// Stage name or node id (e.g. `distill[label_ratio=0.25]`).
        stage: String,
    },
    /// Metrics across matrix points, one row per node.
    Show {
        #[command(flatten)]
        p: PipelineArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print one node's output folder, nothing else (for scripts: `cd $(ugc-pipe path P
    /// report)`); exit 1 when it is not computed yet.
    Path {
        #[command(flatten)]
        p: PipelineArgs,
        /// Stage name (a stage of one node) or node id (e.g. `distill[label_ratio=0.25]`).
        node: String,
    },
    /// Print a stage's log by its name (the latest run that started it); `-f` follows it
    /// until the stage ends.
    Logs {
        #[command(flatten)]
        p: PipelineArgs,
        /// Stage name or node id (e.g. `distill[label_ratio=0.25]`).
        stage: String,
        /// Keep printing what is appended until the stage ends.
        #[arg(short, long)]
        follow: bool,
        /// The training loop's `log.csv` (step and losses) instead of the stage log.
        #[arg(long)]
        csv: bool,
    },
    /// Compare the runs of a pipeline: `exp show P` puts overrides and the parameters that
    /// differ against metrics, one row per run and matrix point; `--diff A [B]`.
    Exp {
        #[command(subcommand)]
        which: exp::ExpVerb,
    },
    /// Recent runs from the run registry.
    Runs {
        #[command(flatten)]
        cache: CacheArgs,
        /// How many of the latest runs to list.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Show the stage executions of this run id.
        #[arg(long)]
        run: Option<i64>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove unreferenced objects, orphan views and stale temporary directories.
    Gc {
        #[command(flatten)]
        cache: CacheArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove locks left by dead processes.
    Unlock {
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Re-hash every object; corrupt ones are removed so their stages re-run.
    Verify {
        #[command(flatten)]
        cache: CacheArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// MACs and parameters of a model or sub-net, counted analytically (torchprofile conventions).
    Profile {
        #[command(flatten)]
        arch: args::ArchArgs,
        /// Input shape CxHxW, e.g. 3x256x256 (C sets the input channels).
        #[arg(long)]
        input: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run a generator on one image (official pix2pix pre/post-processing).
    Infer {
        #[command(flatten)]
        arch: args::ArchArgs,
        /// Weights: a safetensors or torch.save (.pth/.pt) state dict with the architecture's
        /// names, or an exported model folder.
        #[arg(long)]
        weights: PathBuf,
        /// Input image.
        #[arg(long)]
        input: PathBuf,
        /// Where to write the generated image (PNG).
        #[arg(long)]
        output: PathBuf,
        /// Resize the input to this square size first (official test: 256).
        #[arg(long)]
        load_size: Option<u32>,
        /// Instance map of a label-map input (e.g. Cityscapes *_instanceIds.png): its edges
        /// (pix2pixHD / SPADE get_edges) are the last input channel.
        #[arg(long)]
        instance: Option<PathBuf>,
        /// Eval mode (the default): running BN statistics, no dropout, as pix2pix's test.py
        /// with --eval, and SPADE's and GAN Compression's test scripts.
        #[arg(long, conflicts_with = "train_mode")]
        eval: bool,
        /// Train mode: batch statistics and dropout, as pix2pix's test.py runs without --eval.
        #[arg(long)]
        train_mode: bool,
        /// Where to run: CUDA when a GPU is visible (auto), or cpu / cuda.
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check an official checkpoint (safetensors, or a .pth/.pt as torch.save wrote it) against
    /// an architecture; reports every missing, unexpected or mis-shaped tensor. With --out,
    /// writes a model folder.
    Import {
        #[command(flatten)]
        arch: args::ArchArgs,
        /// The checkpoint with its official tensor names (safetensors or .pth/.pt; DataParallel
        /// `module.` prefixes and nested `state_dict`/`netG` keys are handled).
        #[arg(long)]
        weights: PathBuf,
        /// Write a model folder (model.safetensors + model.json) here when the check passes.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Export a sub-net (--config) of supernet weights as a compact standalone model folder.
    Export {
        #[command(flatten)]
        arch: args::ArchArgs,
        /// Supernet (or full-model) weights (safetensors or .pth/.pt) with the architecture's names.
        #[arg(long)]
        weights: PathBuf,
        /// Output model folder (model.safetensors + model.json).
        #[arg(long)]
        out: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Metrics on results made elsewhere.
    Metrics {
        #[command(subcommand)]
        which: MetricsVerb,
    },
    /// Write a built-in synthetic dataset (no download).
    Synth {
        /// labels2photo (Cityscapes-like label maps) or edges2photo (edges2shoes-like).
        #[arg(long, value_parser = ["labels2photo", "edges2photo"])]
        task: String,
        /// Number of training images.
        #[arg(long)]
        n: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 64)]
        size: u32,
        /// Output dataset directory.
        #[arg(long)]
        out: PathBuf,
        /// Generator seed: the same seed writes the same images.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run one stage by its cache key (what the head process starts per stage; a cluster
    /// executor can run it on another machine against a shared cache).
    #[command(hide = true)]
    Exec {
        #[arg(long)]
        key: String,
        #[arg(long)]
        cache_dir: PathBuf,
        #[arg(long)]
        force: bool,
        /// The registry run this stage belongs to: its job is `jobs/<run>/<key>.json` and
        /// its execution is recorded under that run. Without it, `jobs/<key>.json`.
        #[arg(long)]
        run: Option<i64>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DagFormat {
    Dot,
    Mermaid,
}

/// Restores the default action of SIGPIPE (Rust ignores it, so that `println!` to a closed
/// pipe panics): `ugc-pipe runs | head` then ends quietly, as Unix tools do. A stage
/// process (`ugc-pipe-worker exec`) must not call this: it keeps running and commits even
/// when the scheduler that reads its events has gone.
pub fn exit_quietly_when_stdout_closes() {
    #[cfg(unix)]
    // SAFETY: called once at start-up, before any thread exists; SIG_DFL is always valid.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Parses the command line, runs the verb, returns the process exit code. Verbs that
/// need libtorch (exec, profile, infer, import, export, metrics, synth) are handed to
/// `ugc-pipe-worker` after their arguments are checked here.
pub fn main() -> i32 {
    exit_quietly_when_stdout_closes();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    if cli.command.runs_in_worker() {
        return report(forward::to_worker());
    }
    let json = matches!(
        cli.command,
        Verb::Run { json: true, .. } | Verb::Status { json: true, .. }
    );
    let bars = crate::ui::init_logging(cli.verbose, json);
    let result = match cli.command {
        Verb::Run {
            p,
            targets,
            dry_run,
            force,
            keep_going,
            jobs,
            json,
            executor,
        } => pipeline::run(
            &p, &targets, &executor, dry_run, &force, keep_going, jobs, json, bars,
        ),
        Verb::Status { p, json } => pipeline::status(&p, json),
        Verb::Dag { p, format } => pipeline::dag(&p, format),
        Verb::Explain { p, stage } => pipeline::explain(&p, &stage),
        Verb::Show { p, json } => pipeline::show(&p, json),
        Verb::Path { p, node } => pipeline::path(&p, &node),
        Verb::Logs {
            p,
            stage,
            follow,
            csv,
        } => logs::logs(&p, &stage, follow, csv),
        Verb::Exp { which } => exp::exp(&which),
        Verb::Runs {
            cache,
            limit,
            run,
            json,
        } => store::runs(&cache, limit, run, json),
        Verb::Gc { cache, json } => store::gc(&cache, json),
        Verb::Unlock { cache } => store::unlock(&cache),
        Verb::Verify { cache, json } => store::verify(&cache, json),
        Verb::Exec { .. }
        | Verb::Profile { .. }
        | Verb::Infer { .. }
        | Verb::Import { .. }
        | Verb::Export { .. }
        | Verb::Metrics { .. }
        | Verb::Synth { .. } => unreachable!("handed to the worker above"),
    };
    report(result)
}

/// Prints an error and returns the exit code.
pub fn report(result: CliResult) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.message);
            e.code
        }
    }
}

impl Verb {
    /// Verbs that need libtorch or the stage kinds' code.
    pub fn runs_in_worker(&self) -> bool {
        matches!(
            self,
            Verb::Exec { .. }
                | Verb::Profile { .. }
                | Verb::Infer { .. }
                | Verb::Import { .. }
                | Verb::Export { .. }
                | Verb::Metrics { .. }
                | Verb::Synth { .. }
        )
    }
}
