//! `ugc-pipe logs P STAGE [-f] [--csv]`: a stage's log by its name.
//!
//! The per-stage log is `cache/logs/<run>/<node>.log` of the latest run of the pipeline
//! that started the stage (a run that found it cached wrote none); `--csv` is the
//! training loop's `log.csv`, live in `cache/scratch/<key>/run/` while the stage runs and
//! in its committed output after. The key comes from that run's job file, so nothing is
//! planned and libtorch is not needed.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ugc_engine::graph::Dag;
use ugc_engine::registry::Registry;
use ugc_engine::spec::{LoadOptions, load_pipeline};

use super::names::one_node;
use super::{CliError, CliResult, PipelineArgs};

/// How often `-f` looks for new bytes and for the stage's end.
const POLL: Duration = Duration::from_millis(250);

/// Prints (or with `follow`, follows until the stage ends) the log of `stage`.
pub fn logs(p: &PipelineArgs, stage: &str, follow: bool, csv: bool) -> CliResult {
    let kinds = crate::stages::schema_registry();
    let opts = LoadOptions {
        overrides: p.set.clone(),
        ..LoadOptions::default()
    };
    let pipeline = load_pipeline(&p.pipeline, &kinds, &opts).map_err(CliError::usage)?;
    let dag = Dag::build(&pipeline, &kinds).map_err(CliError::usage)?;
    let node = one_node(&dag, stage, &pipeline.path)?;
    let cache_dir = p
        .cache_dir
        .clone()
        .unwrap_or_else(|| super::pipeline::default_cache_dir(&pipeline.path));
    let db = cache_dir.join("registry.sqlite");
    let never = || {
        CliError::failed(format!(
            "`{node}` has no log in {}: no run of {} started it yet",
            cache_dir.display(),
            pipeline.path.display()
        ))
    };
    if !db.exists() {
        return Err(never());
    }
    let registry =
        Registry::open(&db).map_err(|e| CliError::failed(format!("run registry: {e}")))?;
    let id = pipeline.path.display().to_string();
    let runs = registry
        .runs(usize::MAX)
        .map_err(|e| CliError::failed(format!("run registry: {e}")))?;
    let safe = ugc_name(&node);
    let Some((run, log)) = runs
        .iter()
        .filter(|r| r.pipeline == id)
        .map(|r| {
            (
                r.id,
                cache_dir
                    .join("logs")
                    .join(r.id.to_string())
                    .join(format!("{safe}.log")),
            )
        })
        .find(|(_, log)| log.exists())
    else {
        return Err(never());
    };
    let path = if csv {
        csv_path(&cache_dir, run, &node)?
    } else {
        log
    };
    let tb = cache_dir.join("tensorboard").join(&safe);
    if tb.is_dir() {
        eprintln!("tensorboard --logdir {}", tb.display());
    }
    let done = || -> bool {
        let ended = registry
            .executions(run)
            .map(|rows| rows.iter().any(|e| e.node == node))
            .unwrap_or(true);
        let run_over = registry
            .runs(usize::MAX)
            .map(|rs| rs.iter().any(|r| r.id == run && r.status != "running"))
            .unwrap_or(true);
        ended || run_over
    };
    print_file(&path, follow, &done)?;
    Ok(0)
}

/// A node id as the head names its log file (the rule of `cache/logs/` and
/// `cache/tensorboard/`).
fn ugc_name(node: &str) -> String {
    node.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.=,".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `log.csv` of `node` in run `run`: its key from the run's job file, then the live copy
/// in scratch, else the committed one.
fn csv_path(cache: &Path, run: i64, node: &str) -> Result<PathBuf, CliError> {
    let jobs = cache.join("jobs").join(run.to_string());
    let key = std::fs::read_dir(&jobs)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .find(|j| j["node"] == node)
        .and_then(|j| j["key"].as_str().map(str::to_string))
        .ok_or_else(|| {
            CliError::failed(format!(
                "run {run} has no job file for `{node}` in {}",
                jobs.display()
            ))
        })?;
    let live = cache.join("scratch").join(&key).join("run/log.csv");
    let committed = cache.join("views").join(&key).join("log.csv");
    if live.exists() {
        Ok(live)
    } else if committed.exists() {
        Ok(committed)
    } else {
        Err(CliError::failed(format!(
            "`{node}` has no log.csv (not in {} nor {}): it is not a training stage, or it \
             has not logged a step yet",
            live.display(),
            committed.display()
        )))
    }
}

/// Copies `path` to stdout; with `follow`, keeps copying what is appended until `done`
/// says the stage ended (then once more, for its last lines). A file replaced by a shorter
/// one (a resumed `log.csv` is rewritten) is read again from its start.
fn print_file(path: &Path, follow: bool, done: &dyn Fn() -> bool) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::failed(format!("{}: {e}", path.display()));
    let mut out = std::io::stdout().lock();
    let mut offset = 0u64;
    // Polls since the stage was seen to end: the process records its execution a moment
    // before it logs its outcome, so one more poll reads its last lines.
    let mut after_end = 0;
    loop {
        if follow && (after_end > 0 || done()) {
            after_end += 1;
        }
        let finished = after_end > 1;
        match std::fs::File::open(path) {
            Ok(mut f) => {
                let len = f.metadata().map_err(io)?.len();
                if len < offset {
                    offset = 0;
                }
                f.seek(SeekFrom::Start(offset)).map_err(io)?;
                let mut buf = Vec::new();
                f.read_to_end(&mut buf).map_err(io)?;
                offset += buf.len() as u64;
                out.write_all(&buf).map_err(io)?;
                out.flush().map_err(io)?;
            }
            // Scratch is cleared when the stage commits.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && offset > 0 => return Ok(()),
            Err(e) => return Err(io(e)),
        }
        if !follow || finished {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_become_file_names() {
        assert_eq!(ugc_name("distill[r=0.5]"), "distill_r=0.5_");
    }
}
