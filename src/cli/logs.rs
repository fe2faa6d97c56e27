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

/// The single node `name` names: a node id, or a stage with one node. Unknown names get
/// the closest names of the pipeline; a stage of several nodes lists them.
fn one_node(dag: &Dag, name: &str, pipeline: &Path) -> Result<String, CliError> {
    let found = dag.find(name);
    match found.as_slice() {
        [one] => Ok(dag.node(*one).id.clone()),
        [] => {
            let mut names: Vec<String> = dag
                .nodes()
                .flat_map(|(_, n)| [n.id.clone(), n.stage.clone()])
                .collect();
            names.sort();
            names.dedup();
            let close = did_you_mean(name, &names);
            let hint = if close.is_empty() {
                format!("its stages and nodes: {}", names.join(", "))
            } else {
                format!("did you mean {}?", close.join(" or "))
            };
            Err(CliError::usage(format!(
                "no stage or node `{name}` in {}; {hint}",
                pipeline.display()
            )))
        }
        many => {
            let ids: Vec<&str> = many.iter().map(|i| dag.node(*i).id.as_str()).collect();
            Err(CliError::usage(format!(
                "stage `{name}` has {} nodes; name one: {}",
                ids.len(),
                ids.join(", ")
            )))
        }
    }
}

/// The names within a small edit distance of `name` (a third of its length, at least 2),
/// closest first, in backticks.
fn did_you_mean(name: &str, names: &[String]) -> Vec<String> {
    let limit = (name.chars().count() / 3).max(2);
    let mut close: Vec<(usize, &String)> = names
        .iter()
        .map(|n| (edit_distance(name, n), n))
        .filter(|(d, _)| *d <= limit)
        .collect();
    close.sort();
    close.into_iter().map(|(_, n)| format!("`{n}`")).collect()
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if ca == *cb {
                diag
            } else {
                1 + diag.min(up).min(row[j])
            };
            diag = up;
        }
    }
    row[b.len()]
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
    fn close_names_are_suggested_closest_first() {
        let names: Vec<String> = ["supernet", "search", "distill", "split"]
            .map(String::from)
            .to_vec();
        assert_eq!(did_you_mean("supernt", &names), ["`supernet`"]);
        assert_eq!(did_you_mean("splt", &names), ["`split`"]);
        assert!(did_you_mean("zzzzzz", &names).is_empty());
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(ugc_name("distill[r=0.5]"), "distill_r=0.5_");
    }
}
