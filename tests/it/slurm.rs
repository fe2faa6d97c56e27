//! `ugc-pipe run --executor slurm` against the one-node test cluster (scripts/slurm-up.sh):
//! stages as Slurm jobs equal the local run, a fake GPU is seen, a failure skips its
//! dependents, Ctrl-C leaves nothing queued, a killed head's rerun re-attaches, and a job
//! cancelled behind the head's back is resubmitted. Skipped with a message only when sbatch
//! is absent and `UGC_REQUIRE_SLURM` is unset.

use std::process::Output;
use std::time::{Duration, Instant};

use super::common::{Project, stderr, summary};

fn slurm_available() -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("sbatch").is_file()))
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var_os("UGC_REQUIRE_SLURM").is_none(),
            "UGC_REQUIRE_SLURM is set but sbatch is not on PATH (scripts/slurm-up.sh installs it)"
        );
        eprintln!("skipped: no sbatch on PATH (scripts/slurm-up.sh brings up a test cluster)");
    }
    found
}

/// Fast polling and a short grace, so each test takes seconds.
const EXECUTOR: &str = "executor:
  poll_min: 0.2
  poll_max: 1
  lost_grace: 3
  heartbeat: 1
  grace: 5
";

fn run_slurm(p: &Project, extra: &[&str]) -> Output {
    let mut args = vec!["run", "p.yaml", "--executor", "slurm", "--json"];
    args.extend_from_slice(extra);
    p.run(&args)
}

/// The comments of this user's jobs still in the queue.
fn queued_comments() -> Vec<String> {
    let out = std::process::Command::new("squeue")
        .args(["-h", "--me", "-o", "%k"])
        .output()
        .expect("squeue");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn events(o: &Output, kind: &str) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == kind)
        .collect()
}

#[test]
fn a_two_stage_pipeline_runs_as_slurm_jobs_and_equals_the_local_run() {
    if !slurm_available() {
        return;
    }
    let pipeline = format!(
        "{EXECUTOR}stages:
  a:
    kind: command
    params: {{cmd: 'echo \"job=$SLURM_JOB_ID\" >&2; seq 1 5 > a.txt', outputs: [a.txt]}}
  b:
    kind: command
    deps: [a]
    params: {{cmd: 'sort -r $UGC_DEP_A/a.txt > b.txt', outputs: [b.txt]}}
"
    );
    let (sl, lo) = (Project::new(), Project::new());
    sl.write("p.yaml", &pipeline);
    lo.write("p.yaml", &pipeline);
    let o = run_slurm(&sl, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(summary(&o)["executed"], 2);
    let l = lo.run(&["run", "p.yaml", "--json"]);
    assert_eq!(l.status.code(), Some(0), "{}", stderr(&l));
    // The same keys (the executor is not in them) and the same bytes.
    let keys = |p: &Project| {
        let mut k: Vec<String> = std::fs::read_dir(p.cache().join("records"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(&sl), keys(&lo));
    let show = |p: &Project| {
        let o = p.run(&["show", "p.yaml", "--json"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        o.stdout
    };
    assert_eq!(show(&sl), show(&lo));
    // Each execution ran in a Slurm job, recorded in the registry.
    let runs = sl.run(&["runs", "--run", "1", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in rows {
        let job = r["slurm_job"].as_u64().unwrap_or_else(|| panic!("{r}"));
        // The head recorded the job: Slurm's final state, its node, queue wait, run time.
        let sj = &r["slurm"];
        assert_eq!(sj["job"], job, "{r}");
        assert_eq!(sj["state"], "COMPLETED", "{r}");
        assert!(!sj["nodes"].as_str().unwrap_or("").is_empty(), "{r}");
        assert!(
            sj["queue_wait_s"].as_f64().is_some() && sj["run_s"].as_f64().is_some(),
            "{r}"
        );
        // The worker's own row, spooled into the cache and ingested by the head (a row
        // rebuilt from the record would have no peak memory).
        assert!(r["peak_rss_bytes"].as_u64().is_some(), "{r}");
        let key = r["key"].as_str().unwrap();
        let spool = sl.cache().join(format!("attempts/{key}/{job}.rows"));
        assert!(spool.is_file(), "no spool {}", spool.display());
    }
    // `status` names each stage's last job.
    let st = sl.run(&["status", "p.yaml", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    for stage in st["stages"].as_array().unwrap() {
        assert_eq!(stage["slurm"]["state"], "COMPLETED", "{stage}");
    }
    // The job the stage saw is the one recorded, and its state changes were shown.
    let msgs: Vec<String> = events(&o, "message")
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(msgs.iter().any(|m| m.contains("RUNNING on")), "{msgs:?}");
    // The stage's own progress, streamed from its log: the command kind's first message.
    assert!(
        msgs.iter().any(|m| m.starts_with("$ echo \"job=")),
        "{msgs:?}"
    );
    let notes: Vec<String> = events(&o, "note")
        .iter()
        .map(|n| n["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        notes
            .iter()
            .filter(|n| n.contains(") COMPLETED on "))
            .count()
            == 2,
        "{notes:?}"
    );
    // A second run is all cached: nothing submitted.
    let again = run_slurm(&sl, &[]);
    assert_eq!(summary(&again)["cached"], 2, "{}", stderr(&again));
    assert!(events(&again, "message").is_empty());
}

#[test]
fn a_stage_sees_its_fake_gpu() {
    if !slurm_available() {
        return;
    }
    let p = Project::new();
    // `command` is not a GPU kind: the GPU comes from the executor's sbatch_args here
    // (a GPU kind's `--gres` from `devices` is rendered by script.rs, tested there).
    p.write(
        "p.yaml",
        &format!(
            "{EXECUTOR}  sbatch_args: [--gres=gpu:1]
stages:
  g:
    kind: command
    params: {{cmd: 'echo \"$CUDA_VISIBLE_DEVICES\" > cvd.txt', outputs: [cvd.txt]}}
"
        ),
    );
    let o = run_slurm(&p, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // One device, numbered from 0 by the cgroup or named by Slurm's gres (not empty).
    let found = walk_find(&p.cache(), "cvd.txt").expect("cvd.txt committed");
    let cvd = std::fs::read_to_string(found).unwrap();
    assert!(!cvd.trim().is_empty(), "no CUDA_VISIBLE_DEVICES in the job");
    assert_eq!(cvd.trim().split(',').count(), 1, "{cvd}");
}

fn walk_find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let path = e.path();
        if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
        if path.is_dir()
            && !path.is_symlink()
            && let Some(f) = walk_find(&path, name)
        {
            return Some(f);
        }
    }
    None
}

#[test]
fn a_failing_stage_skips_its_dependents_and_keep_going_finishes_the_rest() {
    if !slurm_available() {
        return;
    }
    let p = Project::new();
    p.write(
        "p.yaml",
        &format!(
            "{EXECUTOR}stages:
  bad: {{kind: command, params: {{cmd: 'echo boom >&2; exit 3'}}}}
  after: {{kind: command, deps: [bad], params: {{cmd: 'true'}}}}
  other: {{kind: command, params: {{cmd: 'echo ok > ok.txt'}}}}
"
        ),
    );
    let o = run_slurm(&p, &["--keep-going"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s = summary(&o);
    assert_eq!(
        (
            s["executed"].clone(),
            s["failed"].clone(),
            s["skipped"].clone()
        ),
        (1.into(), 1.into(), 1.into()),
        "{s}"
    );
    let err = s["errors"]["bad"].as_str().unwrap();
    // The stage's own error, from the attempt file, with the job and the host.
    assert!(
        err.contains("exit code 3") && err.contains("(job "),
        "{err}"
    );
    // The failure is in the registry with its job, as Slurm ended it.
    let runs = p.run(&["runs", "--run", &s["run_id"].to_string(), "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap();
    let bad = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == "bad")
        .unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(bad["status"], "failed", "{bad}");
    assert_eq!(bad["slurm"]["state"], "FAILED", "{bad}");
    let text = p.run(&["runs", "--run", &s["run_id"].to_string()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("FAILED on ") && text.contains("slurm jobs:"),
        "{text}"
    );
}

#[test]
fn sigint_cancels_every_job_of_the_run_and_exits_130() {
    if !slurm_available() {
        return;
    }
    let p = Project::new();
    p.write(
        "p.yaml",
        &format!(
            "{EXECUTOR}stages:
  long: {{kind: command, params: {{cmd: 'sleep 60'}}}}
  wait: {{kind: command, deps: [long], params: {{cmd: 'true'}}}}
  huge: {{kind: command, resources: {{cpus: 512}}, params: {{cmd: 'true'}}}}
"
        ),
    );
    let child = p.spawn(&[
        "run",
        "p.yaml",
        "--executor",
        "slurm",
        "--json",
        "--keep-going",
    ]);
    let pid = child.id() as i32;
    // `long` running; `huge` is refused by sbatch or pending, never running.
    let ran = wait_until(30, || attempts(&p) >= 1);
    assert!(ran, "no job started");
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    // SAFETY: signalling the child this test started.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Within the grace (5 s) plus a poll or two: the running job checkpointed and stopped.
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    let s = summary(&o);
    assert_eq!(s["status"], "interrupted", "{s}");
    // This run's jobs, by key (other tests' caches have a run 1 too): the job scripts it
    // wrote, `slurm/<run>/<key>.sbatch`.
    let keys: Vec<String> = std::fs::read_dir(p.cache().join(format!("slurm/{}", s["run_id"])))
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .path()
                .file_stem()?
                .to_str()
                .map(|k| format!("key={k}:"))
        })
        .collect();
    assert!(!keys.is_empty());
    let ours = || {
        queued_comments()
            .into_iter()
            .filter(|c| keys.iter().any(|k| c.contains(k)))
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(5, || ours().is_empty()),
        "jobs of the run left in the queue: {:?}",
        ours()
    );
}

/// Attempt files written so far (jobs that started).
fn attempts(p: &Project) -> usize {
    let Ok(d) = std::fs::read_dir(p.cache().join("attempts")) else {
        return 0;
    };
    d.flatten()
        .filter_map(|k| std::fs::read_dir(k.path()).ok())
        .flat_map(|d| d.flatten())
        .filter(|f| f.path().extension().is_some_and(|x| x == "json"))
        .count()
}

#[test]
fn a_killed_heads_rerun_reattaches_and_nothing_runs_twice() {
    if !slurm_available() {
        return;
    }
    let p = Project::new();
    let counter = p.path("count");
    p.write(
        "p.yaml",
        &format!(
            "{EXECUTOR}stages:
  a: {{kind: command, params: {{cmd: 'echo x >> {c}; sleep 4; echo done > a.txt', outputs: [a.txt]}}}}
  b: {{kind: command, deps: [a], params: {{cmd: 'echo y >> {c}; cat $UGC_DEP_A/a.txt > b.txt'}}}}
",
            c = counter.display()
        ),
    );
    // A job is declared lost after 4 silent beats + lost_grace: 7 s with the fast
    // EXECUTOR settings, close to stage a's 4 s under a loaded machine. This test is about
    // re-attaching, not loss, so it gives the heartbeat room (lost after 30 s).
    let slack = [
        "--executor-set",
        "heartbeat=5",
        "--executor-set",
        "lost_grace=10",
    ];
    let mut args = vec!["run", "p.yaml", "--executor", "slurm", "--json"];
    args.extend_from_slice(&slack);
    let mut child = p.spawn(&args);
    assert!(
        wait_until(30, || p.count("count") == 1),
        "stage a never started"
    );
    child.kill().unwrap(); // SIGKILL: no chance to cancel anything
    let _ = child.wait();
    let o = run_slurm(&p, &slack);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let runs = p.run(&["runs", "--run", "2", "--json"]);
    let why = format!(
        "second run:\n{}\n{}\nits executions: {}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o),
        String::from_utf8_lossy(&runs.stdout)
    );
    let notes: Vec<String> = events(&o, "note")
        .iter()
        .map(|n| n["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("re-attached to job")),
        "{notes:?}\n{why}"
    );
    // a ran once (in the first run's job), b once.
    assert_eq!(
        p.count("count"),
        2,
        "{}\n{why}",
        std::fs::read_to_string(&counter).unwrap()
    );
    assert_eq!(p.records(), 2);
}

#[test]
fn a_job_cancelled_behind_the_heads_back_is_resubmitted() {
    if !slurm_available() {
        return;
    }
    let p = Project::new();
    let counter = p.path("count");
    p.write(
        "p.yaml",
        &format!(
            "{EXECUTOR}stages:
  a: {{kind: command, params: {{cmd: 'echo x >> {c}; [ $(wc -l < {c}) -ge 2 ] || sleep 30; echo ok > a.txt', outputs: [a.txt]}}}}
",
            c = counter.display()
        ),
    );
    let child = p.spawn(&["run", "p.yaml", "--executor", "slurm", "--json"]);
    assert!(
        wait_until(30, || p.count("count") == 1),
        "stage a never started"
    );
    // Someone else's scancel of our job: not ours, so not a cancellation of the run.
    // Found by this run's key (its job script is `slurm/1/<key>.sbatch` in the cache), not
    // by the stage name: other tests running at once have stages named `a` too.
    let keys: Vec<String> = std::fs::read_dir(p.cache().join("slurm/1"))
        .unwrap()
        .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(str::to_string))
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = format!("key={}:", keys[0]);
    let jobs: Vec<String> = std::process::Command::new("squeue")
        .args(["-h", "--me", "-o", "%i|%k"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap()
        .lines()
        .filter(|l| l.contains(&key))
        .map(|l| l.split('|').next().unwrap().to_string())
        .collect();
    assert!(!jobs.is_empty());
    let st = std::process::Command::new("scancel")
        .args(&jobs)
        .status()
        .unwrap();
    assert!(st.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let texts: Vec<String> = events(&o, "message")
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("resubmitted as job")),
        "{texts:?}"
    );
    assert_eq!(p.count("count"), 2);
    assert_eq!(p.records(), 1);
}

#[test]
fn bad_executor_settings_exit_2_with_positions_before_anything_is_submitted() {
    let p = Project::new();
    p.write(
        "p.yaml",
        "executor:\n  max_jobz: 3\nstages:\n  a: {kind: command, params: {cmd: 'true'}}\n",
    );
    let o = p.run(&[
        "run",
        "p.yaml",
        "--executor",
        "slurm",
        "--executor-set",
        "poll_min=soon",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("p.yaml:2:3") && e.contains("max_jobz"), "{e}");
    assert!(e.contains("--executor-set poll_min=soon"), "{e}");
    assert!(!p.cache().join("slurm").exists(), "nothing was submitted");
    // Slurm's flags configure only the Slurm executor.
    let o = p.run(&["run", "p.yaml", "--executor-set", "max_jobs=2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// A data-parallel stage whose two ranks `srun` places on two nodes: the two-node cluster
/// of `scripts/slurm-two-nodes.sh` (two slurmd in network namespaces, 1 CPU each), named
/// by `UGC_SLURM_TWO_NODES` (its slurm.conf; scripts/test.sh sets it). The ranks find each
/// other across the nodes (the master is the first node's name; each node's own hostname
/// resolves to loopback, as on many real nodes), the stage commits once, and its model is
/// bit-identical to the same two ranks started on one machine by the local launcher: the
/// same reductions in the same order.
#[test]
fn a_data_parallel_stage_spans_two_nodes() {
    let Some(conf) = std::env::var_os("UGC_SLURM_TWO_NODES") else {
        eprintln!("skipped: UGC_SLURM_TWO_NODES is unset (scripts/slurm-two-nodes.sh up)");
        return;
    };
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("skipped: the local comparison needs 2 CPU cores for 2 ranks");
        return;
    }
    let pipeline = format!(
        "{EXECUTOR}{}",
        super::data_parallel::tiny_yaml("    resources: {devices: 2, dist_timeout_s: 60}\n", 2)
    );
    let (sl, lo) = (Project::new(), Project::new());
    sl.write("p.yaml", &pipeline);
    lo.write("p.yaml", &pipeline);
    let o = sl
        .cmd(&[
            "run",
            "p.yaml",
            "--executor",
            "slurm",
            "--device",
            "cpu",
            "--json",
        ])
        .env("SLURM_CONF", &conf)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(summary(&o)["executed"], 3, "{}", stderr(&o));
    let log = std::fs::read_to_string(sl.cache().join("logs/1/fit.log")).unwrap();
    for rank in ["rank 0 of 2", "rank 1 of 2"] {
        assert!(log.contains(rank), "{rank} missing: {log}");
    }
    let st = sl
        .cmd(&["status", "p.yaml", "--json"])
        .env("SLURM_CONF", &conf)
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let fit = st["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "fit" || s["node"] == "fit")
        .unwrap_or_else(|| panic!("{st}"));
    assert_eq!(fit["slurm"]["nodes"], "ugc-n[1-2]", "{fit}");

    let l = lo.run(&["run", "p.yaml", "--device", "cpu", "--json", "-j", "2"]);
    assert_eq!(l.status.code(), Some(0), "{}", stderr(&l));
    let model = |p: &Project| {
        let o = p.run(&["show", "p.yaml", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let out = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["node"] == "fit")
            .and_then(|r| r["output"].as_str())
            .unwrap_or_else(|| panic!("{v}"))
            .to_string();
        std::fs::read(std::path::Path::new(&out).join("model/model.safetensors")).unwrap()
    };
    assert!(
        model(&sl) == model(&lo),
        "the two-node model differs from the local one"
    );
}
