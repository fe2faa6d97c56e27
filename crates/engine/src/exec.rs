//! Runs one stage by its cache key: lock, look up, execute into a fresh staging
//! directory, commit. This is all a stage process (`ugc-pipe exec --key K`) does; the head
//! process only schedules. Keeping it callable on its own is what a cluster executor needs.
//!
//! The record is the commit point for the registry too: once it is committed nothing
//! turns the stage into a failure, and its execution row, if this process dies before
//! writing it, is written later from the record ([`register_record`]).

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::cache::{Cache, CacheError, Record, RecordMeta};
use crate::job::Job;
use crate::lock::{KeyLock, LockError};
use crate::rank::RankEnv;
use crate::registry::{ExecutionRow, Registry, RegistryError};
use crate::stage::{CancelToken, DeviceKind, KindRegistry, Progress, StageContext, StageError};

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
    /// An input's bytes are damaged or gone ([`Cache::check_input`]); nothing ran.
    #[error("stage `{node}` cannot use its input `{input}`: {source}")]
    Input {
        node: String,
        input: String,
        #[source]
        source: Box<CacheError>,
    },
    /// An input holds another output than the one its key was computed from.
    #[error(
        "stage `{node}`: input `{input}` now holds output {found}, but this job's cache key was computed from {named}; run again to plan the stage on the current output"
    )]
    InputNotInKey {
        node: String,
        input: String,
        found: String,
        named: String,
    },
    /// The job and the rank variables disagree (e.g. more ranks than the job's GPUs).
    #[error("stage `{node}`, rank {rank}: {message}")]
    Rank {
        node: String,
        rank: usize,
        message: String,
    },
    #[error("stage `{node}` failed: {source}")]
    Stage {
        node: String,
        #[source]
        source: StageError,
    },
    /// A failure the registry could not record (a full disk): the failure comes first,
    /// so the registry's own error never hides why the stage failed.
    #[error("{error} (not recorded in the run registry: {registry})")]
    Unrecorded {
        error: Box<ExecError>,
        registry: RegistryError,
    },
}

impl ExecError {
    pub fn is_cancelled(&self) -> bool {
        match self {
            ExecError::Stage {
                source: StageError::Cancelled,
                ..
            } => true,
            ExecError::Unrecorded { error, .. } => error.is_cancelled(),
            _ => false,
        }
    }
}

/// Records a failed or cancelled execution and returns `error`, with the registry's error
/// attached after it if the row could not be written.
fn record_failure(registry: &Registry, row: &ExecutionRow, error: ExecError) -> ExecError {
    match registry.record_execution(row) {
        Ok(_) => error,
        Err(registry) => ExecError::Unrecorded {
            error: Box::new(error),
            registry,
        },
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The Slurm job this process runs in (`SLURM_JOB_ID`, set by Slurm in a batch job and
/// its `srun` tasks): recorded with the execution so `runs` can name it.
pub fn slurm_job_id() -> Option<u64> {
    std::env::var("SLURM_JOB_ID").ok()?.trim().parse().ok()
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
    for (name, v) in crate::dotted::dotted_leaves(&value) {
        if let Some(x) = v.as_f64() {
            out.insert(name, x);
        }
    }
    out
}

/// Peak accelerator memory of the stage process. The engine knows nothing of devices; the
/// process that runs stages (the worker, which links libtorch) supplies this.
pub trait DeviceMemory {
    /// Starts a fresh peak for `device`; called just before the stage runs.
    fn reset_peak(&self, device: DeviceKind);
    /// Peak bytes held on `device` since the reset; `None` when unknown (CPU, no CUDA).
    fn peak_bytes(&self, device: DeviceKind) -> Option<u64>;
}

/// No accelerator memory to report.
pub struct NoDeviceMemory;

impl DeviceMemory for NoDeviceMemory {
    fn reset_peak(&self, _: DeviceKind) {}
    fn peak_bytes(&self, _: DeviceKind) -> Option<u64> {
        None
    }
}

/// Runs `job`: takes the key's lock (waiting if another process holds it), serves the
/// record if one appeared meanwhile, otherwise executes the stage into a staging directory
/// and commits it. With `force` an existing record is replaced by a fresh execution.
/// Records the execution (peak host memory, peak device memory from `memory`, and
/// metrics) in the registry.
///
/// `rank`: this process is rank 0 of a data-parallel stage (its peers run [`exec_rank`]).
/// It does everything a single process does, on the rank's device; the stage ends with a
/// barrier over all ranks, so a peer that failed means an error here and no commit.
#[allow(clippy::too_many_arguments)]
pub fn exec_job(
    cache: &Cache,
    registry: &Registry,
    kinds: &KindRegistry,
    job: &Job,
    force: bool,
    progress: &dyn Progress,
    cancel: &CancelToken,
    memory: &dyn DeviceMemory,
    rank: Option<&RankEnv>,
) -> Result<ExecOutcome, ExecError> {
    let kind = kinds
        .get(&job.kind)
        .ok_or_else(|| ExecError::UnknownKind(job.kind.clone()))?;
    if let Some(env) = rank
        && !env.is_leader()
    {
        return Err(ExecError::Rank {
            node: job.node.clone(),
            rank: env.rank,
            message: "only rank 0 commits; the other ranks run `exec_rank`".into(),
        });
    }
    let device = device_of(job, rank)?;
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
        device: device.to_string(),
        peak_rss_bytes: None,
        peak_gpu_bytes: None,
        error: None,
        resources: Some(job.resources.clone()),
        slurm_job: slurm_job_id(),
    };

    let _lock = match KeyLock::try_acquire(cache.root(), &key)? {
        Some(lock) => lock,
        None => {
            progress.message("waiting for another ugc-pipe process computing this key");
            KeyLock::acquire(cache.root(), &key)?
        }
    };
    // Whatever the stage starts holds the key locked too, so no later attempt overlaps a
    // process of this one that survives it (docs/engine.md, "Processes and signals").
    _lock.share_with_child_processes()?;
    if !force && let Some(record) = cache.lookup(&key)? {
        row.status = "cached".into();
        row.ended_unix_ms = now_ms();
        if let Err(e) = registry.record_execution(&row) {
            tracing::warn!(
                "cache hit of `{}` not recorded in the run registry: {e}",
                job.node
            );
        }
        return Ok(ExecOutcome::Hit(record));
    }

    if let Err(e) = check_inputs(cache, job) {
        row.status = "failed".into();
        row.error = Some(e.to_string());
        row.ended_unix_ms = now_ms();
        return Err(record_failure(registry, &row, e));
    }

    let scratch = cache.scratch_dir(&key)?;
    let staging = cache.stage(&key)?;
    memory.reset_peak(device);
    let result = {
        let ctx = StageContext {
            node: &job.node,
            kind: &job.kind,
            params: &job.params,
            inputs: &job.inputs,
            out_dir: staging.out_dir(),
            scratch_dir: &scratch,
            device,
            progress,
            cancel,
            env: &job.env,
            rank,
        };
        kind.run(&ctx)
    };
    let finish = |row: &mut ExecutionRow, status: &str, error: Option<String>| {
        row.status = status.into();
        row.error = error;
        row.ended_unix_ms = now_ms();
        row.duration_ms = clock.elapsed().as_millis() as u64;
        row.peak_rss_bytes = peak_rss_bytes();
        row.peak_gpu_bytes = memory.peak_bytes(device);
    };
    match result {
        Ok(()) => {
            let meta = RecordMeta {
                node: job.node.clone(),
                pipeline: job.pipeline.clone(),
                created_unix_ms: now_ms(),
                duration_ms: clock.elapsed().as_millis() as u64,
                host,
                device: device.to_string(),
                inputs_verified: true,
                run_id: job.run_id,
            };
            let record = cache.commit(staging, &job.material, meta)?;
            // Committed: what follows is bookkeeping, and its failure is only reported.
            if let Err(e) = cache.clear_scratch(&key) {
                tracing::warn!("{e} (`ugc-pipe gc` removes it)");
            }
            finish(&mut row, "executed", None);
            let recorded = cache
                .output_dir(&record)
                .map_err(ExecError::from)
                .and_then(|dir| {
                    let at = record.meta.created_unix_ms;
                    Ok(registry.record_committed(&row, at, &read_metrics(&dir))?)
                });
            if let Err(e) = recorded {
                tracing::warn!(
                    "stage `{}` is committed, but its run registry row is not written ({e}); \
                     the next `run`, `runs --run` or `show` writes it from the record",
                    job.node
                );
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
            let error = ExecError::Stage {
                node: job.node.clone(),
                source,
            };
            Err(record_failure(registry, &row, error))
        }
    }
}

/// Writes the execution row of a committed `record`, rebuilt from the record, unless the
/// registry has it: for a stage process that died (or found the registry unwritable)
/// between its commit and its own registry write. The row goes to the run the record
/// names if the registry knows that run at the commit time, else to no run; peak memory
/// is unknown. Returns whether a row was added.
pub fn register_record(
    cache: &Cache,
    registry: &Registry,
    record: &Record,
) -> Result<bool, ExecError> {
    let m = &record.meta;
    let key = record.key.as_str();
    if registry.commit_recorded(key, m.created_unix_ms)? {
        return Ok(false);
    }
    let run_id = match m.run_id {
        Some(run) if registry.run_covers(run, m.created_unix_ms)? => Some(run),
        _ => None,
    };
    let row = ExecutionRow {
        id: None,
        run_id,
        pipeline: m.pipeline.clone(),
        node: m.node.clone(),
        kind: record.material.kind.clone(),
        key: key.to_string(),
        status: "executed".into(),
        started_unix_ms: m.created_unix_ms.saturating_sub(m.duration_ms),
        ended_unix_ms: m.created_unix_ms,
        duration_ms: m.duration_ms,
        host: m.host.clone(),
        device: m.device.clone(),
        peak_rss_bytes: None,
        peak_gpu_bytes: None,
        error: None,
        // A record does not say what the stage asked for.
        resources: None,
        slurm_job: None,
    };
    let metrics = read_metrics(&cache.output_dir(record)?);
    Ok(registry.record_committed(&row, m.created_unix_ms, &metrics)?)
}

/// The device this process of `job` runs on: the job's own for one process; for a rank,
/// the job's GPU of its local rank when the head assigned GPUs (the local launcher), else
/// `cuda:LOCAL_RANK` (ranks started by torchrun or `srun`, whose GPUs are renumbered from 0
/// by `CUDA_VISIBLE_DEVICES`), or the CPU.
pub fn device_of(job: &Job, rank: Option<&RankEnv>) -> Result<DeviceKind, ExecError> {
    let Some(env) = rank else {
        return Ok(job.device);
    };
    job.rank_device(env.local_rank)
        .ok_or_else(|| ExecError::Rank {
            node: job.node.clone(),
            rank: env.rank,
            message: format!(
                "LOCAL_RANK {} has no GPU among the job's {:?}",
                env.local_rank, job.gpus
            ),
        })
}

/// Runs `job` as rank `rank` (> 0) of a data-parallel stage: the same stage, on the rank's
/// device, with its inputs checked, but no lock, no commit and no registry row: rank 0 does
/// those ([`exec_job`]). The stage gets a private temporary `out_dir` and `scratch_dir`,
/// both removed afterwards (rank 0 loads the checkpoint and broadcasts the state; rank 0
/// alone writes).
pub fn exec_rank(
    cache: &Cache,
    kinds: &KindRegistry,
    job: &Job,
    rank: &RankEnv,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<(), ExecError> {
    let kind = kinds
        .get(&job.kind)
        .ok_or_else(|| ExecError::UnknownKind(job.kind.clone()))?;
    if rank.is_leader() {
        return Err(ExecError::Rank {
            node: job.node.clone(),
            rank: rank.rank,
            message: "rank 0 commits: it runs `exec_job`".into(),
        });
    }
    let device = device_of(job, Some(rank))?;
    check_inputs(cache, job)?;
    let temp = |what: &str| {
        tempfile::Builder::new()
            .prefix(&format!("ugc-rank{}-{what}-", rank.rank))
            .tempdir()
            .map_err(|e| ExecError::Stage {
                node: job.node.clone(),
                source: StageError::io(format!("temporary {what} folder of rank {}", rank.rank), e),
            })
    };
    // Dropped (removed) when this returns, whatever the stage left in them.
    let out = temp("out")?;
    let scratch = temp("scratch")?;
    let ctx = StageContext {
        node: &job.node,
        kind: &job.kind,
        params: &job.params,
        inputs: &job.inputs,
        out_dir: out.path(),
        scratch_dir: scratch.path(),
        device,
        progress,
        cancel,
        env: &job.env,
        rank: Some(rank),
    };
    kind.run(&ctx).map_err(|source| ExecError::Stage {
        node: job.node.clone(),
        source,
    })
}

/// [`register_record`] for every record committed by run `run_id`; returns how many rows
/// were added. What `runs --run N` calls before listing the run's executions.
pub fn register_run_records(
    cache: &Cache,
    registry: &Registry,
    run_id: i64,
) -> Result<usize, ExecError> {
    let mut added = 0;
    for record in cache.records()? {
        if record.meta.run_id == Some(run_id) && register_record(cache, registry, &record)? {
            added += 1;
        }
    }
    Ok(added)
}

/// Checks every input of `job` by content before its stage runs ([`Cache::check_input`]),
/// and that each holds the output its cache key names: a stage never reads damaged bytes,
/// nor bytes other than those its key was computed from.
fn check_inputs(cache: &Cache, job: &Job) -> Result<(), ExecError> {
    for input in &job.inputs {
        let label = if input.node.is_empty() {
            input.name.clone()
        } else {
            input.node.clone()
        };
        let record = cache
            .check_input(&input.dir)
            .map_err(|source| ExecError::Input {
                node: job.node.clone(),
                input: label.clone(),
                source: Box::new(source),
            })?;
        // By node id for a gathering stage's instances, else by stage name (plan.rs).
        let named = job
            .material
            .upstream
            .get(&input.node)
            .or_else(|| job.material.upstream.get(&input.name));
        if named != Some(&record.tree_digest) {
            return Err(ExecError::InputNotInKey {
                node: job.node.clone(),
                input: label,
                found: record.tree_digest,
                named: named
                    .cloned()
                    .unwrap_or_else(|| "no output of that name".into()),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use serde_json::json;

    use super::*;
    use crate::cache::KeyMaterial;
    use crate::stage::{KindSchema, NullProgress, StageKind};

    struct Touch(KindSchema);

    impl StageKind for Touch {
        fn schema(&self) -> &KindSchema {
            &self.0
        }
        fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
            std::fs::write(ctx.out_dir.join("x"), b"x").map_err(|e| StageError::io("x", e))
        }
    }

    /// Reports 123 bytes on CUDA device 1, counting resets.
    struct FakeGpu(AtomicU32);

    impl DeviceMemory for FakeGpu {
        fn reset_peak(&self, _: DeviceKind) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn peak_bytes(&self, d: DeviceKind) -> Option<u64> {
            (d == DeviceKind::Cuda(1)).then_some(123)
        }
    }

    #[test]
    fn peak_device_memory_reaches_the_registry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache")).unwrap();
        let registry = Registry::open(&dir.path().join("registry.sqlite")).unwrap();
        let schema = KindSchema::from_yaml("kind: touch\nversion: 1\nparams: {}\n").unwrap();
        let mut kinds = KindRegistry::new();
        kinds.register(Arc::new(Touch(schema)));
        let run_id = registry.begin_run("p.yaml", &["test".into()]).unwrap();
        let job = Job::for_test(Some(run_id), DeviceKind::Cuda(1));
        let gpu = FakeGpu(AtomicU32::new(0));
        let cancel = CancelToken::new();
        let out = exec_job(
            &cache,
            &registry,
            &kinds,
            &job,
            false,
            &NullProgress,
            &cancel,
            &gpu,
            None,
        );
        assert!(matches!(out, Ok(ExecOutcome::Executed(_))));
        assert_eq!(
            gpu.0.load(Ordering::SeqCst),
            1,
            "peak reset before the stage"
        );
        let rows = registry.executions(run_id).unwrap();
        assert_eq!(rows[0].peak_gpu_bytes, Some(123));
        assert!(rows[0].peak_rss_bytes.is_some());
    }

    /// Writes `x` and a `metrics.json`, or fails when its `fail` parameter is true.
    struct Scored(KindSchema);

    impl StageKind for Scored {
        fn schema(&self) -> &KindSchema {
            &self.0
        }
        fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
            if ctx.params["fail"] == json!(true) {
                return Err(StageError::Failed("the command exited with code 3".into()));
            }
            std::fs::write(ctx.out_dir.join("x"), b"x").map_err(|e| StageError::io("x", e))?;
            std::fs::write(ctx.out_dir.join("metrics.json"), br#"{"fid": 1.5}"#)
                .map_err(|e| StageError::io("metrics.json", e))
        }
    }

    struct Setup {
        /// Holds the cache and registry on disk for the test's length.
        _dir: tempfile::TempDir,
        cache: Cache,
        registry: Registry,
        kinds: KindRegistry,
        run_id: i64,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache")).unwrap();
        let registry = Registry::open(&cache.root().join("registry.sqlite")).unwrap();
        let schema = KindSchema::from_yaml(
            "kind: scored\nversion: 1\nparams:\n  fail: {type: bool, default: false}\n",
        )
        .unwrap();
        let mut kinds = KindRegistry::new();
        kinds.register(Arc::new(Scored(schema)));
        let run_id = registry.begin_run("p.yaml", &[]).unwrap();
        Setup {
            _dir: dir,
            cache,
            registry,
            kinds,
            run_id,
        }
    }

    fn scored_job(run_id: Option<i64>, fail: bool) -> Job {
        let params = json!({ "fail": fail });
        let material = KeyMaterial::new("scored", 1, params.clone());
        Job {
            schema: crate::job::JOB_SCHEMA_VERSION,
            key: material.key().to_string(),
            material,
            pipeline: "p.yaml".into(),
            node: "score".into(),
            stage: "score".into(),
            kind: "scored".into(),
            params,
            inputs: vec![],
            device: DeviceKind::Cpu,
            env: BTreeMap::new(),
            run_id,
            resources: crate::spec::Resources::default(),
            gpus: Vec::new(),
        }
    }

    fn exec(s: &Setup, job: &Job) -> Result<ExecOutcome, ExecError> {
        exec_job(
            &s.cache,
            &s.registry,
            &s.kinds,
            job,
            false,
            &NullProgress,
            &CancelToken::new(),
            &NoDeviceMemory,
            None,
        )
    }

    /// A second connection on the registry: what another process (or a full disk) does.
    fn sql(s: &Setup, statements: &str) {
        let conn = rusqlite::Connection::open(s.registry.path()).unwrap();
        conn.execute_batch(statements).unwrap();
    }

    /// Every insert of an execution row now fails the way a full disk does.
    const FULL_DISK: &str = "CREATE TRIGGER full BEFORE INSERT ON executions
         BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;";

    #[test]
    fn rows_lost_between_commit_and_registry_write_are_recovered_from_the_record() {
        let s = setup();
        let job = scored_job(Some(s.run_id), false);
        let Ok(ExecOutcome::Executed(record)) = exec(&s, &job) else {
            panic!("not executed")
        };
        assert_eq!(record.meta.run_id, Some(s.run_id));
        // As if the stage process had been killed right after its commit.
        sql(&s, "DELETE FROM metrics; DELETE FROM executions;");
        assert!(s.registry.executions(s.run_id).unwrap().is_empty());

        assert_eq!(
            register_run_records(&s.cache, &s.registry, s.run_id).unwrap(),
            1
        );
        let rows = s.registry.executions(s.run_id).unwrap();
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(
            (row.status.as_str(), row.node.as_str(), row.kind.as_str()),
            ("executed", "score", "scored")
        );
        assert_eq!(row.key, record.key.as_str());
        assert_eq!(row.ended_unix_ms, record.meta.created_unix_ms);
        let metrics = s
            .registry
            .metrics_for_keys(std::slice::from_ref(&record.key))
            .unwrap();
        assert_eq!(metrics[record.key.as_str()]["fid"], 1.5);
        // Recovered once: neither a second recovery nor a cache hit adds another row.
        assert!(!register_record(&s.cache, &s.registry, &record).unwrap());
        assert!(matches!(exec(&s, &job), Ok(ExecOutcome::Hit(_))));
        assert_eq!(s.registry.count_executions(Some("executed")).unwrap(), 1);
    }

    #[test]
    fn a_normal_commit_needs_no_recovery() {
        let s = setup();
        let job = scored_job(Some(s.run_id), false);
        let Ok(ExecOutcome::Executed(record)) = exec(&s, &job) else {
            panic!("not executed")
        };
        assert!(!register_record(&s.cache, &s.registry, &record).unwrap());
        let rows = s.registry.executions(s.run_id).unwrap();
        assert_eq!(rows.len(), 1);
        assert!(
            rows[0].peak_rss_bytes.is_some(),
            "the stage's own row is kept"
        );
    }

    #[test]
    fn a_record_naming_a_run_the_registry_lacks_is_recovered_under_no_run() {
        let s = setup();
        let job = scored_job(Some(s.run_id), false);
        let Ok(ExecOutcome::Executed(record)) = exec(&s, &job) else {
            panic!("not executed")
        };
        // The registry was deleted and recreated: its run ids start again.
        drop(s.registry);
        std::fs::remove_file(s.cache.root().join("registry.sqlite")).unwrap();
        let registry = Registry::open(&s.cache.root().join("registry.sqlite")).unwrap();
        let new_run = registry.begin_run("p.yaml", &[]).unwrap();
        assert_eq!(new_run, s.run_id, "the id is reused");
        assert!(register_record(&s.cache, &registry, &record).unwrap());
        assert!(registry.executions(new_run).unwrap().is_empty());
        assert_eq!(registry.count_executions(Some("executed")).unwrap(), 1);
    }

    #[test]
    fn a_registry_that_cannot_be_written_after_the_commit_does_not_fail_the_stage() {
        let s = setup();
        sql(&s, FULL_DISK);
        let job = scored_job(Some(s.run_id), false);
        let out = exec(&s, &job);
        assert!(matches!(out, Ok(ExecOutcome::Executed(_))), "{out:?}");
        assert!(s.cache.lookup(&job.cache_key()).unwrap().is_some());
        sql(&s, "DROP TRIGGER full;");
        assert_eq!(
            register_run_records(&s.cache, &s.registry, s.run_id).unwrap(),
            1
        );
    }

    #[test]
    fn a_failure_the_registry_cannot_record_is_reported_first() {
        let s = setup();
        sql(&s, FULL_DISK);
        let err = exec(&s, &scored_job(Some(s.run_id), true)).unwrap_err();
        let text = err.to_string();
        let stage = text
            .find("stage `score` failed: the command exited with code 3")
            .unwrap_or_else(|| panic!("{text}"));
        let full = text
            .find("database or disk is full")
            .unwrap_or_else(|| panic!("{text}"));
        assert!(stage < full, "{text}");
        assert!(matches!(err, ExecError::Unrecorded { .. }));
        assert!(!err.is_cancelled());
        // With a writable registry the failure is recorded and reported as itself.
        sql(&s, "DROP TRIGGER full;");
        let err = exec(&s, &scored_job(Some(s.run_id), true)).unwrap_err();
        assert!(matches!(err, ExecError::Stage { .. }), "{err}");
        let rows = s.registry.executions(s.run_id).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].status, "failed");
    }
}
