//! What the head records of each Slurm job of a run, and what it shows of it: the job's
//! row in the registry's `slurm_jobs` (state, node, queue wait, run time), the execution
//! rows the job's worker spooled into the cache (only the head writes the registry:
//! SQLite's WAL is unsafe on NFS), and the stage's progress, read from the tail of its log
//! in the shared cache (the job's stdout, where the worker writes its progress events, as
//! a local stage process writes them to the head's pipe).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::attempt::{Attempt, attempts_dir, read_attempt, refresh_view, rows_path};
use super::queue::{JobId, JobStatus};
use crate::cache::{Cache, CacheKey};
use crate::events::StageEvent;
use crate::exec::{now_ms, read_metrics};
use crate::registry::{ExecutionRow, Registry, RegistryError, SlurmJobRow, read_spool};
use crate::spec::Resources;

/// The most of a log read per look: a stage printing megabytes of output must not stall
/// the head; the rest is read at the next look.
const TAIL_CHUNK: u64 = 1 << 20;

/// One Slurm job of a stage, as the head tracks it.
#[derive(Debug, Clone)]
pub struct JobCtx {
    pub key: String,
    pub node: String,
    pub kind: String,
    /// The run that submitted it.
    pub run_id: i64,
    /// 1 for the stage's first submission.
    pub attempt: u32,
    pub submitted_unix_ms: u64,
    pub resources: Resources,
    /// The stage log (the job's `--output`).
    pub log: PathBuf,
    log_pos: u64,
    partial: Vec<u8>,
    /// The head's verdict once the job is decided (recorded as its `reason`).
    verdict: Option<String>,
    /// How the stage ended in this job when its worker may have left no row (Slurm killed
    /// it, or it never started): the status and error the head records then.
    head_row: Option<(&'static str, String)>,
}

impl JobCtx {
    /// A job just submitted (or re-attached); its log is read from its current end, so an
    /// earlier attempt's lines are not shown again.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key: &str,
        node: &str,
        kind: &str,
        run_id: i64,
        attempt: u32,
        resources: Resources,
        log: PathBuf,
    ) -> JobCtx {
        let log_pos = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        JobCtx {
            key: key.to_string(),
            node: node.to_string(),
            kind: kind.to_string(),
            run_id,
            attempt,
            submitted_unix_ms: now_ms(),
            resources,
            log,
            log_pos,
            partial: Vec::new(),
            verdict: None,
            head_row: None,
        }
    }
}

/// The Slurm jobs of one run.
pub struct Book {
    pipeline: String,
    jobs: HashMap<JobId, JobCtx>,
}

impl Book {
    pub fn new(pipeline: &str) -> Book {
        Book {
            pipeline: pipeline.to_string(),
            jobs: HashMap::new(),
        }
    }

    /// Starts recording `job`: its row goes in as `PENDING`.
    pub fn submitted(&mut self, registry: &Registry, job: JobId, ctx: JobCtx) {
        let row = self.row(
            job,
            &ctx,
            None,
            None,
            "PENDING".into(),
            Some("submitted".into()),
        );
        warn(registry.upsert_slurm_job(&row));
        self.jobs.insert(job, ctx);
    }

    /// A job that is resubmitted as `new`: the new one continues the log where the old one
    /// stopped, with the next attempt number.
    pub fn resubmitted(&mut self, registry: &Registry, old: JobId, new: JobId) {
        let Some(ctx) = self.jobs.get(&old) else {
            return;
        };
        let next = JobCtx {
            attempt: ctx.attempt + 1,
            submitted_unix_ms: now_ms(),
            verdict: None,
            head_row: None,
            ..ctx.clone()
        };
        self.submitted(registry, new, next);
    }

    /// Records Slurm's current view of a job still being decided.
    pub fn seen(&mut self, registry: &Registry, job: JobId, status: Option<&JobStatus>) {
        let Some(ctx) = self.jobs.get(&job) else {
            return;
        };
        let Some(st) = status else { return };
        let row = self.row(job, ctx, Some(st), None, st.state.name(), st.reason.clone());
        warn(registry.upsert_slurm_job(&row));
    }

    /// The head decided the job (`verdict`, for people); `head_row` is what to record for
    /// the stage if the job's worker left no row of its own.
    pub fn decided(
        &mut self,
        job: JobId,
        verdict: String,
        head_row: Option<(&'static str, String)>,
    ) {
        if let Some(ctx) = self.jobs.get_mut(&job) {
            ctx.verdict = Some(verdict);
            ctx.head_row = head_row;
        }
    }

    /// The progress events the job's worker wrote to its log since the last look (its
    /// final `done` is the verdict's business, not shown here).
    pub fn tail(&mut self, job: JobId) -> Vec<StageEvent> {
        let Some(ctx) = self.jobs.get_mut(&job) else {
            return Vec::new();
        };
        let Ok(mut f) = std::fs::File::open(&ctx.log) else {
            return Vec::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < ctx.log_pos {
            // truncated by hand: start again
            ctx.log_pos = 0;
            ctx.partial.clear();
        }
        if len == ctx.log_pos || f.seek(SeekFrom::Start(ctx.log_pos)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let n = f.take(TAIL_CHUNK).read_to_end(&mut buf).unwrap_or(0);
        ctx.log_pos += n as u64;
        ctx.partial.extend_from_slice(&buf[..n]);
        let Some(last_nl) = ctx.partial.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let rest = ctx.partial.split_off(last_nl + 1);
        let lines = std::mem::replace(&mut ctx.partial, rest);
        String::from_utf8_lossy(&lines)
            .lines()
            .filter_map(StageEvent::parse)
            .filter(|e| !matches!(e, StageEvent::Done { .. }))
            .collect()
    }

    /// The job has ended in Slurm (or the run gave up waiting): records its final row
    /// (`status`: the last Slurm gave), ingests the rows its worker spooled, or, where it
    /// left none, records the stage's end from its record or the head's verdict. Returns a
    /// line for people: state, node, queue wait, run time.
    pub fn settle(
        &mut self,
        cache: &Cache,
        registry: &Registry,
        job: JobId,
        status: Option<&JobStatus>,
    ) -> Option<String> {
        let ctx = self.jobs.remove(&job)?;
        refresh_view(cache.root(), &ctx.key);
        let attempt = read_attempt(cache.root(), &ctx.key, job).ok().flatten();
        let state = status.map_or_else(|| "UNKNOWN".to_string(), |s| s.state.name());
        let row = self.row(
            job,
            &ctx,
            status,
            attempt.as_ref(),
            state,
            ctx.verdict.clone(),
        );
        warn(registry.upsert_slurm_job(&row));
        let spooled = match read_spool(&rows_path(cache.root(), &ctx.key, job)) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("run registry: {e}");
                Vec::new()
            }
        };
        if spooled.is_empty() {
            warn(self.head_rows(cache, registry, job, &ctx, attempt.as_ref()));
        } else {
            warn(registry.ingest(&spooled).map(|_| ()));
        }
        let secs =
            |ms: Option<u64>| ms.map_or("?".into(), |m| format!("{:.1}s", m as f64 / 1000.0));
        Some(format!(
            "slurm job {job} (`{}`) {} on {}: queued {}, ran {}",
            ctx.node,
            row.state,
            row.nodes.as_deref().unwrap_or("?"),
            secs(row.queue_wait_ms),
            secs(row.run_ms)
        ))
    }

    /// The rows of a job whose worker spooled none: the commit, from its record, when this
    /// job made it (a worker killed between its commit and its spool), else the head's
    /// verdict on the stage (killed by Slurm, lost, never started).
    fn head_rows(
        &self,
        cache: &Cache,
        registry: &Registry,
        job: JobId,
        ctx: &JobCtx,
        attempt: Option<&Attempt>,
    ) -> Result<(), RegistryError> {
        let started = attempt.map_or(ctx.submitted_unix_ms, |a| a.started_ms);
        let key: Option<CacheKey> = ctx.key.parse().ok();
        let record = key.and_then(|k| cache.lookup(&k).ok().flatten());
        if let Some(rec) = record
            .filter(|r| r.meta.run_id == Some(ctx.run_id) && r.meta.created_unix_ms >= started)
        {
            let m = &rec.meta;
            let row = ExecutionRow {
                id: None,
                run_id: Some(ctx.run_id),
                pipeline: m.pipeline.clone(),
                node: m.node.clone(),
                kind: rec.material.kind.clone(),
                key: ctx.key.clone(),
                status: "executed".into(),
                started_unix_ms: m.created_unix_ms.saturating_sub(m.duration_ms),
                ended_unix_ms: m.created_unix_ms,
                duration_ms: m.duration_ms,
                host: m.host.clone(),
                device: m.device.clone(),
                peak_rss_bytes: attempt.and_then(|a| a.peak_rss_kib).map(|k| k * 1024),
                peak_gpu_bytes: None,
                error: None,
                resources: Some(ctx.resources.clone()),
                slurm_job: Some(job),
            };
            let metrics = cache
                .output_dir(&rec)
                .map(|d| read_metrics(&d))
                .unwrap_or_default();
            registry.record_committed(&row, m.created_unix_ms, &metrics)?;
            return Ok(());
        }
        let Some((status, error)) = &ctx.head_row else {
            return Ok(());
        };
        let ended = attempt.and_then(|a| a.ended_ms).unwrap_or_else(now_ms);
        let row = ExecutionRow {
            id: None,
            run_id: Some(ctx.run_id),
            pipeline: self.pipeline.clone(),
            node: ctx.node.clone(),
            kind: ctx.kind.clone(),
            key: ctx.key.clone(),
            status: (*status).into(),
            started_unix_ms: started,
            ended_unix_ms: ended.max(started),
            duration_ms: ended.saturating_sub(started),
            host: attempt.map_or_else(String::new, |a| a.host.clone()),
            device: String::new(),
            peak_rss_bytes: attempt.and_then(|a| a.peak_rss_kib).map(|k| k * 1024),
            peak_gpu_bytes: None,
            error: Some(error.clone()),
            resources: Some(ctx.resources.clone()),
            slurm_job: Some(job),
        };
        registry.ingest(&[crate::registry::SpoolEntry::new(row, None)])?;
        Ok(())
    }

    fn row(
        &self,
        job: JobId,
        ctx: &JobCtx,
        status: Option<&JobStatus>,
        attempt: Option<&Attempt>,
        state: String,
        reason: Option<String>,
    ) -> SlurmJobRow {
        let started = attempt.map(|a| a.started_ms);
        let ended = attempt.and_then(|a| a.ended_ms);
        let queue_wait_ms = status
            .and_then(JobStatus::queue_wait)
            .map(|d| d.as_millis() as u64)
            .or_else(|| started.map(|s| s.saturating_sub(ctx.submitted_unix_ms)));
        SlurmJobRow {
            job,
            run_id: Some(ctx.run_id),
            pipeline: self.pipeline.clone(),
            node: ctx.node.clone(),
            key: ctx.key.clone(),
            attempt: ctx.attempt,
            state,
            nodes: status.and_then(|s| s.nodes.clone()),
            reason,
            submitted_unix_ms: ctx.submitted_unix_ms,
            started_unix_ms: started,
            ended_unix_ms: ended,
            queue_wait_ms,
            run_ms: started.zip(ended).map(|(s, e)| e.saturating_sub(s)),
        }
    }
}

/// Ingests every row spooled for `key` (`attempts/<key>/*.rows`) into the registry, once:
/// for a record committed by a job no head watched to its end (the head was killed), found
/// later as a cache hit or by `runs --run`. Returns how many rows were added.
pub fn ingest_key_spools(
    cache_root: &Path,
    registry: &Registry,
    key: &str,
) -> Result<usize, RegistryError> {
    let Ok(entries) = std::fs::read_dir(attempts_dir(cache_root, key)) else {
        return Ok(0);
    };
    let mut spools: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rows"))
        .collect();
    spools.sort();
    let mut added = 0;
    for p in spools {
        added += registry.ingest(&read_spool(&p)?)?;
    }
    Ok(added)
}

/// [`ingest_key_spools`] for every key that has an attempt folder.
pub fn ingest_all_spools(cache_root: &Path, registry: &Registry) -> Result<usize, RegistryError> {
    let Ok(keys) = std::fs::read_dir(cache_root.join("attempts")) else {
        return Ok(0);
    };
    let mut added = 0;
    for k in keys.flatten() {
        if let Some(key) = k.file_name().to_str() {
            added += ingest_key_spools(cache_root, registry, key)?;
        }
    }
    Ok(added)
}

/// The registry is bookkeeping: its failure is reported, never fatal to the run.
fn warn(r: Result<(), RegistryError>) {
    if let Err(e) = r {
        tracing::warn!("run registry: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slurm::attempt::{AttemptWriter, Outcome};
    use crate::slurm::queue::JobState;
    use std::io::Write;

    const KEY: &str = "ab00000000000000000000000000000000000000000000000000000000000000";

    fn status(id: JobId, state: JobState) -> JobStatus {
        JobStatus {
            id,
            state,
            reason: None,
            nodes: Some("n1".into()),
            submitted: Some("2026-01-01T00:00:00".into()),
            started: Some("2026-01-01T00:00:02".into()),
            exit_code: None,
        }
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn progress_is_read_from_the_log_tail_and_settling_records_the_job_and_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache")).unwrap();
        let registry = Registry::open(&cache.root().join("registry.sqlite")).unwrap();
        let run = registry.begin_run("p.yaml", &[]).unwrap();
        let log = cache.root().join("logs/1/a.log");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        append(
            &log,
            "{\"ev\":\"message\",\"text\":\"an earlier attempt\"}\n",
        );
        let mut book = Book::new("p.yaml");
        let ctx = JobCtx::new(
            KEY,
            "a",
            "command",
            run,
            1,
            Resources::default(),
            log.clone(),
        );
        book.submitted(&registry, 5, ctx);
        let rows = registry.slurm_jobs(run).unwrap();
        assert_eq!((rows[0].job, rows[0].state.as_str()), (5, "PENDING"));

        // The job's stdout and stderr: log lines, events, half an event.
        append(
            &log,
            "ugc-pipe: job 5 on n1\n{\"ev\":\"message\",\"text\":\"$ make\"}\nINFO stage a\n{\"ev\":\"step\",\"step\":3}\n{\"ev\":\"st",
        );
        assert_eq!(
            book.tail(5),
            [
                StageEvent::Message {
                    text: "$ make".into()
                },
                StageEvent::Step { step: 3 }
            ],
            "the earlier attempt's lines are not shown again"
        );
        assert!(book.tail(5).is_empty(), "nothing new");
        append(
            &log,
            "art\",\"phase\":\"train\",\"total\":9}\n{\"ev\":\"done\",\"outcome\":\"failed\"}\n",
        );
        assert_eq!(
            book.tail(5),
            [StageEvent::Start {
                phase: "train".into(),
                total: 9
            }],
            "the line completed; `done` is the verdict's"
        );
        book.seen(&registry, 5, Some(&status(5, JobState::Running)));
        assert_eq!(registry.slurm_jobs(run).unwrap()[0].state, "RUNNING");

        // The worker: its attempt file and a spooled failure row.
        let w = AttemptWriter::begin(cache.root(), KEY, 5).unwrap();
        let spool = Registry::spool(&rows_path(cache.root(), KEY, 5)).unwrap();
        let row = ExecutionRow {
            id: None,
            run_id: Some(run),
            pipeline: "p.yaml".into(),
            node: "a".into(),
            kind: "command".into(),
            key: KEY.into(),
            status: "failed".into(),
            started_unix_ms: now_ms(),
            ended_unix_ms: now_ms(),
            duration_ms: 0,
            host: "n1".into(),
            device: "cpu".into(),
            peak_rss_bytes: None,
            peak_gpu_bytes: None,
            error: Some("exit code 3".into()),
            resources: None,
            slurm_job: Some(5),
        };
        spool.record_execution(&row).unwrap();
        w.finish(Outcome::Failed, 1, Some("exit code 3".into()))
            .unwrap();
        book.decided(
            5,
            "exit code 3".into(),
            Some(("failed", "exit code 3".into())),
        );
        let line = book
            .settle(&cache, &registry, 5, Some(&status(5, JobState::Failed)))
            .unwrap();
        assert!(
            line.contains("FAILED on n1") && line.contains("queued 2.0s"),
            "{line}"
        );
        let j = &registry.slurm_jobs(run).unwrap()[0];
        assert_eq!(j.state, "FAILED");
        assert_eq!(j.reason.as_deref(), Some("exit code 3"));
        assert_eq!(j.queue_wait_ms, Some(2_000), "Slurm's own times");
        assert!(j.run_ms.is_some() && j.started_unix_ms.is_some());
        let execs = registry.executions(run).unwrap();
        assert_eq!(
            execs.len(),
            1,
            "the worker's own row, not a second from the head"
        );
        assert_eq!(execs[0].error.as_deref(), Some("exit code 3"));
        assert_eq!(ingest_key_spools(cache.root(), &registry, KEY).unwrap(), 0);
        assert!(book.settle(&cache, &registry, 5, None).is_none(), "once");

        // A job Slurm killed before its worker wrote anything: the head's row.
        let ctx = JobCtx::new(KEY, "a", "command", run, 2, Resources::default(), log);
        book.submitted(&registry, 6, ctx);
        book.decided(
            6,
            "out of memory".into(),
            Some(("failed", "out of memory: OOM".into())),
        );
        book.settle(
            &cache,
            &registry,
            6,
            Some(&status(6, JobState::OutOfMemory)),
        )
        .unwrap();
        let execs = registry.executions(run).unwrap();
        assert_eq!(execs.len(), 2);
        assert_eq!(
            (
                execs[1].status.as_str(),
                execs[1].slurm_job,
                execs[1].error.as_deref()
            ),
            ("failed", Some(6), Some("out of memory: OOM"))
        );
        let jobs = registry.slurm_jobs(run).unwrap();
        assert_eq!(
            (
                jobs[1].state.as_str(),
                jobs[1].attempt,
                jobs[1].queue_wait_ms
            ),
            ("OUT_OF_MEMORY", 2, Some(2_000))
        );
        assert_eq!(jobs[1].run_ms, None, "no attempt file: no run time");
    }
}
