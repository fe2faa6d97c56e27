//! Runs one stage by its cache key: lock, look up, execute into a fresh staging
//! directory, commit. This is all a stage process (`ugc-pipe exec --key K`) does; the head
//! process only schedules. Keeping it callable on its own is what a cluster executor needs.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::cache::{Cache, CacheError, Record, RecordMeta};
use crate::job::Job;
use crate::lock::{KeyLock, LockError};
use crate::registry::{ExecutionRow, Registry, RegistryError};
use crate::stage::{CancelToken, KindRegistry, Progress, StageContext, StageError};

/// What happened to the job.
#[derive(Debug)]
pub enum ExecOutcome {
    /// The stage ran and its outputs were committed.
    Executed(Record),
    /// Another process committed the key while this one waited for the lock.
    Hit(Record),
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("unknown stage kind `{0}` in job")]
    UnknownKind(String),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("stage `{node}` failed: {source}")]
    Stage {
        node: String,
        #[source]
        source: StageError,
    },
}

impl ExecError {
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            ExecError::Stage {
                source: StageError::Cancelled,
                ..
            }
        )
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn host_name() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Peak resident memory of this process and its finished children, in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    fn maxrss(who: libc::c_int) -> Option<u64> {
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes a full rusage into the pointer on success.
        let rc = unsafe { libc::getrusage(who, ru.as_mut_ptr()) };
        // SAFETY: initialised by getrusage when rc == 0.
        (rc == 0).then(|| unsafe { ru.assume_init() }.ru_maxrss.max(0) as u64 * 1024)
    }
    let own = maxrss(libc::RUSAGE_SELF)?;
    Some(own.max(maxrss(libc::RUSAGE_CHILDREN).unwrap_or(0)))
}

/// Reads a top-level `metrics.json` of a committed output (a flat object of numbers;
/// nested objects are flattened with dots, non-numbers ignored).
pub fn read_metrics(dir: &std::path::Path) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(text) = std::fs::read(dir.join("metrics.json")) else {
        return out;
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return out;
    };
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, f64>) {
        match v {
            serde_json::Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    out.insert(prefix.to_string(), x);
                }
            }
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            _ => {}
        }
    }
    walk("", &value, &mut out);
    out
}

/// Runs `job`: takes the key's lock (waiting if another process holds it), serves the
/// record if one appeared meanwhile, otherwise executes the stage into a staging directory
/// and commits it. With `force` an existing record is replaced by a fresh execution.
/// Records the execution (and metrics) in the registry.
pub fn exec_job(
    cache: &Cache,
    registry: &Registry,
    kinds: &KindRegistry,
    job: &Job,
    force: bool,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<ExecOutcome, ExecError> {
    let kind = kinds
        .get(&job.kind)
        .ok_or_else(|| ExecError::UnknownKind(job.kind.clone()))?;
    let key = job.cache_key();
    let started = now_ms();
    let clock = Instant::now();
    let host = host_name();
    let mut row = ExecutionRow {
        id: None,
        run_id: job.run_id,
        pipeline: job.pipeline.clone(),
        node: job.node.clone(),
        kind: job.kind.clone(),
        key: key.to_string(),
        status: String::new(),
        started_unix_ms: started,
        ended_unix_ms: started,
        duration_ms: 0,
        host: host.clone(),
        device: job.device.to_string(),
        peak_rss_bytes: None,
        peak_gpu_bytes: None,
        error: None,
    };

    let _lock = match KeyLock::try_acquire(cache.root(), &key)? {
        Some(lock) => lock,
        None => {
            progress.message("waiting for another ugc-pipe process computing this key");
            KeyLock::acquire(cache.root(), &key)?
        }
    };
    if !force && let Some(record) = cache.lookup(&key)? {
        row.status = "cached".into();
        row.ended_unix_ms = now_ms();
        registry.record_execution(&row)?;
        return Ok(ExecOutcome::Hit(record));
    }

    let scratch = cache.scratch_dir(&key)?;
    let staging = cache.stage(&key)?;
    let result = {
        let ctx = StageContext {
            node: &job.node,
            kind: &job.kind,
            params: &job.params,
            inputs: &job.inputs,
            out_dir: staging.out_dir(),
            scratch_dir: &scratch,
            device: job.device,
            progress,
            cancel,
            env: &job.env,
        };
        kind.run(&ctx)
    };
    let finish = |row: &mut ExecutionRow, status: &str, error: Option<String>| {
        row.status = status.into();
        row.error = error;
        row.ended_unix_ms = now_ms();
        row.duration_ms = clock.elapsed().as_millis() as u64;
        row.peak_rss_bytes = peak_rss_bytes();
    };
    match result {
        Ok(()) => {
            let meta = RecordMeta {
                node: job.node.clone(),
                pipeline: job.pipeline.clone(),
                created_unix_ms: now_ms(),
                duration_ms: clock.elapsed().as_millis() as u64,
                host,
                device: job.device.to_string(),
            };
            let record = cache.commit(staging, &job.material, meta)?;
            cache.clear_scratch(&key)?;
            finish(&mut row, "executed", None);
            let exec_id = registry.record_execution(&row)?;
            let metrics = read_metrics(&cache.output_dir(&record)?);
            if !metrics.is_empty() {
                registry.record_metrics(exec_id, &metrics)?;
            }
            Ok(ExecOutcome::Executed(record))
        }
        Err(source) => {
            // The staging directory is dropped here: nothing of this attempt is committed.
            drop(staging);
            let status = if matches!(source, StageError::Cancelled) {
                "cancelled"
            } else {
                "failed"
            };
            finish(&mut row, status, Some(source.to_string()));
            registry.record_execution(&row)?;
            Err(ExecError::Stage {
                node: job.node.clone(),
                source,
            })
        }
    }
}
