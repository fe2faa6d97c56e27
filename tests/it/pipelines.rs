//! Pipelines of the real stage kinds through the CLI: every shipped pipeline loads and
//! plans (`run --dry-run`), with or without its data; and a run killed with `kill -9` at
//! random points, head or stage process, resumes to the bytes of an uninterrupted run (the
//! crash loop; `scripts/crash-loop.sh N` runs it at length).

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

#[test]
fn every_shipped_pipeline_plans() {
    let p = Project::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let (mut seen, mut paper) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let o = p.run(&["run", path.to_str().unwrap(), "--dry-run", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o))
            .unwrap_or_else(|e| panic!("{}: {e}: {}", path.display(), stderr(&o)));
        assert!(
            !v["plan"].as_array().unwrap().is_empty(),
            "{}",
            path.display()
        );
        // The paper-scale pipelines name datasets and weights files that are not in the
        // repository: the dry run plans them, says they cannot run and exits 2, listing
        // every missing file with how to get it.
        if v["runnable"] == false {
            assert_eq!(o.status.code(), Some(2), "{}", path.display());
            let missing = v["missing_inputs"].as_array().unwrap();
            assert!(!missing.is_empty(), "{}", path.display());
            for m in missing {
                assert!(
                    m.as_str().unwrap().contains("how to get it:"),
                    "{}: {m}",
                    path.display()
                );
            }
            paper += 1;
        } else {
            assert!(o.status.success(), "{}: {}", path.display(), stderr(&o));
        }
        seen += 1;
    }
    assert!(seen >= 7, "only {seen} pipelines found");
    assert_eq!(paper, 4, "the four paper pipelines lack their data here");
}

/// The crash loop's pipeline: every stage kind, training stages checkpointing every 4 steps.
const CRASH_PIPELINE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/crash-loop.yaml"
);

/// Kills per trial at most (each resume may be killed again); the count is drawn in
/// `1..=MAX_KILLS`, and the trial's last run goes uninterrupted.
const MAX_KILLS: u64 = 4;

/// How long a process of a run may outlive its head: the guardian's SIGKILL of the command
/// group and the parent-death signal act at once; 5 s leaves room for a loaded machine.
const SURVIVOR_GRACE: Duration = Duration::from_secs(5);

/// A positive whole number from the environment variable `name`, or `default` when unset.
///
/// # Panics
/// If the variable is set to anything else, naming it and its value.
fn env_count(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => v
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("{name} must be a positive whole number, got '{v}'")),
    }
}

/// Uniform in `[lo, hi)`.
fn uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// What a trial's kills did, summed over the trials.
#[derive(Default, Debug)]
struct Tally {
    trials: u64,
    head_kills: u64,
    worker_kills: u64,
    /// Runs started on a cache left by a killed run.
    resumes: u64,
    /// Stages that continued from a checkpoint (`resuming` in their logs).
    checkpoint_resumes: u64,
    /// Runs that ended before their kill time came.
    ended_before_kill: u64,
}

/// Whom an attempt kills, and when.
#[derive(Clone, Copy, Debug)]
enum Kill {
    Head(Duration),
    /// A random one of the head's live `ugc-pipe-worker` children (the first to appear
    /// after the time when none is running then).
    Worker(Duration),
}

/// How an attempt ended.
#[derive(Debug, PartialEq)]
enum Ended {
    /// The run finished (exit 0) with nothing killed.
    Completed,
    HeadKilled,
    /// A stage process was killed; `completed` when the head still exited 0 (the stage
    /// had committed before it died).
    WorkerKilled {
        completed: bool,
    },
}

/// The environment variable that marks every process of a trial's runs: the head gets it
/// (the project's path as value) and every process below inherits it, which is how
/// survivors are found.
const MARK: &str = "UGC_CRASH_TRIAL";

fn marker(p: &Project) -> String {
    format!("{MARK}={}", p.dir.path().display())
}

/// Starts `ugc-pipe run` of the crash pipeline on `p`'s cache, kills as `kill` says, waits
/// for the head to exit, then checks that no process of the run is left. The head's output
/// goes to `attempt-<n>.log` in the project.
fn attempt(
    p: &Project,
    n: u64,
    kill: Option<Kill>,
    rng: &mut ChaCha8Rng,
    limit: Duration,
) -> Result<Ended, String> {
    let log = p.path(&format!("attempt-{n}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let mut head = p
        .cmd(&["run", CRASH_PIPELINE, "-j", "2"])
        .env(MARK, p.dir.path())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn ugc-pipe");
    let pid = head.id() as i32;
    let start = Instant::now();
    let mut killed = None;
    let status = loop {
        if let Some(status) = head.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            head.kill().unwrap();
            head.wait().unwrap();
            return Err(format!(
                "run still going after {limit:?}; log: {}",
                log.display()
            ));
        }
        match kill {
            Some(Kill::Head(at)) if killed.is_none() && start.elapsed() >= at => {
                head.kill().unwrap(); // SIGKILL
                killed = Some(Ended::HeadKilled);
            }
            Some(Kill::Worker(at)) if killed.is_none() && start.elapsed() >= at => {
                let workers = children_named(pid, "ugc-pipe-worker");
                if !workers.is_empty() {
                    let w = workers[(rng.next_u64() % workers.len() as u64) as usize];
                    // SAFETY: kill(2) on a pid. `w` was the head's running child a moment
                    // ago; even if it just ended, its pid is not reused within microseconds.
                    unsafe { libc::kill(w, libc::SIGKILL) };
                    killed = Some(Ended::WorkerKilled { completed: false });
                }
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let ended = match (killed, status.code()) {
        (None, Some(0)) => Ended::Completed,
        // The head was exiting by itself when the kill came: it found nothing to kill.
        (Some(Ended::HeadKilled), Some(0)) => Ended::Completed,
        (Some(Ended::HeadKilled), None) if status.signal() == Some(libc::SIGKILL) => {
            Ended::HeadKilled
        }
        // The killed stage process had committed: its node counts as executed.
        (Some(Ended::WorkerKilled { .. }), Some(0)) => Ended::WorkerKilled { completed: true },
        // Its stage failed: the head exits 1 once the running ones end.
        (Some(Ended::WorkerKilled { .. }), Some(1)) => Ended::WorkerKilled { completed: false },
        _ => {
            return Err(format!(
                "run {n} ({kill:?}) ended with {status}:\n{}",
                text()
            ));
        }
    };
    let deadline = Instant::now() + SURVIVOR_GRACE;
    loop {
        let left = running_with_env(&marker(p));
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{SURVIVOR_GRACE:?} after the head of run {n} ({kill:?}) exited, still running: {left:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(ended)
}

/// Stages that continued from a checkpoint in runs `2..=runs` of `p`: the training
/// stages say `<node>: resuming ...` in the head's output (`attempt-<n>.log`).
fn checkpoint_resumes(p: &Project, runs: u64) -> u64 {
    (2..=runs)
        .map(|n| {
            std::fs::read_to_string(p.path(&format!("attempt-{n}.log")))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(": resuming "))
                .count() as u64
        })
        .sum()
}

/// The registry after a trial's runs: `runs` gives every run the end it had (a killed
/// head's run `dead`, never `running`), and `show` lists every stage with the metrics of
/// the uninterrupted run, including stages whose stage process was killed after its commit
/// (rows recovered from the record).
fn check_registry(p: &Project, reference: &Path, ends: &[Ended]) -> Result<(), String> {
    let o = p.run(&["runs", "--json"]);
    let runs: serde_json::Value = serde_json::from_str(&stdout(&o))
        .map_err(|e| format!("runs --json: {e}: {}{}", stdout(&o), stderr(&o)))?;
    let runs = runs.as_array().cloned().unwrap_or_default();
    if runs.len() != ends.len() {
        return Err(format!(
            "runs lists {} runs, {} were started: {runs:?}",
            runs.len(),
            ends.len()
        ));
    }
    for (i, ended) in ends.iter().enumerate() {
        let id = i as u64 + 1;
        let run = runs.iter().find(|r| r["id"] == id);
        let status = run.and_then(|r| r["status"].as_str()).unwrap_or("absent");
        let fits = match ended {
            Ended::Completed | Ended::WorkerKilled { completed: true } => status == "ok",
            Ended::WorkerKilled { completed: false } => status == "failed",
            // A head killed just after it recorded its end is not dead; never "running".
            Ended::HeadKilled => ["dead", "ok", "failed"].contains(&status),
        };
        if !fits {
            return Err(format!(
                "run {id} ended {ended:?}; runs says {status}: {runs:?}"
            ));
        }
    }
    let (want, got) = (show_metrics(p, reference)?, show_metrics(p, &p.cache())?);
    if want != got {
        return Err(format!(
            "show differs from the uninterrupted run's:\n  want {want:?}\n  got  {got:?}"
        ));
    }
    Ok(())
}

/// `show --json` of the crash pipeline on `cache`: each stage's metrics, by stage name.
fn show_metrics(
    p: &Project,
    cache: &Path,
) -> Result<std::collections::BTreeMap<String, serde_json::Value>, String> {
    let o = p.run(&[
        "show",
        CRASH_PIPELINE,
        "--json",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o))
        .map_err(|e| format!("show --json: {e}: {}{}", stdout(&o), stderr(&o)))?;
    Ok(v["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["node"].as_str().unwrap_or("?").to_string(),
                r["metrics"].clone(),
            )
        })
        .collect())
}

/// The keys of the committed records of `cache`.
fn record_keys(cache: &Path) -> Vec<String> {
    let mut keys: Vec<String> = std::fs::read_dir(cache.join("records"))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".json").map(str::to_string)
        })
        .collect();
    keys.sort();
    keys
}

/// One trial: a fresh cache, runs killed at random until one completes, then `verify`
/// must find the cache intact and every committed output must equal the reference's.
/// A failed trial's project is kept for inspection, its path in the error.
fn crash_trial(
    reference: &Path,
    ref_time: Duration,
    rng: &mut ChaCha8Rng,
    tally: &mut Tally,
) -> Result<(), String> {
    let p = Project::new();
    trial_runs(&p, reference, ref_time, rng, tally)
        .map_err(|e| format!("{e}\n(kept: {})", p.dir.keep().display()))
}

fn trial_runs(
    p: &Project,
    reference: &Path,
    ref_time: Duration,
    rng: &mut ChaCha8Rng,
    tally: &mut Tally,
) -> Result<(), String> {
    let limit = ref_time * 20 + Duration::from_secs(120);
    let kills = 1 + rng.next_u64() % MAX_KILLS;
    let mut n = 0;
    // How each run ended, by run id (a fresh cache numbers its runs from 1).
    let mut ends = Vec::new();
    // Run time already done by killed runs: a resume has about the rest of the reference's
    // duration left, so its kill time is drawn over that (at least 1 s: a resume's own
    // start and cache hits), and a late draw tests the finish.
    let mut done = Duration::ZERO;
    loop {
        n += 1;
        let kill = (n <= kills).then(|| {
            let left = ref_time.saturating_sub(done).max(Duration::from_secs(1));
            let at = Duration::from_secs_f64(uniform(rng, 0.0, left.as_secs_f64()));
            if rng.next_u64().is_multiple_of(2) {
                Kill::Head(at)
            } else {
                Kill::Worker(at)
            }
        });
        if n > 1 {
            tally.resumes += 1;
        }
        let ended = attempt(p, n, kill, rng, limit)?;
        eprintln!("  run {n}: {kill:?} -> {ended:?}");
        if let Some(Kill::Head(at) | Kill::Worker(at)) = kill {
            done += at;
        }
        let last = matches!(
            ended,
            Ended::Completed | Ended::WorkerKilled { completed: true }
        );
        ends.push(ended);
        match ends.last().unwrap() {
            Ended::HeadKilled => tally.head_kills += 1,
            Ended::WorkerKilled { .. } => tally.worker_kills += 1,
            Ended::Completed if kill.is_some() => tally.ended_before_kill += 1,
            Ended::Completed => {}
        }
        if last {
            break;
        }
    }
    tally.checkpoint_resumes += checkpoint_resumes(p, n);

    let o = p.run(&["verify", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap_or_default();
    let clean = [
        "corrupt",
        "missing",
        "removed_records",
        "derived_records",
        "bad_records",
    ]
    .iter()
    .all(|k| v[k].as_array().is_some_and(Vec::is_empty));
    if !o.status.success() || !clean {
        return Err(format!(
            "verify after {n} runs: {}{}",
            stdout(&o),
            stderr(&o)
        ));
    }
    // Every key is committed, so no scratch may be left: the head clears the scratch of a
    // stage process killed between its commit and its own clearing (on the hit or the
    // stage's exit). Then `gc` must find nothing of the outputs to remove (compared below).
    let left: Vec<_> = std::fs::read_dir(p.cache().join("scratch"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    if !left.is_empty() {
        return Err(format!("scratch left after the run completed: {left:?}"));
    }
    let o = p.run(&["gc", "--json"]);
    if !o.status.success() {
        return Err(format!("gc: {}{}", stdout(&o), stderr(&o)));
    }
    let (want, got) = (record_keys(reference), record_keys(&p.cache()));
    if want != got {
        return Err(format!(
            "records differ from the uninterrupted run's: {want:?} vs {got:?}"
        ));
    }
    for key in &want {
        let (a, b) = (
            reference.join("views").join(key),
            p.cache().join("views").join(key),
        );
        let same = std::panic::catch_unwind(|| ugc_engine::testing::assert_same_tree(&a, &b));
        if same.is_err() {
            let record = std::fs::read(reference.join("records").join(format!("{key}.json")));
            let record: serde_json::Value =
                serde_json::from_slice(&record.unwrap_or_default()).unwrap_or_default();
            return Err(format!(
                "output of stage {} (key {key}) differs from the uninterrupted run's (above)",
                record["meta"]["node"]
            ));
        }
    }
    check_registry(p, reference, &ends)?;
    tally.trials += 1;
    Ok(())
}

/// Issue 19's crash loop: the pipeline of every stage kind, run once uninterrupted (the
/// reference, which also times it), then per trial on a fresh cache: `kill -9` of the head
/// or of a random stage process at a random time within the reference's duration, again on
/// each resume up to a drawn count, then a run to the end; `verify` must find the cache
/// intact, the records must have the reference's keys and every output its bytes, no
/// scratch may be left, and no process of a run may outlive its head by more than
/// [`SURVIVOR_GRACE`]. Trials: `UGC_CRASH_TRIALS` (default 3), seed `UGC_CRASH_SEED`
/// (default 19: trial t's draws depend only on it and t; the kill points in the stages
/// depend on the machine's timing too).
#[test]
fn crash_loop_kill_9_of_head_or_stage_resumes_to_the_uninterrupted_bytes() {
    let trials = env_count("UGC_CRASH_TRIALS", 3);
    let seed = env_count("UGC_CRASH_SEED", 19);
    let reference = Project::new();
    let started = Instant::now();
    match attempt(
        &reference,
        1,
        None,
        &mut ChaCha8Rng::seed_from_u64(0),
        Duration::from_secs(600),
    ) {
        Ok(Ended::Completed) => {}
        other => panic!("uninterrupted run: {other:?}"),
    }
    let ref_time = started.elapsed();
    let mut tally = Tally::default();
    for t in 0..trials {
        let trial_seed = seed.wrapping_mul(1_000_003).wrapping_add(t);
        let mut rng = ChaCha8Rng::seed_from_u64(trial_seed);
        let before = Instant::now();
        if let Err(e) = crash_trial(&reference.cache(), ref_time, &mut rng, &mut tally) {
            panic!("crash trial {t} (seed {trial_seed}) failed: {e}\n{tally:?}");
        }
        eprintln!(
            "crash trial {t} (seed {trial_seed}) ok in {:.1?}",
            before.elapsed()
        );
    }
    eprintln!(
        "crash-loop summary: trials {} (seed {seed}), kills {} (head {}, worker {}), resumes {}, \
         checkpoint resumes {}, runs ended before their kill {}, uninterrupted run {:.1?}, all outputs identical",
        tally.trials,
        tally.head_kills + tally.worker_kills,
        tally.head_kills,
        tally.worker_kills,
        tally.resumes,
        tally.checkpoint_resumes,
        tally.ended_before_kill,
        ref_time
    );
    assert!(
        tally.head_kills + tally.worker_kills > 0,
        "no run was killed: the loop tested nothing ({tally:?})"
    );
}
