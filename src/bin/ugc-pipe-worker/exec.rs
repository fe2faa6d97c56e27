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
use std::time::Duration;

use ugc_engine::CancelToken;
use ugc_engine::DeviceKind;
use ugc_engine::events::{EventProgress, StageEvent};
use ugc_engine::exec::{DeviceMemory, ExecOutcome, exec_job, exec_rank};
use ugc_engine::job::Job;
use ugc_engine::rank::RankEnv;
use ugc_engine::registry::Registry;
use ugc_engine::slurm::attempt::{
    AttemptWriter, Heartbeat, Outcome, REGISTRY_WRITER_ENV, rows_path,
};
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

/// Under Slurm (`SLURM_JOB_ID` set), the batch process (rank 0 of an `srun` stage) writes
/// the attempt file and heartbeat into the cache for the head: how the attempt ended
/// (committed, the stage's own error, out of memory, or checkpointed and asking to be
/// resubmitted), whatever happened before the stage itself started included.
pub fn exec(key: &str, cache_dir: &Path, force: bool, run: Option<i64>) -> CliResult {
    // The batch process, or rank 0 of `srun` tasks (SLURM_NTASKS > 1); not the ranks the
    // local launcher starts inside a one-task job (their launcher writes it).
    let srun_task = std::env::var("SLURM_NTASKS")
        .ok()
        .and_then(|n| n.trim().parse::<u32>().ok())
        .is_some_and(|n| n > 1);
    let leader = std::env::var("RANK").map_or(true, |r| srun_task && r.trim() == "0");
    let Some(job) = ugc_engine::exec::slurm_job_id().filter(|_| leader) else {
        return exec_here(key, cache_dir, force, run);
    };
    let attempt = AttemptWriter::begin(cache_dir, key, job)
        .map_err(|e| CliError::failed(format!("attempt file: {e}")))?;
    let every = std::env::var("UGC_HEARTBEAT_S")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(30));
    let beat = Heartbeat::start(cache_dir, key, job, every)
        .map_err(|e| CliError::failed(format!("heartbeat: {e}")))?;
    let result = exec_here(key, cache_dir, force, run);
    drop(beat);
    let last = LAST_ERROR.lock().ok().and_then(|e| e.clone());
    let (outcome, code, error) = match &result {
        Ok(0) => (Outcome::Committed, 0, None),
        Ok(c) if *c == EXIT_INTERRUPTED => (Outcome::Checkpointed, *c, last),
        Ok(c) => (failure(last.as_deref()), *c, last),
        Err(e) => (failure(Some(&e.message)), e.code, Some(e.message.clone())),
    };
    if let Err(e) = attempt.finish(outcome, code, error) {
        tracing::error!("attempt file: {e}");
    }
    result
}

/// The stage's last error, for the attempt file.
static LAST_ERROR: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// A stage's own error, or memory exhaustion (libtorch's and the allocator's words),
/// which the head reports as such.
fn failure(error: Option<&str>) -> Outcome {
    let e = error.unwrap_or("").to_ascii_lowercase();
    if e.contains("out of memory") || e.contains("cannot allocate memory") {
        Outcome::OutOfMemory
    } else {
        Outcome::Failed
    }
}

fn exec_here(key: &str, cache_dir: &Path, force: bool, run: Option<i64>) -> CliResult {
    let rank = RankEnv::from_process_env().map_err(CliError::usage)?;
    let cache = if head_writes_registry()? {
        // A compute node of `--executor slurm`: the cache may be on a network filesystem,
        // where SQLite is unsafe, so no database there (the registry is spooled too).
        ugc_engine::cache::Cache::open_on_compute_node(cache_dir)
            .map_err(|e| CliError::failed(format!("cache {}: {e}", cache_dir.display())))?
    } else {
        open_cache(cache_dir)?
    };
    let job = Job::read(cache.root(), key, run).map_err(CliError::usage)?;
    if rank.is_none() && job.resources.devices > 1 {
        let signals = crate::launch::Signals::register()
            .map_err(|e| CliError::failed(format!("signal handler: {e}")))?;
        return crate::launch::launch(&job, &signals);
    }
    let cancel = CancelToken::new();
    // SIGHUP too: a closed terminal or session asks the stage to checkpoint and stop.
    // SIGUSR1: Slurm's warning before the time limit (`--signal=B:USR1@grace`), and the
    // head's Ctrl-C for a running job: checkpoint and stop, to be resubmitted.
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGUSR1,
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
            let registry = stage_registry(&cache, key)?;
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
        if let Ok(mut last) = LAST_ERROR.lock() {
            *last = Some(e.clone());
        }
    } else {
        tracing::info!("{outcome}");
    }
    progress.emit(&StageEvent::Done {
        outcome: outcome.into(),
        error,
    });
    Ok(code)
}

/// The registry this stage records into: the database itself, or under `--executor
/// slurm` (the job script sets `UGC_REGISTRY_WRITER=head`) a spool file in the cache,
/// `attempts/<key>/<job>.rows`, which the head ingests: only the head writes SQLite,
/// whose WAL mode is unsafe on a network filesystem.
fn stage_registry(cache: &ugc_engine::cache::Cache, key: &str) -> Result<Registry, CliError> {
    if !head_writes_registry()? {
        return open_registry(cache);
    }
    let job = ugc_engine::exec::slurm_job_id().ok_or_else(|| {
        CliError::usage(format!(
            "{REGISTRY_WRITER_ENV}=head needs SLURM_JOB_ID (the spool file is per job)"
        ))
    })?;
    Registry::spool(&rows_path(cache.root(), key, job))
        .map_err(|e| CliError::failed(format!("run registry spool: {e}")))
}

/// Whether this process runs as a compute node's stage under `--executor slurm`
/// (`UGC_REGISTRY_WRITER=head`), where only the head opens SQLite files in the cache.
fn head_writes_registry() -> Result<bool, CliError> {
    match std::env::var(REGISTRY_WRITER_ENV)
        .ok()
        .as_deref()
        .map(str::trim)
    {
        None | Some("" | "self") => Ok(false),
        Some("head") => Ok(true),
        Some(other) => Err(CliError::usage(format!(
            "{REGISTRY_WRITER_ENV}={other:?}: expected `head` (a Slurm job spools its rows) or `self`"
        ))),
    }
}

/// The `done` outcome, error text and exit code of a stage that did not succeed.
fn outcome_of_error(e: &ugc_engine::exec::ExecError) -> (&'static str, Option<String>, i32) {
    if e.is_cancelled() {
        ("cancelled", Some(e.to_string()), EXIT_INTERRUPTED)
    } else {
        ("failed", Some(e.to_string()), EXIT_FAILED)
    }
}
