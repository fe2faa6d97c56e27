//! The head process: walks the DAG, takes cached nodes from the cache, and starts a stage
//! process (`<program> exec --key K`) for each node that must run, up to `jobs` at a time
//! and never more than one per GPU. A data-parallel stage (`resources: {devices: N}`) takes
//! N GPUs with CUDA (and one of the `jobs`), or N of the `jobs` on the CPU; one that needs
//! more than `jobs` runs alone ([`Slots`]). A failed node stops its dependents (and, unless
//! `keep_going`, the scheduling of anything new). SIGINT/SIGTERM/SIGHUP are forwarded to
//! running stages, which checkpoint and stop; nothing they half-wrote is committed.
//!
//! How a node ended is decided by the record of its key, not by the stage process's exit:
//! a process killed after its commit executed its node, and one that found the record
//! another run committed reports a cache hit.
//!
//! Why not dagrs: its graph runs every task to completion and has no notion of per-resource
//! slots (one stage per GPU), of skipping only the dependents of a failed node while
//! independent branches finish, or of forwarding a cancellation into running tasks. The
//! scheduler here is ~300 lines on tokio and does exactly the engine contract.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use petgraph::graph::NodeIndex;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::cache::{Cache, CacheKey, Record};
use crate::events::StageEvent;
use crate::exec::{host_name, now_ms, register_record};
use crate::graph::Dag;
use crate::job::{JOB_SCHEMA_VERSION, Job};
use crate::plan::{KeyBuilder, PlanError, RunReason, why_run};
use crate::registry::{ExecutionRow, Registry};
use crate::slurm::book::{Book, JobCtx, ingest_key_spools};
use crate::slurm::monitor::{FsCacheView, Monitor, SystemClock, Verdict};
use crate::slurm::queue::{Commands, JobId, JobState, JobStatus, SlurmCli, SlurmClient};
use crate::slurm::script::{StageJob, job_name};
use crate::slurm::settings::SlurmSettings;
use crate::stage::{DeviceKind, StageInput};

/// How a node ended in this run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeOutcome {
    Executed,
    Cached,
    Failed,
    Cancelled,
    /// Not run: an upstream node failed, or the run stopped before it.
    Skipped,
}

/// What the user interface is told. Implemented by the CLI (progress bars, JSON lines).
pub trait RunUi: Send {
    fn stage_started(&mut self, node: &str, reason: &RunReason, log_file: &std::path::Path);
    fn stage_event(&mut self, node: &str, ev: &StageEvent);
    fn stage_finished(
        &mut self,
        node: &str,
        outcome: &NodeOutcome,
        key: Option<&CacheKey>,
        secs: f64,
        error: Option<&str>,
    );
    /// Something that needs the user's attention (a warning).
    fn note(&mut self, msg: &str);
    /// A line for the record that needs no attention (a Slurm job that ended normally).
    fn info(&mut self, msg: &str) {
        self.note(msg);
    }
}

/// A settled job's line: information when Slurm says it completed, else a note.
fn tell_settled(ui: &mut dyn RunUi, line: &str, status: Option<&JobStatus>) {
    if status.is_some_and(|s| s.state == JobState::Completed) {
        ui.info(line);
    } else {
        ui.note(line);
    }
}

/// Seconds a stage asked to stop gets to checkpoint before it is killed: the head's
/// default for [`RunOptions::cancel_grace_secs`], and what a data-parallel stage's launcher
/// gives the other ranks once one has failed.
pub const CANCEL_GRACE_SECS: u64 = 60;

pub struct RunOptions {
    pub jobs: usize,
    pub keep_going: bool,
    pub forced: BTreeSet<NodeIndex>,
    /// One slot per GPU; empty when stages run on the CPU.
    pub gpus: Vec<usize>,
    /// The program and leading arguments that run one stage: `[exe, "exec"]` plus
    /// `--key K --cache-dir D [--run R] [--force]` added here.
    pub exec_command: Vec<String>,
    pub pipeline: String,
    pub run_id: Option<i64>,
    /// Environment passed to the stage processes (and on to user commands).
    pub stage_env: BTreeMap<String, String>,
    /// Seconds a cancelled stage gets to checkpoint before it is killed.
    pub cancel_grace_secs: u64,
    /// Run the stages as Slurm jobs instead of local processes (`--executor slurm`);
    /// `None`: local, as before.
    pub slurm: Option<SlurmRun>,
}

/// How a run submits its stages to Slurm.
#[derive(Debug, Clone)]
pub struct SlurmRun {
    pub settings: SlurmSettings,
    /// `sbatch`, `squeue`, `sacct`, `scancel` (on PATH, or a test's fakes).
    pub commands: Commands,
    /// `ugc-pipe-worker` as the compute nodes see it (a shared filesystem).
    pub worker: PathBuf,
    /// GPU stages ask Slurm for GPUs (`--device cuda` on the head); else they run on CPUs.
    pub gpus: bool,
}

/// A stage running as a Slurm job.
#[derive(Debug, Clone)]
struct SlurmJob {
    job: JobId,
    attempt_no: u32,
    script: PathBuf,
    /// The run that submitted it: an earlier one's for a job re-attached after a restart.
    run_id: i64,
    /// The last state shown (`PENDING`, `RUNNING`...), to tell a pending job from a running one.
    state: &'static str,
    submitted: Instant,
}

#[derive(Debug, Default, Serialize)]
pub struct RunSummary {
    pub outcomes: BTreeMap<String, NodeOutcome>,
    pub errors: BTreeMap<String, String>,
    pub interrupted: bool,
    pub secs: f64,
}

impl RunSummary {
    pub fn count(&self, o: NodeOutcome) -> usize {
        self.outcomes.values().filter(|x| **x == o).count()
    }
    pub fn ok(&self) -> bool {
        !self.interrupted && self.errors.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error(transparent)]
    Plan(Box<PlanError>),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error(transparent)]
    Job(#[from] crate::job::JobError),
    #[error("cannot start stage process `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("log file {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("slurm executor: {0}")]
    Slurm(String),
}

impl From<PlanError> for ExecutorError {
    fn from(e: PlanError) -> Self {
        ExecutorError::Plan(Box::new(e))
    }
}

enum Msg {
    Event(NodeIndex, StageEvent),
    Exited(NodeIndex, Option<i32>, Option<i32>),
}

/// What the running stages hold of the machine: `jobs` slots and the free GPUs.
#[derive(Debug)]
struct Slots {
    jobs: usize,
    used: usize,
    /// Free GPUs, the next to hand out last.
    free_gpus: Vec<usize>,
    total_gpus: usize,
}

/// What a stage that wants to start gets.
#[derive(Debug, PartialEq, Eq)]
enum Take {
    /// Start it, holding `slots` of `jobs` and these GPUs (one per rank).
    Go { slots: usize, gpus: Vec<usize> },
    /// Not now: what it needs is held by running stages.
    Wait,
    /// Never: it needs more GPUs than there are (refused at plan time by the CLI).
    Never(String),
}

impl Slots {
    fn new(jobs: usize, gpus: &[usize]) -> Slots {
        Slots {
            jobs: jobs.max(1),
            used: 0,
            free_gpus: gpus.iter().rev().copied().collect(),
            total_gpus: gpus.len(),
        }
    }

    /// A stage of `devices` ranks, on the GPUs (`on_gpu`) or the CPU. On the CPU each rank
    /// is a process that wants a core: N slots. On CUDA the GPUs are the limit: N GPUs and
    /// one slot. A stage needing more slots than `jobs` starts only when nothing runs, and
    /// then runs alone. An `exclusive` stage (a timing measurement) holds every slot: it
    /// starts only when nothing runs, and nothing starts beside it.
    fn take(&mut self, devices: usize, on_gpu: bool, exclusive: bool) -> Take {
        let devices = devices.max(1);
        let slots = if exclusive {
            self.jobs.max(if on_gpu { 1 } else { devices })
        } else if on_gpu {
            1
        } else {
            devices
        };
        if on_gpu && devices > self.total_gpus {
            return Take::Never(format!(
                "needs {devices} GPUs, but the run has {}",
                self.total_gpus
            ));
        }
        let fits = self.used + slots <= self.jobs || self.used == 0;
        if !fits || (on_gpu && self.free_gpus.len() < devices) {
            return Take::Wait;
        }
        self.used += slots;
        let gpus = if on_gpu {
            let at = self.free_gpus.len() - devices;
            let mut g = self.free_gpus.split_off(at);
            g.reverse();
            g
        } else {
            Vec::new()
        };
        Take::Go { slots, gpus }
    }

    fn give_back(&mut self, slots: usize, gpus: &[usize]) {
        self.used -= slots;
        self.free_gpus.extend(gpus.iter().rev());
    }
}

struct Running {
    child_pid: Option<u32>,
    key: CacheKey,
    started: Instant,
    /// Wall clock at the start, to compare with a record's `created_unix_ms`.
    started_unix_ms: u64,
    /// Of the `jobs` slots, and the GPUs (one per rank), that it holds.
    slots: usize,
    gpus: Vec<usize>,
    error: Option<String>,
    /// The stage process's own `done` outcome (`executed`, `hit`, ...), if it got that far.
    reported: Option<String>,
    /// Set when the stage runs as a Slurm job.
    slurm: Option<SlurmJob>,
}

/// Runs `dag`. Must be called from a current-thread tokio runtime: stage processes are
/// started with a parent-death signal, which Linux ties to the spawning *thread*.
pub async fn run_dag(
    dag: &Dag,
    cache: &Cache,
    registry: &Registry,
    keys: &KeyBuilder<'_>,
    opts: &RunOptions,
    ui: &mut dyn RunUi,
) -> Result<RunSummary, ExecutorError> {
    let clock = Instant::now();
    let mut summary = RunSummary::default();
    let mut done: BTreeMap<NodeIndex, Record> = BTreeMap::new();
    let mut finished: BTreeSet<NodeIndex> = BTreeSet::new();
    let mut running: BTreeMap<NodeIndex, Running> = BTreeMap::new();
    let mut slots = Slots::new(opts.jobs, &opts.gpus);
    let mut stop_scheduling = false;
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();

    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(ExecutorError::Signal)?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ExecutorError::Signal)?;
    // A closed terminal must not kill the head at once: its stages would get SIGKILL
    // (parent-death signal) without a checkpoint.
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(ExecutorError::Signal)?;
    let order = dag.topo_order();

    // The Slurm side: one client, the cache as files, and the monitor over them.
    let slurm_client = opts
        .slurm
        .as_ref()
        .map(|s| SlurmCli::new(s.commands.clone()));
    let cache_view = FsCacheView {
        root: cache.root().to_path_buf(),
    };
    let sys_clock = SystemClock::default();
    let mut monitor = match (&opts.slurm, &slurm_client) {
        (Some(s), Some(c)) => {
            if opts.run_id.is_none() {
                return Err(ExecutorError::Slurm(
                    "a Slurm run needs a run id (the job files and names carry it)".into(),
                ));
            }
            Some(Monitor::new(&s.settings, c, &cache_view, &sys_clock))
        }
        _ => None,
    };
    // Jobs of earlier runs still queued or running, by key: a restarted head re-attaches
    // to them instead of submitting again. Listed once, when first needed.
    let mut attachable: Option<HashMap<String, (JobId, i64)>> = None;
    let mut by_job: HashMap<JobId, NodeIndex> = HashMap::new();
    let mut next_poll = Instant::now();
    // Ctrl-C under Slurm: when the running jobs asked to checkpoint are cancelled.
    let mut cancel_deadline: Option<Instant> = None;
    // What the registry gets of each Slurm job (the head is its only writer), and each
    // running job's progress, read from its log every second.
    let mut book = Book::new(&opts.pipeline);
    let mut tail_tick = tokio::time::interval(Duration::from_secs(1));
    tail_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        // A node that could not be submitted this pass (controller unreachable): the loop
        // waits for the next poll instead of ending.
        let mut deferred = false;
        // Start everything that is ready, in topological order.
        if !stop_scheduling {
            for &idx in &order {
                if finished.contains(&idx) || running.contains_key(&idx) {
                    continue;
                }
                let deps = dag.deps(idx);
                if deps.iter().any(|d| !finished.contains(d)) {
                    continue;
                }
                let node = dag.node(idx);
                if deps.iter().any(|d| !done.contains_key(d)) {
                    // An upstream failed or was skipped.
                    finished.insert(idx);
                    summary
                        .outcomes
                        .insert(node.id.clone(), NodeOutcome::Skipped);
                    ui.stage_finished(&node.id, &NodeOutcome::Skipped, None, 0.0, None);
                    continue;
                }
                let dep_records: Vec<&Record> = deps.iter().map(|d| &done[d]).collect();
                let material = keys.material(dag, idx, &dep_records)?;
                let key = material.key();
                let forced = opts.forced.contains(&idx);
                if !forced && let Some(record) = cache.lookup(&key)? {
                    // The run that committed it may have died before its registry row, or
                    // before clearing its scratch; a Slurm job's rows wait in its spool.
                    if let Err(e) = ingest_key_spools(cache.root(), registry, key.as_str()) {
                        tracing::warn!("run registry: {e}");
                    }
                    if let Err(e) = register_record(cache, registry, &record) {
                        tracing::warn!("run registry: {e}");
                    }
                    if let Err(e) = cache.clear_leftover_scratch(&key) {
                        tracing::warn!("{e} (`ugc-pipe gc` removes it)");
                    }
                    record_cached(registry, opts, node, &key);
                    let _ = registry.set_node_key(&opts.pipeline, &node.id, &key, &material);
                    ui.stage_finished(&node.id, &NodeOutcome::Cached, Some(&key), 0.0, None);
                    summary
                        .outcomes
                        .insert(node.id.clone(), NodeOutcome::Cached);
                    finished.insert(idx);
                    done.insert(idx, record);
                    continue;
                }
                let on_slurm = opts
                    .slurm
                    .as_ref()
                    .is_some_and(|s| !s.settings.head_kinds.contains(&node.kind));
                if on_slurm {
                    let s = opts.slurm.as_ref().expect("on_slurm");
                    let client = slurm_client.as_ref().expect("slurm client");
                    let in_queue = running.values().filter(|r| r.slurm.is_some()).count();
                    if in_queue >= s.settings.max_jobs {
                        continue;
                    }
                    if attachable.is_none() {
                        match client.ours() {
                            Ok(jobs) => {
                                attachable = Some(
                                    jobs.iter()
                                        .filter(|j| !j.state.is_ended())
                                        .filter_map(|j| {
                                            j.run_and_key()
                                                .map(|(run, k)| (k.to_string(), (j.id, run)))
                                        })
                                        .collect(),
                                )
                            }
                            Err(e) => {
                                ui.note(&format!("slurm: cannot list the queue ({e}); retrying"));
                                deferred = true;
                                continue;
                            }
                        }
                    }
                    let reason = if forced {
                        RunReason::Forced
                    } else {
                        why_run(node, &key, &material, Some(registry), &opts.pipeline)?
                    };
                    let run_id = opts.run_id.expect("checked above");
                    let again = attachable
                        .as_mut()
                        .and_then(|a| a.remove(key.as_str()))
                        .filter(|_| !forced);
                    let (job, job_run, script) = if let Some((job, job_run)) = again {
                        ui.note(&format!(
                            "slurm: stage `{}`: re-attached to job {job} of run {job_run}",
                            node.id
                        ));
                        let script = cache
                            .root()
                            .join("slurm")
                            .join(job_run.to_string())
                            .join(format!("{key}.sbatch"));
                        (job, job_run, script)
                    } else {
                        let gpu = node.gpu && s.gpus;
                        let devices = node.resources.devices;
                        let job = slurm_job_file(
                            dag, cache, &done, idx, &key, material, gpu, devices, opts,
                        )?;
                        job.write(cache.root())?;
                        let log_file = log_path(cache, opts.run_id, &node.id);
                        let dir = cache.root().join("slurm").join(run_id.to_string());
                        std::fs::create_dir_all(&dir).map_err(|source| ExecutorError::Log {
                            path: dir.clone(),
                            source,
                        })?;
                        if let Some(d) = log_file.parent() {
                            std::fs::create_dir_all(d).map_err(|source| ExecutorError::Log {
                                path: d.to_path_buf(),
                                source,
                            })?;
                        }
                        let request = node.resources.slurm_request();
                        let stage_job = StageJob {
                            run_id,
                            key: key.as_str(),
                            node: &node.id,
                            gpu,
                            request: &request,
                            worker: &s.worker,
                            cache_dir: cache.root(),
                            log: &log_file,
                        };
                        let script = crate::slurm::script::write(&dir, &stage_job, &s.settings)
                            .map_err(|e| ExecutorError::Slurm(e.to_string()))?;
                        match submit(client, &script, &job_name(run_id, key.as_str())) {
                            Ok(id) => (id, run_id, script),
                            Err(e) if e.is_transient() => {
                                ui.note(&format!(
                                    "slurm: stage `{}` not submitted yet: {e}",
                                    node.id
                                ));
                                deferred = true;
                                continue;
                            }
                            Err(e) => {
                                let err = format!("sbatch refused stage `{}`: {e}", node.id);
                                finished.insert(idx);
                                fail_unstarted(&node.id, &key, err, ui, &mut summary);
                                stop_scheduling |= !opts.keep_going;
                                continue;
                            }
                        }
                    };
                    let log_file = log_path(cache, Some(job_run), &node.id);
                    book.submitted(
                        registry,
                        job,
                        JobCtx::new(
                            key.as_str(),
                            &node.id,
                            &node.kind,
                            job_run,
                            1,
                            node.resources.clone(),
                            log_file.clone(),
                        ),
                    );
                    ui.stage_started(&node.id, &reason, &log_file);
                    ui.stage_event(
                        &node.id,
                        &StageEvent::Message {
                            text: format!("slurm job {job} submitted"),
                        },
                    );
                    if let Some(m) = monitor.as_mut() {
                        m.track(key.as_str(), job, 1);
                    }
                    next_poll = next_poll.min(Instant::now() + s.settings.poll_min);
                    by_job.insert(job, idx);
                    running.insert(
                        idx,
                        Running {
                            child_pid: None,
                            key,
                            started: Instant::now(),
                            started_unix_ms: now_ms(),
                            slots: 0,
                            gpus: Vec::new(),
                            error: None,
                            reported: None,
                            slurm: Some(SlurmJob {
                                job,
                                attempt_no: 1,
                                script,
                                run_id: job_run,
                                state: "SUBMITTED",
                                submitted: Instant::now(),
                            }),
                        },
                    );
                    continue;
                }
                let on_gpu = node.gpu && !opts.gpus.is_empty();
                let exclusive = node.resources.exclusive == Some(true);
                let (held, gpus) = match slots.take(node.resources.devices, on_gpu, exclusive) {
                    Take::Go { slots, gpus } => (slots, gpus),
                    Take::Wait => continue,
                    Take::Never(why) => {
                        let err = format!("stage `{}` {why}", node.id);
                        finished.insert(idx);
                        fail_unstarted(&node.id, &key, err, ui, &mut summary);
                        stop_scheduling |= !opts.keep_going;
                        continue;
                    }
                };
                let reason = if forced {
                    RunReason::Forced
                } else {
                    why_run(node, &key, &material, Some(registry), &opts.pipeline)?
                };
                let inputs: Vec<StageInput> = deps
                    .iter()
                    .map(|d| {
                        let n = dag.node(*d);
                        Ok(StageInput {
                            name: n.stage.clone(),
                            node: n.id.clone(),
                            point: n.matrix_point.clone(),
                            kind: n.kind.clone(),
                            dir: cache.output_dir(&done[d])?,
                        })
                    })
                    .collect::<Result<_, crate::cache::CacheError>>()?;
                let job = Job {
                    schema: JOB_SCHEMA_VERSION,
                    key: key.to_string(),
                    material,
                    pipeline: opts.pipeline.clone(),
                    node: node.id.clone(),
                    stage: node.stage.clone(),
                    kind: node.kind.clone(),
                    params: node.params.clone(),
                    inputs,
                    device: gpus
                        .first()
                        .copied()
                        .map(DeviceKind::Cuda)
                        .unwrap_or(DeviceKind::Cpu),
                    env: opts.stage_env.clone(),
                    run_id: opts.run_id,
                    resources: node.resources.clone(),
                    // One process keeps the job file it had before data parallelism.
                    gpus: if gpus.len() > 1 {
                        gpus.clone()
                    } else {
                        Vec::new()
                    },
                };
                job.write(cache.root())?;
                let log_file = log_path(cache, opts.run_id, &node.id);
                ui.stage_started(&node.id, &reason, &log_file);
                let child = spawn_stage(opts, cache, &key, forced, &log_file)?;
                let pid = child.id();
                watch_child(idx, child, tx.clone());
                running.insert(
                    idx,
                    Running {
                        child_pid: pid,
                        key,
                        started: Instant::now(),
                        started_unix_ms: now_ms(),
                        slots: held,
                        gpus,
                        error: None,
                        reported: None,
                        slurm: None,
                    },
                );
            }
        }
        if running.is_empty() && !deferred {
            break;
        }
        if deferred && let Some(s) = &opts.slurm {
            // Retry the submission after a poll interval, not in a busy loop.
            next_poll = next_poll.max(Instant::now() + s.settings.poll_min);
        }
        let slurm_waits = monitor.as_ref().is_some_and(|m| !m.active().is_empty()) || deferred;
        tokio::select! {
            _ = tokio::time::sleep_until(next_poll.into()), if slurm_waits => {
                let m = monitor.as_mut().expect("slurm_waits");
                let client = slurm_client.as_ref().expect("slurm_waits");
                if let Some(t) = cancel_deadline.filter(|t| Instant::now() >= *t) {
                    let _ = t;
                    cancel_deadline = None;
                    let ids = m.active();
                    ui.note(&format!("slurm: grace over, cancelling {} job(s)", ids.len()));
                    if let Err(e) = client.cancel(&ids, None) {
                        ui.note(&format!("slurm: scancel: {e}"));
                    }
                }
                let verdicts = m.poll();
                for (job, _key, verdict) in verdicts {
                    let Some(&idx) = by_job.get(&job) else { continue };
                    let node_id = dag.node(idx).id.clone();
                    // Progress up to the verdict first.
                    for ev in book.tail(job) {
                        ui.stage_event(&node_id, &ev);
                    }
                    let Some(r) = running.get_mut(&idx) else { continue };
                    let sj = r.slurm.as_mut().expect("a tracked job is a slurm stage");
                    let show = |ui: &mut dyn RunUi, text: String| {
                        ui.stage_event(&node_id, &StageEvent::Message { text });
                    };
                    let end = match verdict {
                        Verdict::Pending { reason } => {
                            book.seen(registry, job, m.last_status(job));
                            sj.state = "PENDING";
                            show(ui, format!("slurm job {job} PENDING ({})", reason.as_deref().unwrap_or("queued")));
                            None
                        }
                        Verdict::Running { nodes } => {
                            book.seen(registry, job, m.last_status(job));
                            sj.state = "RUNNING";
                            show(ui, format!(
                                "slurm job {job} RUNNING on {} (queued {:.1}s)",
                                nodes.as_deref().unwrap_or("?"),
                                sj.submitted.elapsed().as_secs_f64()
                            ));
                            None
                        }
                        Verdict::Waiting { why } => {
                            show(ui, format!("slurm job {job}: {why}"));
                            None
                        }
                        Verdict::Done => {
                            // Who committed: this job (any run that submitted it) or another.
                            let ours = cache.lookup(&r.key)?.is_some_and(|rec| {
                                rec.meta.run_id == Some(sj.run_id) || rec.meta.run_id == opts.run_id
                            });
                            r.reported = Some(if ours { "executed" } else { "hit" }.into());
                            book.decided(job, "committed".into(), None);
                            Some(Some(0))
                        }
                        Verdict::Failed { error } => {
                            book.decided(job, error.clone(), Some(("failed", error.clone())));
                            r.error = Some(error);
                            Some(Some(1))
                        }
                        Verdict::OutOfMemory { detail } => {
                            let e = format!("out of memory: {detail}");
                            book.decided(job, e.clone(), Some(("failed", e.clone())));
                            r.error = Some(e);
                            Some(Some(1))
                        }
                        Verdict::Unsatisfiable { reason } => {
                            let _ = client.cancel(&[job], None);
                            let e = format!(
                                "slurm job {job} can never start: Slurm's reason is {reason} (lower the request or change the partition)"
                            );
                            book.decided(job, e.clone(), Some(("failed", e.clone())));
                            r.error = Some(e);
                            Some(Some(1))
                        }
                        Verdict::Cancelled => {
                            let e = "cancelled by ugc-pipe (interrupted)".to_string();
                            book.decided(job, e.clone(), Some(("cancelled", e)));
                            Some(Some(130))
                        }
                        Verdict::Retry { why } if summary.interrupted => {
                            let e = format!("slurm job {job} ended ({why:?}); not resubmitted: interrupted");
                            book.decided(job, e.clone(), Some(("cancelled", e.clone())));
                            show(ui, e);
                            Some(Some(130))
                        }
                        Verdict::Retry { why } => {
                            match submit(client, &sj.script, &job_name(sj.run_id, r.key.as_str())) {
                                Ok(new) => {
                                    show(ui, format!(
                                        "slurm job {job} ended ({why:?}): resubmitted as job {new} (attempt {})",
                                        sj.attempt_no + 1
                                    ));
                                    book.decided(job, format!("{why:?}: resubmitted as job {new}"), None);
                                    book.resubmitted(registry, job, new);
                                    by_job.remove(&job);
                                    by_job.insert(new, idx);
                                    sj.job = new;
                                    sj.attempt_no += 1;
                                    sj.state = "SUBMITTED";
                                    sj.submitted = Instant::now();
                                    m.track(r.key.as_str(), new, sj.attempt_no);
                                    None
                                }
                                Err(e) => {
                                    let e = format!(
                                        "slurm job {job} ended ({why:?}) and could not be resubmitted: {e}"
                                    );
                                    book.decided(job, e.clone(), Some(("failed", e.clone())));
                                    r.error = Some(e);
                                    Some(Some(1))
                                }
                            }
                        }
                    };
                    if let Some(code) = end {
                        let _ = tx.send(Msg::Exited(idx, code, None));
                    }
                }
                // Jobs Slurm has ended: their final row, and their worker's spooled rows.
                for (job, _key, status) in m.take_settled() {
                    if let Some(line) = book.settle(cache, registry, job, status.as_ref()) {
                        tell_settled(ui, &line, status.as_ref());
                    }
                }
                next_poll = Instant::now() + m.interval();
                if let Some(t) = cancel_deadline {
                    next_poll = next_poll.min(t);
                }
            }
            _ = tail_tick.tick(), if running.values().any(|r| r.slurm.as_ref().is_some_and(|s| s.state == "RUNNING")) => {
                for (idx, r) in &running {
                    let Some(sj) = r.slurm.as_ref().filter(|s| s.state == "RUNNING") else { continue };
                    for ev in book.tail(sj.job) {
                        ui.stage_event(&dag.node(*idx).id, &ev);
                    }
                }
            }
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                match msg {
                    Msg::Event(idx, ev) => {
                        if let StageEvent::Done { outcome, error } = &ev
                            && let Some(r) = running.get_mut(&idx) {
                            r.reported = Some(outcome.clone());
                            r.error.clone_from(error);
                        }
                        ui.stage_event(&dag.node(idx).id, &ev);
                    }
                    Msg::Exited(idx, code, signal) => {
                        let r = running.remove(&idx).expect("exited node was running");
                        if let Some(sj) = &r.slurm {
                            by_job.remove(&sj.job);
                        }
                        slots.give_back(r.slots, &r.gpus);
                        let node = dag.node(idx);
                        let secs = r.started.elapsed().as_secs_f64();
                        finished.insert(idx);
                        let record = cache.lookup(&r.key)?;
                        let settled = record.as_ref().and_then(|rec| {
                            settle(rec, r.reported.as_deref(), opts.run_id, r.started_unix_ms)
                        });
                        let outcome = match (code, settled, record) {
                            (_, Some(outcome), Some(record)) => {
                                // A Slurm job's rows are ingested from its spool when it
                                // settles; a row rebuilt from the record now would hide them.
                                if outcome == NodeOutcome::Executed && r.slurm.is_none()
                                    && let Err(e) = register_record(cache, registry, &record) {
                                    tracing::warn!("run registry: {e}");
                                }
                                // A stage process killed after its commit left its scratch.
                                if let Err(e) = cache.clear_leftover_scratch(&r.key) {
                                    tracing::warn!("{e} (`ugc-pipe gc` removes it)");
                                }
                                let _ = registry.set_node_key(&opts.pipeline, &node.id, &r.key, &record.material);
                                done.insert(idx, record);
                                outcome
                            }
                            (Some(130), ..) => NodeOutcome::Cancelled,
                            _ if summary.interrupted => NodeOutcome::Cancelled,
                            (code, ..) => {
                                let err = r.error.clone().unwrap_or_else(|| match (code, signal) {
                                    (_, Some(s)) => format!("stage process killed by signal {s}"),
                                    (Some(c), _) => format!("stage process exited with code {c}"),
                                    _ => "stage process ended without a status".into(),
                                });
                                summary.errors.insert(node.id.clone(), err);
                                if !opts.keep_going { stop_scheduling = true; }
                                NodeOutcome::Failed
                            }
                        };
                        ui.stage_finished(&node.id, &outcome, Some(&r.key), secs,
                            summary.errors.get(&node.id).map(String::as_str));
                        summary.outcomes.insert(node.id.clone(), outcome);
                    }
                }
            }
            _ = sigint.recv() => {
                cancel_slurm(&summary, &running, monitor.as_mut(), slurm_client.as_ref(), opts, &mut cancel_deadline, &mut next_poll, ui);
                cancel_all(&mut summary, &mut stop_scheduling, &running, opts, ui)
            }
            _ = sigterm.recv() => {
                cancel_slurm(&summary, &running, monitor.as_mut(), slurm_client.as_ref(), opts, &mut cancel_deadline, &mut next_poll, ui);
                cancel_all(&mut summary, &mut stop_scheduling, &running, opts, ui)
            }
            _ = sighup.recv() => {
                cancel_slurm(&summary, &running, monitor.as_mut(), slurm_client.as_ref(), opts, &mut cancel_deadline, &mut next_poll, ui);
                cancel_all(&mut summary, &mut stop_scheduling, &running, opts, ui)
            }
        }
    }
    // The jobs decided while Slurm still listed them running: wait a little for their
    // end (the worker exits right after its commit) so the registry has Slurm's final
    // state and the worker's rows when `run` returns.
    if let (Some(m), Some(s)) = (monitor.as_mut(), opts.slurm.as_ref()) {
        let until = Instant::now() + s.settings.lost_grace.min(Duration::from_secs(10));
        loop {
            for (job, _key, status) in m.take_settled() {
                if let Some(line) = book.settle(cache, registry, job, status.as_ref()) {
                    tell_settled(ui, &line, status.as_ref());
                }
            }
            if m.settling() == 0 {
                break;
            }
            if Instant::now() >= until {
                m.settle_now();
                continue;
            }
            tokio::time::sleep(s.settings.poll_min.min(Duration::from_secs(1))).await;
            m.poll();
        }
    }
    for &idx in &order {
        let id = &dag.node(idx).id;
        if !summary.outcomes.contains_key(id) {
            summary.outcomes.insert(id.clone(), NodeOutcome::Skipped);
        }
    }
    summary.secs = clock.elapsed().as_secs_f64();
    Ok(summary)
}

/// What a stage process that ended left its node, by the record of its key (the truth);
/// the process's report only says who committed it. `None`: no record of this attempt.
fn settle(
    record: &Record,
    reported: Option<&str>,
    run_id: Option<i64>,
    started_unix_ms: u64,
) -> Option<NodeOutcome> {
    match reported {
        Some("executed") => Some(NodeOutcome::Executed),
        Some("hit") => Some(NodeOutcome::Cached),
        // An older record (a forced re-run that failed, say) is not this attempt's.
        _ if record.meta.created_unix_ms < started_unix_ms => None,
        // Killed without a report: after its own commit if the record names this run.
        None if record.meta.run_id == run_id => Some(NodeOutcome::Executed),
        // Another run committed the key while this one's stage process ran.
        _ => Some(NodeOutcome::Cached),
    }
}

fn record_cached(
    registry: &Registry,
    opts: &RunOptions,
    node: &crate::graph::Node,
    key: &CacheKey,
) {
    let now = now_ms();
    let row = ExecutionRow {
        id: None,
        run_id: opts.run_id,
        pipeline: opts.pipeline.clone(),
        node: node.id.clone(),
        kind: node.kind.clone(),
        key: key.to_string(),
        status: "cached".into(),
        started_unix_ms: now,
        ended_unix_ms: now,
        duration_ms: 0,
        host: host_name(),
        device: String::new(),
        peak_rss_bytes: None,
        peak_gpu_bytes: None,
        error: None,
        resources: Some(node.resources.clone()),
        slurm_job: None,
    };
    if let Err(e) = registry.record_execution(&row) {
        tracing::warn!("run registry: {e}");
    }
}

/// A node that failed before any stage process ran for it (sbatch refused it, or it can
/// never get its slots): reported and recorded as failed with `err`.
fn fail_unstarted(
    node: &str,
    key: &CacheKey,
    err: String,
    ui: &mut dyn RunUi,
    summary: &mut RunSummary,
) {
    ui.stage_finished(node, &NodeOutcome::Failed, Some(key), 0.0, Some(&err));
    summary.errors.insert(node.to_string(), err);
    summary
        .outcomes
        .insert(node.to_string(), NodeOutcome::Failed);
}

/// First signal: ask every running stage to checkpoint and stop; after the grace period,
/// kill what is left. A second signal kills at once.
fn cancel_all(
    summary: &mut RunSummary,
    stop_scheduling: &mut bool,
    running: &BTreeMap<NodeIndex, Running>,
    opts: &RunOptions,
    ui: &mut dyn RunUi,
) {
    let again = summary.interrupted;
    summary.interrupted = true;
    *stop_scheduling = true;
    let sig = if again { libc::SIGKILL } else { libc::SIGTERM };
    if again {
        ui.note("interrupted again: killing running stages");
    } else {
        ui.note(&format!(
            "interrupted: asking {} running stage(s) to checkpoint and stop (Ctrl-C again to kill)",
            running.len()
        ));
    }
    let pids: Vec<u32> = running.values().filter_map(|r| r.child_pid).collect();
    for &pid in &pids {
        // Each stage process leads its own process group; it forwards the signal to the
        // group of any user command it runs.
        // SAFETY: plain kill(2) on a pid we started.
        unsafe {
            libc::kill(-(pid as i32), sig);
        }
    }
    if !again && !pids.is_empty() {
        let grace = opts.cancel_grace_secs;
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(grace));
            for pid in pids {
                // SAFETY: as above; a pid that already exited is harmless to signal
                // within the grace period (it is not reused that fast by our own children).
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                }
            }
        });
    }
}

/// Ctrl-C for the stages running as Slurm jobs (before [`cancel_all`] marks the run
/// interrupted): the first asks running jobs to checkpoint (`USR1` to the batch
/// process, which is the worker) and cancels pending ones at once, with `scancel` for
/// the rest when the grace is over; a second cancels every job at once.
#[allow(clippy::too_many_arguments)]
fn cancel_slurm(
    summary: &RunSummary,
    running: &BTreeMap<NodeIndex, Running>,
    monitor: Option<&mut Monitor<'_>>,
    client: Option<&SlurmCli>,
    opts: &RunOptions,
    deadline: &mut Option<Instant>,
    next_poll: &mut Instant,
    ui: &mut dyn RunUi,
) {
    let (Some(m), Some(client), Some(s)) = (monitor, client, opts.slurm.as_ref()) else {
        return;
    };
    let again = summary.interrupted;
    let (mut now, mut ask) = (Vec::new(), Vec::new());
    for sj in running.values().filter_map(|r| r.slurm.as_ref()) {
        m.mark_cancelled(sj.job);
        if again || sj.state != "RUNNING" {
            now.push(sj.job);
        } else {
            ask.push(sj.job);
        }
    }
    if !now.is_empty() {
        ui.note(&format!("slurm: cancelling {} job(s)", now.len()));
        if let Err(e) = client.cancel(&now, None) {
            ui.note(&format!("slurm: scancel: {e}"));
        }
    }
    if !ask.is_empty() {
        ui.note(&format!(
            "slurm: asking {} running job(s) to checkpoint; cancelled in {:?} (Ctrl-C again: now)",
            ask.len(),
            s.settings.grace
        ));
        if let Err(e) = client.cancel(&ask, Some("USR1")) {
            ui.note(&format!("slurm: scancel --signal=USR1: {e}"));
        }
        *deadline = Some(Instant::now() + s.settings.grace);
    } else if again {
        *deadline = None;
    }
    *next_poll = Instant::now() + s.settings.poll_min.min(Duration::from_secs(1));
}

/// `sbatch` the script; when the answer was lost (a transient error), the job may exist
/// anyway: one with its name is taken instead of a second submission.
fn submit(
    client: &SlurmCli,
    script: &std::path::Path,
    name: &str,
) -> Result<JobId, crate::slurm::queue::QueueError> {
    match client.submit(script) {
        Ok(id) => Ok(id),
        Err(e) if e.is_transient() => match client.find_by_name(name) {
            Ok(ids) if !ids.is_empty() => Ok(*ids.iter().max().expect("not empty")),
            _ => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// The job file of a node run as a Slurm job: the device is relative to the job's
/// `CUDA_VISIBLE_DEVICES` (Slurm's cgroups renumber the allocated GPUs from 0).
#[allow(clippy::too_many_arguments)]
fn slurm_job_file(
    dag: &Dag,
    cache: &Cache,
    done: &BTreeMap<NodeIndex, Record>,
    idx: NodeIndex,
    key: &CacheKey,
    material: crate::cache::KeyMaterial,
    gpu: bool,
    devices: usize,
    opts: &RunOptions,
) -> Result<Job, ExecutorError> {
    let node = dag.node(idx);
    let inputs: Vec<StageInput> = dag
        .deps(idx)
        .iter()
        .map(|d| {
            let n = dag.node(*d);
            Ok(StageInput {
                name: n.stage.clone(),
                node: n.id.clone(),
                point: n.matrix_point.clone(),
                kind: n.kind.clone(),
                dir: cache.output_dir(&done[d])?,
            })
        })
        .collect::<Result<_, crate::cache::CacheError>>()?;
    Ok(Job {
        schema: JOB_SCHEMA_VERSION,
        key: key.to_string(),
        material,
        pipeline: opts.pipeline.clone(),
        node: node.id.clone(),
        stage: node.stage.clone(),
        kind: node.kind.clone(),
        params: node.params.clone(),
        inputs,
        device: if gpu {
            DeviceKind::Cuda(0)
        } else {
            DeviceKind::Cpu
        },
        env: opts.stage_env.clone(),
        run_id: opts.run_id,
        resources: node.resources.clone(),
        gpus: if gpu && devices > 1 {
            (0..devices).collect()
        } else {
            Vec::new()
        },
    })
}

fn log_path(cache: &Cache, run_id: Option<i64>, node: &str) -> PathBuf {
    let safe: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.=,".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let run = run_id
        .map(|r| r.to_string())
        .unwrap_or_else(|| "adhoc".into());
    cache
        .root()
        .join("logs")
        .join(run)
        .join(format!("{safe}.log"))
}

fn spawn_stage(
    opts: &RunOptions,
    cache: &Cache,
    key: &CacheKey,
    forced: bool,
    log_file: &std::path::Path,
) -> Result<Child, ExecutorError> {
    let log_err = |source| ExecutorError::Log {
        path: log_file.to_path_buf(),
        source,
    };
    if let Some(dir) = log_file.parent() {
        std::fs::create_dir_all(dir).map_err(log_err)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .map_err(log_err)?;
    let (program, args) = opts
        .exec_command
        .split_first()
        .expect("exec command is not empty");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .arg("--key")
        .arg(key.as_str())
        .arg("--cache-dir")
        .arg(cache.root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(false)
        .process_group(0);
    if forced {
        cmd.arg("--force");
    }
    // The run's own job file (`jobs/<run>/<key>.json`): the stage records its work there.
    if let Some(run) = opts.run_id {
        cmd.arg("--run").arg(run.to_string());
    }
    // The stage process dies with the head: `kill -9` of the head must not leave stages
    // running unsupervised. What a stage started in turn dies with the stage process (the
    // `command` kind's guardian, src/bin/ugc-pipe-worker/group.rs). The parent check covers
    // a head that died before the prctl took effect.
    let head = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe, and the error is built without
    // allocating.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != head {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| ExecutorError::Spawn {
        program: program.clone(),
        source,
    })
}

fn watch_child(idx: NodeIndex, mut child: Child, tx: mpsc::UnboundedSender<Msg>) {
    let stdout = child.stdout.take();
    tokio::spawn(async move {
        if let Some(stdout) = stdout {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let ev = StageEvent::parse(&line).unwrap_or(StageEvent::Message { text: line });
                let _ = tx.send(Msg::Event(idx, ev));
            }
        }
        let status = child.wait().await.ok();
        use std::os::unix::process::ExitStatusExt;
        let code = status.and_then(|s| s.code());
        let signal = status.and_then(|s| s.signal());
        let _ = tx.send(Msg::Exited(idx, code, signal));
    });
}

#[cfg(test)]
mod settle_tests {
    use serde_json::json;

    use super::*;
    use crate::cache::{KeyMaterial, RecordMeta};

    fn record(run_id: Option<i64>, created_unix_ms: u64) -> Record {
        let material = KeyMaterial::new("k", 1, json!({}));
        Record {
            key: material.key(),
            material,
            files: vec![],
            tree_digest: String::new(),
            meta: RecordMeta {
                node: "n".into(),
                pipeline: "p".into(),
                created_unix_ms,
                duration_ms: 1,
                host: "h".into(),
                device: "cpu".into(),
                run_id,
                inputs_verified: true,
            },
        }
    }

    #[test]
    fn the_record_decides_how_a_stage_process_left_its_node() {
        use NodeOutcome::{Cached, Executed};
        let (run, started) = (Some(7), 1_000);
        let ours = record(run, 1_500);
        let theirs = record(Some(8), 1_500);
        let old = record(run, 900);
        // The process's report names who committed.
        assert_eq!(
            settle(&ours, Some("executed"), run, started),
            Some(Executed)
        );
        assert_eq!(settle(&theirs, Some("hit"), run, started), Some(Cached));
        // Killed after its commit, before it could report (or write the registry).
        assert_eq!(settle(&ours, None, run, started), Some(Executed));
        // Died while another run committed the key.
        assert_eq!(settle(&theirs, None, run, started), Some(Cached));
        assert_eq!(settle(&ours, Some("failed"), run, started), Some(Cached));
        // A record older than the attempt (a forced re-run that failed) is not its result.
        assert_eq!(settle(&old, None, run, started), None);
        assert_eq!(settle(&old, Some("failed"), run, started), None);
    }
}

#[cfg(test)]
mod slot_tests {
    use super::*;

    #[test]
    fn cpu_ranks_take_a_slot_each_and_a_stage_wider_than_jobs_runs_alone() {
        let mut s = Slots::new(4, &[]);
        assert_eq!(
            s.take(2, false, false),
            Take::Go {
                slots: 2,
                gpus: vec![]
            }
        );
        assert_eq!(
            s.take(2, false, false),
            Take::Go {
                slots: 2,
                gpus: vec![]
            }
        );
        assert_eq!(s.take(1, false, false), Take::Wait);
        s.give_back(2, &[]);
        // Six ranks on four slots: only once nothing runs.
        assert_eq!(s.take(6, false, false), Take::Wait);
        s.give_back(2, &[]);
        assert_eq!(
            s.take(6, false, false),
            Take::Go {
                slots: 6,
                gpus: vec![]
            }
        );
        assert_eq!(s.take(1, false, false), Take::Wait, "it runs alone");
        s.give_back(6, &[]);
        assert_eq!(
            s.take(1, false, false),
            Take::Go {
                slots: 1,
                gpus: vec![]
            }
        );
    }

    #[test]
    fn cuda_ranks_take_a_gpu_each_and_one_slot() {
        let mut s = Slots::new(8, &[0, 1, 2]);
        assert_eq!(
            s.take(2, true, false),
            Take::Go {
                slots: 1,
                gpus: vec![0, 1]
            }
        );
        assert_eq!(s.take(2, true, false), Take::Wait, "one GPU left");
        assert_eq!(
            s.take(1, true, false),
            Take::Go {
                slots: 1,
                gpus: vec![2]
            }
        );
        s.give_back(1, &[0, 1]);
        assert_eq!(
            s.take(2, true, false),
            Take::Go {
                slots: 1,
                gpus: vec![0, 1]
            }
        );
        assert!(
            matches!(s.take(4, true, false), Take::Never(m) if m == "needs 4 GPUs, but the run has 3")
        );
        // One job slot: GPU stages wait for it like any other.
        let mut one = Slots::new(1, &[0, 1]);
        assert_eq!(
            one.take(1, true, false),
            Take::Go {
                slots: 1,
                gpus: vec![0]
            }
        );
        assert_eq!(one.take(1, true, false), Take::Wait);
    }

    #[test]
    fn an_exclusive_stage_starts_only_on_an_idle_machine_and_nothing_starts_beside_it() {
        for (gpus, on_gpu) in [(vec![], false), (vec![0, 1], true)] {
            let mut s = Slots::new(4, &gpus);
            let Take::Go {
                slots: one,
                gpus: g,
            } = s.take(1, on_gpu, false)
            else {
                panic!("an idle machine takes a stage");
            };
            assert_eq!(s.take(1, on_gpu, true), Take::Wait, "another stage runs");
            s.give_back(one, &g);
            let Take::Go { slots, gpus: g } = s.take(1, on_gpu, true) else {
                panic!("an idle machine takes the exclusive stage");
            };
            assert_eq!(slots, 4, "it holds every slot");
            assert_eq!(s.take(1, on_gpu, false), Take::Wait, "nothing beside it");
            s.give_back(slots, &g);
            assert!(matches!(s.take(1, on_gpu, false), Take::Go { .. }));
        }
    }
}

#[cfg(test)]
mod schedule_tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::graph::Dag;
    use crate::spec::testutil::{kinds, load};

    struct Quiet;

    impl RunUi for Quiet {
        fn stage_started(&mut self, _: &str, _: &RunReason, _: &std::path::Path) {}
        fn stage_event(&mut self, _: &str, _: &StageEvent) {}
        fn stage_finished(
            &mut self,
            _: &str,
            _: &NodeOutcome,
            _: Option<&CacheKey>,
            _: f64,
            _: Option<&str>,
        ) {
        }
        fn note(&mut self, _: &str) {}
    }

    /// A fake stage process: appends `start`/`end`, its key and a timestamp to `log`, holds
    /// its slots for 2 s, and fails (nothing is committed, so nothing is cached).
    fn fake(log: &std::path::Path) -> String {
        let log = log.display();
        format!(
            r#"key=$2; echo "start $key $(date +%s%N)" >> {log}; sleep 2; echo "end $key $(date +%s%N)" >> {log}; exit 1"#
        )
    }

    #[test]
    fn the_executor_counts_a_stage_of_n_cpu_devices_as_n_of_the_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let text = "stages:
  a: {kind: dp, resources: {devices: 2}, params: {lr: 0.1}}
  b: {kind: dp, resources: {devices: 2}, params: {lr: 0.2}}
  c: {kind: dp, resources: {devices: 2}, params: {lr: 0.3}}
  big: {kind: dp, resources: {devices: 6}, params: {lr: 0.4, batch_size: 6}}
";
        let kinds = kinds();
        let dag = Dag::build(&load(text).unwrap(), &kinds).unwrap();
        let cache = Cache::open(&dir.path().join("cache")).unwrap();
        let registry = Registry::open(&dir.path().join("r.sqlite")).unwrap();
        let keys = KeyBuilder {
            cache: &cache,
            kinds: &kinds,
            env: BTreeMap::new(),
            device_kind: "cpu".into(),
        };
        let log = dir.path().join("log");
        let opts = RunOptions {
            jobs: 4,
            keep_going: true,
            forced: BTreeSet::new(),
            gpus: vec![],
            exec_command: vec!["sh".into(), "-c".into(), fake(&log), "fake".into()],
            pipeline: "p".into(),
            run_id: None,
            stage_env: BTreeMap::new(),
            cancel_grace_secs: 1,
            slurm: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let summary = rt
            .block_on(run_dag(&dag, &cache, &registry, &keys, &opts, &mut Quiet))
            .unwrap();
        assert_eq!(summary.count(NodeOutcome::Failed), 4, "{summary:?}");
        // Each key's devices, from the job file the head wrote for it.
        let devices = |key: &str| -> usize {
            Job::read(cache.root(), key, None)
                .unwrap()
                .resources
                .devices
        };
        let mut events: Vec<(u128, bool, usize)> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f[2].parse().unwrap(), f[0] == "start", devices(f[1]))
            })
            .collect();
        // Ends before starts at the same instant: a slot given back is free at once.
        events.sort_by_key(|&(t, start, _)| (t, start));
        let (mut used, mut running, mut peak, mut shared) = (0usize, 0usize, 0usize, 0usize);
        for (_, start, n) in events {
            if start {
                used += n;
                running += 1;
                // Within the 4 jobs, or the six-device stage alone.
                assert!(
                    used <= 4 || running == 1,
                    "{used} slots in use by {running}"
                );
                peak = peak.max(used);
                if running > 1 {
                    shared = shared.max(used);
                }
            } else {
                used -= n;
                running -= 1;
            }
        }
        assert_eq!(peak, 6, "the 6-device stage ran");
        // Two 2-device stages start together in the first pass and hold their slots 2 s.
        assert_eq!(shared, 4, "two 2-device stages shared the 4 jobs");
    }
}
