//! `ugc-pipe-worker exec --key K --cache-dir D [--run R]`: runs one stage by its cache key (what
//! the head process starts per stage; a cluster executor can run it on another machine
//! against a shared cache).

use std::path::Path;

use ugc_engine::CancelToken;
use ugc_engine::DeviceKind;
use ugc_engine::events::{EventProgress, StageEvent};
use ugc_engine::exec::{DeviceMemory, ExecOutcome, exec_job};
use ugc_engine::job::Job;
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
    let cache = open_cache(cache_dir)?;
    let registry = open_registry(&cache)?;
    let job = Job::read(cache.root(), key, run).map_err(CliError::usage)?;
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
    tracing::info!("stage {} (kind {}) key {}", job.node, job.kind, job.key);
    let kinds = crate::kinds::registry();
    let result = exec_job(
        &cache,
        &registry,
        &kinds,
        &job,
        force,
        &progress,
        &cancel,
        &CudaAllocatorMemory,
    );
    let (outcome, error, code) = match &result {
        Ok(ExecOutcome::Executed(_)) => ("executed", None, 0),
        Ok(ExecOutcome::Hit(_)) => ("hit", None, 0),
        Err(e) if e.is_cancelled() => ("cancelled", Some(e.to_string()), EXIT_INTERRUPTED),
        Err(e) => ("failed", Some(e.to_string()), EXIT_FAILED),
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
