//! `ugc-pipe-worker exec --key K --cache-dir D [--run R]`: runs one stage by its cache key (what
//! the head process starts per stage; a cluster executor can run it on another machine
//! against a shared cache).
//!
//! Data-parallel stages: with `WORLD_SIZE > 1` in the environment (torchrun's variables,
//! set by the local launcher, `srun` or a user) this process is one rank: rank 0 runs the
//! stage as one process would (lock, commit, registry), the others run it without any of
//! those (`exec_rank`). Without them, a job of `devices: N > 1` makes this process the
//! local launcher of N ranks ([`crate::launch`]).

use std::path::Path;

use ugc_engine::CancelToken;
use ugc_engine::DeviceKind;
use ugc_engine::events::{EventProgress, StageEvent};
use ugc_engine::exec::{DeviceMemory, ExecOutcome, exec_job, exec_rank};
use ugc_engine::job::Job;
use ugc_engine::rank::RankEnv;
use ugc_pipe::cli::store::{open_cache, open_registry};
use ugc_pipe::cli::{CliError, CliResult, EXIT_FAILED, EXIT_INTERRUPTED};

/// Peak GPU memory of a stage: the most libtorch's CUDA caching allocator held
/// (`torch.cuda.max_memory_reserved`), which excludes the CUDA context itself.
struct CudaAllocatorMemory;

impl DeviceMemory for CudaAllocatorMemory {
    fn reset_peak(&self, device: DeviceKind) {
        if let DeviceKind::Cuda(i) = device {
            ugc_torch_ext::cuda_reset_peak(i);
        }
    }
    fn peak_bytes(&self, device: DeviceKind) -> Option<u64> {
        match device {
            DeviceKind::Cuda(i) => ugc_torch_ext::cuda_memory(i).map(|m| m.peak_reserved),
            DeviceKind::Cpu => None,
        }
    }
}

/// Logging of a stage process: plain lines on stderr, which the head points at the
/// per-stage log file.
pub fn init_exec_logging(verbose: u8) {
    let level = if verbose > 0 { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn exec(key: &str, cache_dir: &Path, force: bool, run: Option<i64>) -> CliResult {
    let rank = RankEnv::from_process_env().map_err(CliError::usage)?;
    let cache = open_cache(cache_dir)?;
    let job = Job::read(cache.root(), key, run).map_err(CliError::usage)?;
    if rank.is_none() && job.resources.devices > 1 {
        let signals = crate::launch::Signals::register()
            .map_err(|e| CliError::failed(format!("signal handler: {e}")))?;
        return crate::launch::launch(&job, &signals);
    }
    let cancel = CancelToken::new();
    // SIGHUP too: a closed terminal or session asks the stage to checkpoint and stop.
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, cancel.flag())
            .map_err(|e| CliError::failed(format!("signal handler: {e}")))?;
    }
    let progress = EventProgress::new(std::io::stdout());
    let kinds = crate::kinds::registry();
    let (outcome, error, code) = match &rank {
        Some(env) if !env.is_leader() => {
            tracing::info!(
                "stage {} (kind {}) key {}: rank {} of {}",
                job.node,
                job.kind,
                job.key,
                env.rank,
                env.world
            );
            // Rank 0 reports the stage; a peer's own outcome only reaches its log.
            match exec_rank(&cache, &kinds, &job, env, &progress, &cancel) {
                Ok(()) => ("ran", None, 0),
                Err(e) => outcome_of_error(&e),
            }
        }
        _ => {
            match &rank {
                Some(env) => tracing::info!(
                    "stage {} (kind {}) key {}: rank 0 of {}",
                    job.node,
                    job.kind,
                    job.key,
                    env.world
                ),
                None => tracing::info!("stage {} (kind {}) key {}", job.node, job.kind, job.key),
            }
            let registry = open_registry(&cache)?;
            let result = exec_job(
                &cache,
                &registry,
                &kinds,
                &job,
                force,
                &progress,
                &cancel,
                &CudaAllocatorMemory,
                rank.as_ref(),
            );
            match &result {
                Ok(ExecOutcome::Executed(_)) => ("executed", None, 0),
                Ok(ExecOutcome::Hit(_)) => ("hit", None, 0),
                Err(e) => outcome_of_error(e),
            }
        }
    };
    if let Some(e) = &error {
        tracing::error!("{e}");
    } else {
        tracing::info!("{outcome}");
    }
    progress.emit(&StageEvent::Done {
        outcome: outcome.into(),
        error,
    });
    Ok(code)
}

/// The `done` outcome, error text and exit code of a stage that did not succeed.
fn outcome_of_error(e: &ugc_engine::exec::ExecError) -> (&'static str, Option<String>, i32) {
    if e.is_cancelled() {
        ("cancelled", Some(e.to_string()), EXIT_INTERRUPTED)
    } else {
        ("failed", Some(e.to_string()), EXIT_FAILED)
    }
}
