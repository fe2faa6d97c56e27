//! Verbs on the cache and the run registry: runs, gc, unlock, verify.

use std::path::{Path, PathBuf};

use ugc_engine::cache::{Cache, DERIVED_RULE};
use ugc_engine::exec::register_run_records;
use ugc_engine::lock::{JobProbe, list_locks, remove_stale};
use ugc_engine::registry::{Registry, SlurmJobRow};
use ugc_engine::slurm::book::ingest_all_spools;
use ugc_engine::slurm::queue::{Commands, SlurmCli};

use super::{CacheArgs, CliError, CliResult, EXIT_FAILED, print_json_or};

/// The cache a cache verb works on, by the one rule of every verb: `--cache-dir` (or
/// `UGC_PIPE_CACHE`, which clap reads into it), else the given pipeline's project
/// `cache/` (where `run` of that pipeline puts it), else the nearest existing cache
/// named `cache/` in the current directory or a parent (so the verbs work from any
/// folder of a project, `pipelines/` included). No cache anywhere is a usage error.
pub fn cache_dir_for(c: &CacheArgs) -> Result<PathBuf, CliError> {
    if let Some(dir) = &c.cache_dir {
        return Ok(dir.clone());
    }
    if let Some(p) = &c.pipeline {
        if !p.is_file() {
            return Err(CliError::usage(format!(
                "pipeline {}: no such file",
                p.display()
            )));
        }
        return Ok(super::pipeline::default_cache_dir(&pipeline_id(p)?));
    }
    let cwd = std::env::current_dir()
        .map_err(|e| CliError::failed(format!("the current directory: {e}")))?;
    for dir in cwd.ancestors() {
        let cand = dir.join("cache");
        if is_cache(&cand) {
            if dir != cwd {
                tracing::info!("cache {}", cand.display());
            }
            return Ok(cand);
        }
    }
    Err(CliError::usage(format!(
        "no cache found: no cache/ in {} or a parent folder; name it with --cache-dir \
         (or UGC_PIPE_CACHE), or give the pipeline (`ugc-pipe runs P`)",
        cwd.display()
    )))
}

/// A folder the store made: its records and objects folders exist (`Cache::open` makes
/// them), so an unrelated `cache/` (a browser's, a build tool's) is not taken for one.
fn is_cache(dir: &Path) -> bool {
    dir.join("records").is_dir() && dir.join("objects").is_dir()
}

/// The pipeline's id in the run registry, as `ugc_engine::spec::load_pipeline` makes
/// `Pipeline::path`.
fn pipeline_id(p: &Path) -> Result<PathBuf, CliError> {
    ugc_engine::spec::absolute(p)
        .map_err(|e| CliError::usage(format!("pipeline {}: {e}", p.display())))
}

pub fn open_cache(dir: &Path) -> Result<Cache, CliError> {
    Cache::open(dir).map_err(|e| CliError::failed(format!("cache {}: {e}", dir.display())))
}

/// For the verbs that only read or tidy a cache: a `--cache-dir` that does not exist is a
/// typo or the wrong directory, not an empty cache to create.
fn open_existing_cache(dir: &Path) -> Result<Cache, CliError> {
    if !dir.is_dir() {
        return Err(CliError::usage(format!(
            "no cache at {}: nothing has run with this --cache-dir (or UGC_PIPE_CACHE)",
            dir.display()
        )));
    }
    open_cache(dir)
}

pub fn open_registry(cache: &Cache) -> Result<Registry, CliError> {
    Registry::open(&cache.root().join("registry.sqlite"))
        .map_err(|e| CliError::failed(format!("run registry: {e}")))
}

pub(super) fn fmt_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    // Local-time-free, sortable UTC stamp.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02}Z")
}

fn mib(b: Option<u64>) -> String {
    b.map(|b| format!("{:.0} MiB", b as f64 / 1048576.0))
        .unwrap_or_else(|| "-".into())
}

pub fn runs(c: &CacheArgs, limit: usize, run: Option<i64>, json: bool) -> CliResult {
    let cache_dir = &cache_dir_for(c)?;
    let cache = open_existing_cache(cache_dir)?;
    let registry = open_registry(&cache)?;
    if let Some(run_id) = run {
        // Rows Slurm jobs spooled for a head that did not see them end (it was killed),
        // then rows of committed stages whose process died before writing its own.
        if let Err(e) = ingest_all_spools(cache.root(), &registry) {
            tracing::warn!("run registry: rows spooled by Slurm jobs not ingested: {e}");
        }
        if let Err(e) = register_run_records(&cache, &registry, run_id) {
            tracing::warn!("run registry: rows of committed stages not recovered: {e}");
        }
        let rows = registry.executions(run_id).map_err(CliError::failed)?;
        if rows.is_empty() && !registry.has_run(run_id).map_err(CliError::failed)? {
            return Err(CliError::usage(format!(
                "no run {run_id} in {} (`ugc-pipe runs` lists them)",
                cache_dir.display()
            )));
        }
        let jobs = registry.slurm_jobs(run_id).map_err(CliError::failed)?;
        let job_of = |e: &ugc_engine::registry::ExecutionRow| {
            e.slurm_job
                .and_then(|j| jobs.iter().find(|s| s.job == j && s.key == e.key))
        };
        if json {
            // An execution that ran as a Slurm job carries the job's row as `slurm`.
            let mut out = Vec::new();
            for e in &rows {
                let mut v = serde_json::to_value(e).map_err(CliError::failed)?;
                if let Some(j) = job_of(e) {
                    v["slurm"] = slurm_json(j);
                }
                out.push(v);
            }
            println!("{}", serde_json::to_string(&out).map_err(CliError::failed)?);
            return Ok(0);
        }
        println!(
            "{:<9} {:<36} {:>9} {:>10} {:>10} {:<10} host",
            "status", "node", "secs", "peak rss", "peak gpu", "device"
        );
        for e in &rows {
            println!(
                "{:<9} {:<36} {:>9.2} {:>10} {:>10} {:<10} {}{}{}",
                e.status,
                e.node,
                e.duration_ms as f64 / 1000.0,
                mib(e.peak_rss_bytes),
                mib(e.peak_gpu_bytes),
                e.device,
                e.host,
                job_of(e)
                    .map(|j| format!("  {}", describe_slurm_job(j)))
                    .unwrap_or_default(),
                e.error
                    .as_ref()
                    .map(|x| format!("  error: {x}"))
                    .unwrap_or_default()
            );
        }
        if !jobs.is_empty() {
            println!("slurm jobs:");
            for j in &jobs {
                println!(
                    "  {:<36} attempt {} {}{}",
                    j.node,
                    j.attempt,
                    describe_slurm_job(j),
                    j.reason
                        .as_ref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                );
            }
        }
        return Ok(0);
    }
    // Given a pipeline, its runs only (the registry names a run's pipeline by its id).
    let rows = match &c.pipeline {
        Some(p) => {
            let id = pipeline_id(p)?.display().to_string();
            let all = registry.runs(usize::MAX).map_err(CliError::failed)?;
            all.into_iter()
                .filter(|r| r.pipeline == id)
                .take(limit)
                .collect()
        }
        None => registry.runs(limit).map_err(CliError::failed)?,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&rows).map_err(CliError::failed)?
        );
        return Ok(0);
    }
    println!(
        "{:>5} {:<21} {:<12} {:>9} pipeline",
        "run", "started", "status", "secs"
    );
    for r in rows {
        let secs = r
            .ended_unix_ms
            .map(|e| format!("{:.2}", e.saturating_sub(r.started_unix_ms) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:>5} {:<21} {:<12} {:>9} {}{}",
            r.id,
            fmt_ms(r.started_unix_ms),
            r.status,
            secs,
            r.pipeline,
            super::exp::settings_text(&r.settings)
        );
    }
    Ok(0)
}

/// A Slurm job for people: `job 12 COMPLETED on n1, queued 0.9s, ran 3.2s`.
pub fn describe_slurm_job(j: &SlurmJobRow) -> String {
    let secs = |ms: Option<u64>| ms.map_or("?".into(), |m| format!("{:.1}s", m as f64 / 1000.0));
    format!(
        "job {} {} on {}, queued {}, ran {}",
        j.job,
        j.state,
        j.nodes.as_deref().unwrap_or("?"),
        secs(j.queue_wait_ms),
        secs(j.run_ms)
    )
}

/// A Slurm job as `runs --json` and `status --json` give it (times in seconds).
pub fn slurm_json(j: &SlurmJobRow) -> serde_json::Value {
    let secs = |ms: Option<u64>| ms.map(|m| m as f64 / 1000.0);
    serde_json::json!({
        "job": j.job,
        "attempt": j.attempt,
        "state": j.state,
        "nodes": j.nodes,
        "reason": j.reason,
        "run_id": j.run_id,
        "queue_wait_s": secs(j.queue_wait_ms),
        "run_s": secs(j.run_ms),
    })
}

/// The latest Slurm job of each node of a pipeline, for `status`: `None` for nodes that
/// never ran as one.
pub fn last_slurm_job(
    registry: &Registry,
    pipeline: &str,
    node: &str,
) -> Result<Option<SlurmJobRow>, CliError> {
    registry
        .last_slurm_job(pipeline, node)
        .map_err(CliError::failed)
}

pub fn gc(c: &CacheArgs, json: bool) -> CliResult {
    let cache = open_existing_cache(&cache_dir_for(c)?)?;
    let report = cache.gc(None).map_err(CliError::failed)?;
    print_json_or(json, &report, || {
        println!(
            "gc: removed {} objects ({:.1} MiB), {} views, {} records, {} temporary dirs, {} scratch dirs; {} locked keys left alone",
            report.removed_objects,
            report.freed_bytes as f64 / 1048576.0,
            report.removed_views.len(),
            report.removed_records.len(),
            report.removed_tmp.len(),
            report.removed_scratch.len(),
            report.skipped_locked.len()
        );
    })?;
    Ok(0)
}

pub fn unlock(c: &CacheArgs) -> CliResult {
    let cache = open_existing_cache(&cache_dir_for(c)?)?;
    // Locks of Slurm jobs are judged by Slurm (`squeue` on PATH), not by a pid.
    let slurm = SlurmCli::new(Commands::default());
    let probe: &dyn JobProbe = &slurm;
    let removed = remove_stale(cache.root(), Some(probe)).map_err(CliError::failed)?;
    for l in &removed {
        println!(
            "removed stale lock {} ({}; {})",
            l.key,
            describe_owner(l),
            l.judged
        );
    }
    let held = list_locks(cache.root(), Some(probe)).map_err(CliError::failed)?;
    for l in held.iter().filter(|l| l.alive) {
        println!("held: {} ({}; {})", l.key, describe_owner(l), l.judged);
    }
    if removed.is_empty() {
        println!("no stale locks");
    }
    Ok(0)
}

fn describe_owner(l: &ugc_engine::lock::LockInfo) -> String {
    match (l.pid(), l.host(), l.slurm_job()) {
        (Some(pid), Some(host), Some(job)) => format!("Slurm job {job}, pid {pid} on {host}"),
        (Some(pid), Some(host), None) => format!("pid {pid} on {host}"),
        _ => "owner unknown".into(),
    }
}

pub fn verify(c: &CacheArgs, json: bool) -> CliResult {
    let cache = open_existing_cache(&cache_dir_for(c)?)?;
    let report = cache.verify().map_err(CliError::failed)?;
    let damaged = !(report.corrupt.is_empty()
        && report.missing.is_empty()
        && report.removed_records.is_empty()
        && report.derived_records.is_empty()
        && report.bad_records.is_empty());
    print_json_or(json, &report, || {
        println!(
            "verify: {} objects ({:.1} MiB) checked",
            report.objects_checked,
            report.bytes_checked as f64 / 1048576.0
        );
        for d in &report.corrupt {
            println!("  corrupt object {d} (moved to quarantine/)");
        }
        for d in &report.missing {
            println!("  missing object {d}");
        }
        for k in &report.removed_records {
            println!("  record {k} removed: its stage re-runs on the next `run`");
        }
        for k in &report.derived_records {
            println!("  record {k} removed as derived from damage: its stage re-runs too");
        }
        if !(report.corrupt.is_empty() && report.missing.is_empty()) {
            println!(
                "  {} record(s) dropped as derived; rule: {DERIVED_RULE}",
                report.derived_records.len()
            );
        }
        for p in &report.bad_records {
            println!("  unreadable record {} removed", p.display());
        }
        if !damaged {
            println!("  all objects intact");
        }
    })?;
    Ok(if damaged { EXIT_FAILED } else { 0 })
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_stamps() {
        assert_eq!(super::fmt_ms(0), "1970-01-01 00:00:00Z");
        assert_eq!(super::fmt_ms(1_700_000_000_000), "2023-11-14 22:13:20Z");
    }
}
