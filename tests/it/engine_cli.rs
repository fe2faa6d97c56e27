//! The engine through the built CLI: spec errors, caching, matrix dedup, crash recovery,
//! concurrency, corruption and interruption. All stages are `command` stages, so these
//! tests need no model code.

use crate::common::*;

/// Three stages (b and c after a) that record each execution in counter files outside the
/// cache; a's output is `a_param` (default `a`), b's reads `b_param`.
fn chain(p: &Project, b_param: &str) -> std::path::PathBuf {
    let counts = p.path("counts");
    std::fs::create_dir_all(&counts).unwrap();
    p.write(
        "pipe.yaml",
        &format!(
            r#"
params:
  counts: {counts}
  a_param: a
  b_param: {b_param}
stages:
  a:
    kind: command
    params:
      cmd: "echo run >> ${{counts}}/a; echo ${{a_param}} > a.txt"
      outputs: [a.txt]
  b:
    kind: command
    deps: [a]
    params:
      cmd: "echo run >> ${{counts}}/b; cat $UGC_DEP_A/a.txt > b.txt; echo ${{b_param}} >> b.txt"
  c:
    kind: command
    deps: [a]
    params:
      cmd: "echo run >> ${{counts}}/c; echo c > c.txt"
"#,
            counts = counts.display()
        ),
    )
}

#[test]
fn rerun_executes_nothing_and_param_change_reruns_only_dependents() {
    let p = Project::new();
    chain(&p, "one");
    let o = p.run(&["run", "pipe.yaml", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&o)["executed"], 3);

    let o = p.run(&["run", "pipe.yaml", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&o)["executed"], 0);
    assert_eq!(summary(&o)["cached"], 3);
    assert_eq!(
        (
            p.count("counts/a"),
            p.count("counts/b"),
            p.count("counts/c")
        ),
        (1, 1, 1)
    );

    // Only b reads b_param.
    let o = p.run(&["run", "pipe.yaml", "--json", "--set", "b_param=two"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&o)["executed"], 1);
    assert_eq!(
        (
            p.count("counts/a"),
            p.count("counts/b"),
            p.count("counts/c")
        ),
        (1, 2, 1)
    );

    // explain names what changed against the last run (b_param is substituted into cmd).
    let o = p.run(&["explain", "pipe.yaml", "b", "--set", "b_param=three"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("changed") && text.contains("cmd"), "{text}");
    assert!(text.contains("three"), "{text}");
    let o = p.run(&["explain", "pipe.yaml", "a", "--set", "b_param=three"]);
    assert!(stdout(&o).contains("cached"), "{}", stdout(&o));
}

#[test]
fn dry_run_and_status_report_without_running() {
    let p = Project::new();
    chain(&p, "one");
    let o = p.run(&["run", "pipe.yaml", "--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("3 to run"), "{}", stdout(&o));
    assert_eq!(p.count("counts/a"), 0);

    assert!(p.run(&["run", "pipe.yaml"]).status.success());
    let o = p.run(&["status", "pipe.yaml", "--json", "--set", "b_param=x"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let st: Vec<_> = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["node"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(st.contains(&("a".into(), "cached".into())), "{st:?}");
    assert!(st.contains(&("b".into(), "stale".into())), "{st:?}");
}

#[test]
fn status_names_own_changes_of_a_stage_behind_a_rerunning_upstream() {
    let p = Project::new();
    chain(&p, "one");
    assert!(p.run(&["run", "pipe.yaml"]).status.success());
    // a re-runs; b's own command changed as well, c's did not.
    let o = p.run(&[
        "status",
        "pipe.yaml",
        "--json",
        "--set",
        "a_param=A",
        "--set",
        "b_param=two",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let reason = |node: &str| {
        v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["node"] == node)
            .unwrap_or_else(|| panic!("no {node} in {v}"))["cause"]
            .clone()
    };
    assert_eq!(reason("a")["reason"], "changed", "{v}");
    let b = reason("b");
    assert_eq!(b["reason"], "upstream", "{v}");
    assert_eq!(b["upstream"], serde_json::json!(["a"]), "{v}");
    let changes = b["changes"].to_string();
    assert!(
        changes.contains("cmd") && changes.contains("two"),
        "{changes}"
    );
    assert_eq!(reason("c")["changes"], serde_json::json!([]), "{v}");

    let o = p.run(&[
        "status",
        "pipe.yaml",
        "--set",
        "a_param=A",
        "--set",
        "b_param=two",
    ]);
    let text = stdout(&o);
    let b_line = text.lines().find(|l| l.contains(" b ")).unwrap_or("");
    assert!(
        b_line.contains("upstream runs first: a; own changes:"),
        "{text}"
    );
}

#[test]
fn spec_errors_point_at_file_line_column() {
    let p = Project::new();
    p.write(
        "bad.yaml",
        "stages:\n  a:\n    kind: command\n    params:\n      cmd: \"true\"\n      bogus: 1\n",
    );
    let o = p.run(&["run", "bad.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("bad.yaml:6:"), "{e}");
    assert!(e.contains("bogus"), "{e}");
}

#[test]
fn cycle_error_names_every_stage() {
    let p = Project::new();
    p.write(
        "cyc.yaml",
        r#"
stages:
  a: {kind: command, deps: [c], params: {cmd: "true"}}
  b: {kind: command, deps: [a], params: {cmd: "true"}}
  c: {kind: command, deps: [b], params: {cmd: "true"}}
"#,
    );
    let o = p.run(&["run", "cyc.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    for s in ["a", "b", "c"] {
        assert!(
            e.contains(&format!("{s} ->")) || e.contains(&format!("-> {s}")),
            "{e}"
        );
    }
}

#[test]
fn matrix_shares_stages_that_do_not_read_the_swept_value() {
    let p = Project::new();
    let counts = p.path("counts");
    std::fs::create_dir_all(&counts).unwrap();
    p.write(
        "m.yaml",
        &format!(
            r#"
params: {{ratio: 0.1, adf: true}}
matrix:
  ratio: [0.1, 0.25, 0.5]
  adf: [true, false]
stages:
  data:   {{kind: command, params: {{cmd: "echo x >> {c}/data; echo d > d"}}}}
  split:  {{kind: command, deps: [data], params: {{cmd: "echo x >> {c}/split; echo ${{ratio}} > s"}}}}
  distill: {{kind: command, deps: [split], params: {{cmd: "echo x >> {c}/distill; echo ${{adf}} > t"}}}}
"#,
            c = counts.display()
        ),
    );
    let o = p.run(&["run", "m.yaml", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(p.count("counts/data"), 1);
    assert_eq!(p.count("counts/split"), 3);
    assert_eq!(p.count("counts/distill"), 6);
    assert_eq!(summary(&o)["executed"], 10);
}

#[test]
fn failing_stage_stops_dependents_and_keep_going_finishes_other_branches() {
    let p = Project::new();
    let counts = p.path("counts");
    std::fs::create_dir_all(&counts).unwrap();
    p.write(
        "f.yaml",
        &format!(
            r#"
stages:
  bad:   {{kind: command, params: {{cmd: "exit 3"}}}}
  after: {{kind: command, deps: [bad], params: {{cmd: "echo x >> {c}/after"}}}}
  slow:  {{kind: command, params: {{cmd: "sleep 0.5; echo x >> {c}/slow"}}}}
  other: {{kind: command, deps: [slow], params: {{cmd: "echo x >> {c}/other"}}}}
"#,
            c = counts.display()
        ),
    );
    let o = p.run(&["run", "f.yaml", "--json", "--keep-going", "-j", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s = summary(&o);
    assert_eq!(s["failed"], 1);
    assert_eq!(p.count("counts/after"), 0);
    assert_eq!(p.count("counts/other"), 1);
    assert!(
        s["errors"]["bad"].as_str().unwrap().contains("exit code 3"),
        "{s}"
    );
}

/// A stage that blocks until the test creates `release`, marking when it started.
fn slow_pipeline(p: &Project) {
    let counts = p.path("counts");
    std::fs::create_dir_all(&counts).unwrap();
    p.write(
        "slow.yaml",
        &format!(
            r#"
stages:
  fast: {{kind: command, params: {{cmd: "echo x >> {c}/fast; echo f > f.txt"}}}}
  slow:
    kind: command
    deps: [fast]
    params:
      cmd: "echo x >> {c}/slow; touch {c}/slow.started; echo partial > part.txt; while [ ! -f {c}/release ]; do sleep 0.05; done; echo done > part.txt"
"#,
            c = counts.display()
        ),
    );
}

#[test]
fn kill_9_mid_stage_keeps_finished_stages_and_commits_nothing_partial() {
    let p = Project::new();
    slow_pipeline(&p);
    let mut child = p.spawn(&["run", "slow.yaml"]);
    assert!(
        wait_for(&p.path("counts/slow.started"), 60),
        "slow stage never started"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(p.records(), 1, "only the finished stage may be committed");
    // The run never recorded its end; its head is gone, and `runs` says so.
    let o = p.run(&["runs", "--json"]);
    let runs: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(runs[0]["status"], "dead", "{runs}");

    std::fs::write(p.path("counts/release"), "").unwrap();
    let o = p.run(&["run", "slow.yaml", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&o);
    assert_eq!(s["cached"], 1);
    assert_eq!(s["executed"], 1);
    assert_eq!(p.count("counts/fast"), 1);
    assert_eq!(p.count("counts/slow"), 2);
}

#[test]
fn sigint_cancels_running_stage_without_committing() {
    let p = Project::new();
    slow_pipeline(&p);
    let child = p.spawn(&["run", "slow.yaml"]);
    assert!(
        wait_for(&p.path("counts/slow.started"), 60),
        "slow stage never started"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert_eq!(p.records(), 1);
    // The run is recorded as interrupted.
    let o = p.run(&["runs", "--json"]);
    let runs: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(runs[0]["status"], "interrupted", "{runs}");
}

/// `heads` concurrent `run --json` of one pipeline on one cache: every key executes once
/// (the counter files), the registry records each execution under the run whose stage
/// process did it and a cache hit under every other run, and the heads' summaries add up.
fn concurrent_runs(heads: usize) {
    let p = Project::new();
    let counts = p.path("counts");
    std::fs::create_dir_all(&counts).unwrap();
    p.write(
        "c.yaml",
        &format!(
            r#"
stages:
  one: {{kind: command, params: {{cmd: "echo x >> {c}/one; sleep 0.5; echo 1 > o"}}}}
  two: {{kind: command, deps: [one], params: {{cmd: "echo x >> {c}/two; sleep 0.5; echo 2 > o"}}}}
  three: {{kind: command, deps: [one], params: {{cmd: "echo x >> {c}/three; sleep 0.5; echo 3 > o"}}}}
"#,
            c = counts.display()
        ),
    );
    let nodes = ["one", "two", "three"];
    let children: Vec<_> = (0..heads)
        .map(|_| p.spawn(&["run", "c.yaml", "--json"]))
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for node in nodes {
        assert_eq!(p.count(&format!("counts/{node}")), 1, "{node} ran twice");
    }
    let mut executed_total = 0;
    for o in &outputs {
        assert!(o.status.success(), "{}", stderr(o));
        let s = summary(o);
        let (executed, cached) = (
            s["executed"].as_u64().unwrap(),
            s["cached"].as_u64().unwrap(),
        );
        assert_eq!(executed + cached, 3, "{s}");
        executed_total += executed;
        // What this head says it executed is what the registry has under its run.
        let said = |outcome: &str| -> Vec<String> {
            let mut v: Vec<String> = stdout(o)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|e| e["event"] == "finished" && e["outcome"] == outcome)
                .map(|e| e["node"].as_str().unwrap().to_string())
                .collect();
            v.sort();
            v
        };
        let run = s["run_id"].as_i64().unwrap().to_string();
        let r = p.run(&["runs", "--run", &run, "--json"]);
        assert!(r.status.success(), "{}", stderr(&r));
        let rows: serde_json::Value = serde_json::from_str(&stdout(&r)).unwrap();
        let recorded = |status: &str| -> Vec<String> {
            let mut v: Vec<String> = rows
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["status"] == status)
                .map(|e| e["node"].as_str().unwrap().to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(said("executed"), recorded("executed"), "run {run}: {rows}");
        assert_eq!(said("cached"), recorded("cached"), "run {run}: {rows}");
        assert_eq!(said("executed").len() as u64, executed);
    }
    assert_eq!(executed_total, 3, "each key executed once, by one head");
}

#[test]
fn two_concurrent_runs_execute_each_stage_once_and_each_records_its_own_work() {
    concurrent_runs(2);
}

#[test]
fn four_concurrent_runs_execute_each_stage_once_and_each_records_its_own_work() {
    concurrent_runs(4);
}

/// A project whose `ugc-pipe` starts, for each stage, the real worker and then dies by
/// `kill -9` itself: a stage process killed right after its commit.
fn killed_after_commit(p: &Project) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = p.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let head = bin.join("ugc-pipe");
    // The head finds its worker next to its own executable.
    std::fs::hard_link(env!("CARGO_BIN_EXE_ugc-pipe"), &head)
        .or_else(|_| std::fs::copy(env!("CARGO_BIN_EXE_ugc-pipe"), &head).map(|_| ()))
        .unwrap();
    let worker = bin.join("ugc-pipe-worker");
    std::fs::write(
        &worker,
        format!(
            "#!/bin/sh\n'{}' \"$@\"\nkill -9 $$\n",
            env!("CARGO_BIN_EXE_ugc-pipe-worker")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
    head
}

fn delete_registry_rows(p: &Project) {
    let db = rusqlite::Connection::open(p.cache().join("registry.sqlite")).unwrap();
    db.execute_batch("DELETE FROM metrics; DELETE FROM executions;")
        .unwrap();
}

#[test]
fn a_stage_killed_after_its_commit_counts_as_executed_and_its_rows_are_recovered() {
    let p = Project::new();
    p.write(
        "m.yaml",
        r#"
stages:
  score: {kind: command, params: {cmd: "echo '{\"psnr\": 31.5}' > metrics.json"}}
"#,
    );
    let head = killed_after_commit(&p);
    let o = std::process::Command::new(&head)
        .args(["run", "m.yaml", "--json"])
        .current_dir(p.dir.path())
        .env("UGC_PIPE_CACHE", p.cache())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    // The record is the truth: the stage committed, so it executed, though its process
    // was killed by signal 9.
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let s = summary(&o);
    assert_eq!(
        (s["executed"].as_u64(), s["failed"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    let run = s["run_id"].as_i64().unwrap().to_string();

    // A kill between the commit and the registry write leaves the record without rows.
    delete_registry_rows(&p);
    let r = p.run(&["runs", "--run", &run, "--json"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&r)).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(
        (&rows[0]["node"], &rows[0]["status"]),
        (&serde_json::json!("score"), &serde_json::json!("executed")),
        "{rows}"
    );

    delete_registry_rows(&p);
    let o = p.run(&["show", "m.yaml", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let shown: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(shown["rows"][0]["node"], "score", "{shown}");
    assert_eq!(shown["rows"][0]["metrics"]["psnr"], 31.5, "{shown}");

    // So does the next run that finds the record; it also reports it as cached.
    delete_registry_rows(&p);
    let o = p.run(&["run", "m.yaml", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&o)["cached"], 1);
    let r = p.run(&["runs", "--run", &run, "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&stdout(&r)).unwrap();
    assert_eq!(rows[0]["status"], "executed", "{rows}");
}

#[test]
fn corrupted_object_is_found_by_verify_and_recomputed() {
    let p = Project::new();
    chain(&p, "one");
    assert!(p.run(&["run", "pipe.yaml"]).status.success());
    // Corrupt the object holding b.txt (the only file whose content includes "one").
    let mut corrupted = false;
    for entry in walkdir(&p.cache().join("objects")) {
        let text = std::fs::read_to_string(&entry).unwrap_or_default();
        if text.contains("one") {
            let mut perm = std::fs::metadata(&entry).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            std::fs::set_permissions(&entry, perm).unwrap();
            std::fs::write(&entry, "tampered\n").unwrap();
            corrupted = true;
        }
    }
    assert!(corrupted);
    let o = p.run(&["verify"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let o = p.run(&["run", "pipe.yaml", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&o)["executed"], 1);
    assert_eq!(p.count("counts/b"), 2);
    let o = p.run(&["verify"]);
    assert!(o.status.success(), "{}", stdout(&o));
}

/// The process group of `pid`.
fn pgrp(pid: i32) -> i32 {
    stat_field(pid, 5).unwrap() as i32
}

/// Processes a test started through a stage: SIGKILLed on drop if still running, so a
/// failing test leaves no endless loop behind. Each is known by pid and start time, so a
/// reused pid is left alone.
#[derive(Default)]
struct Reap(Vec<(i32, u64)>);

impl Reap {
    fn add(&mut self, pids: &[i32]) {
        for &pid in pids {
            if let Some(start) = stat_field(pid, 22) {
                self.0.push((pid, start));
            }
        }
    }
}

impl Drop for Reap {
    fn drop(&mut self) {
        for &(pid, start) in &self.0 {
            if runs(pid) && stat_field(pid, 22) == Some(start) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Pids written one per line into `file` by a stage command.
fn pids(file: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

/// Waits up to `secs` for every pid in `pids` to stop running; returns those still running.
fn still_running(pids: &[i32], secs: u64) -> Vec<i32> {
    let start = std::time::Instant::now();
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| runs(p)).collect();
        if left.is_empty() || start.elapsed().as_secs() >= secs {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The file `name` of a committed output (a view of the cache).
fn committed(p: &Project, name: &str) -> String {
    let found: Vec<_> = walkdir(&p.cache().join("views"))
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n == name))
        .collect();
    assert_eq!(found.len(), 1, "{name} in the views: {found:?}");
    std::fs::read_to_string(&found[0]).unwrap()
}

/// A resumable 12-step loop that a `command` stage runs as a background grandchild (the
/// shape that raced a resumed run in issue 19): steps go to `$UGC_SCRATCH/log.txt`, the
/// last step to `$UGC_SCRATCH/step`. Until `counts/release` exists the loop stops after
/// step 4 and waits. Every process of the stage appends its pid to `counts/pids`; the
/// stage process (the shell's parent) writes its pid to `counts/worker.pid`.
fn orphan_pipeline(p: &Project) -> std::path::PathBuf {
    let counts = p.path("counts");
    std::fs::create_dir_all(&counts).unwrap();
    p.write(
        "orphan.yaml",
        &format!(
            r#"
stages:
  steps:
    kind: command
    params:
      cmd: |
        echo $$ >> {c}/pids
        echo $PPID > {c}/worker.pid
        sleep 300 &
        echo $! >> {c}/pids
        (
          i=$(cat $UGC_SCRATCH/step 2>/dev/null || echo 0)
          while [ $i -lt 12 ]; do
            if [ $i -eq 4 ] && [ ! -f {c}/release ]; then
              touch {c}/blocked
              while [ ! -f {c}/release ]; do sleep 0.05; done
            fi
            i=$((i+1))
            echo "step $i" >> $UGC_SCRATCH/log.txt
            echo $i > $UGC_SCRATCH/step
          done
        ) &
        loop=$!
        echo $loop >> {c}/pids
        wait $loop
        cp $UGC_SCRATCH/log.txt log.txt
      outputs: [log.txt]
"#,
            c = counts.display()
        ),
    )
}

/// `kill -9` of the head (`head: true`) or of the stage process, mid-stage: within a few
/// seconds no process of the stage runs (shell, background grandchildren, guardian), and
/// the resumed run commits exactly steps 1 to 12, each once.
fn orphan_trial(head: bool) {
    let p = Project::new();
    orphan_pipeline(&p);
    let mut run = p.spawn(&["run", "orphan.yaml", "--json"]);
    assert!(
        wait_for(&p.path("counts/blocked"), 60),
        "stage never reached step 4"
    );
    let mut stage = pids(&p.path("counts/pids"));
    assert_eq!(stage.len(), 3, "{stage:?}");
    let worker: i32 = std::fs::read_to_string(p.path("counts/worker.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The shell's group is led by the guardian, which must go too.
    stage.push(pgrp(stage[0]));
    stage.push(worker);
    let mut reap = Reap::default();
    reap.add(&stage);
    assert_eq!(still_running(&stage, 0), stage, "all alive before the kill");
    if head {
        run.kill().unwrap(); // SIGKILL
        run.wait().unwrap();
    } else {
        unsafe { libc::kill(worker, libc::SIGKILL) };
        let out = run.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    }
    let left = still_running(&stage, 5);
    assert!(
        left.is_empty(),
        "still running 5 s after the kill: {left:?}"
    );

    std::fs::write(p.path("counts/release"), "").unwrap();
    let o = p.run(&["run", "orphan.yaml", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&o)["executed"], 1);
    let expected: String = (1..=12).map(|i| format!("step {i}\n")).collect();
    assert_eq!(committed(&p, "log.txt"), expected);
    // The resumed attempt's `sleep 300 &` ended with its stage too.
    let all = pids(&p.path("counts/pids"));
    reap.add(&all);
    assert_eq!(all.len(), 6, "{all:?}");
    assert_eq!(still_running(&all, 5), Vec::<i32>::new());
}

#[test]
fn kill_9_of_the_head_leaves_no_process_of_the_stage_and_the_resume_is_exact() {
    orphan_trial(true);
}

#[test]
fn kill_9_of_the_stage_process_leaves_no_process_of_the_stage_and_the_resume_is_exact() {
    orphan_trial(false);
}

/// A process that left the stage's process group (`setsid`) and outlived a killed stage
/// process still holds the key's lock: the next attempt waits for it instead of running
/// beside it in the same scratch.
#[test]
fn an_escaped_survivor_of_a_killed_stage_keeps_the_next_attempt_waiting() {
    let p = Project::new();
    let c = p.path("counts");
    std::fs::create_dir_all(&c).unwrap();
    p.write(
        "esc.yaml",
        &format!(
            r#"
stages:
  esc:
    kind: command
    params:
      cmd: |
        echo $PPID > {c}/worker.pid
        if [ ! -f {c}/release ]; then
          echo $$ > {c}/shell.pid
          setsid sh -c 'echo $$ > {c}/escapee.tmp; mv {c}/escapee.tmp {c}/escapee.pid; exec sleep 300' &
          while :; do sleep 0.05; done
        fi
        touch {c}/second.started
        echo done > out.txt
"#,
            c = c.display()
        ),
    );
    let run = p.spawn(&["run", "esc.yaml"]);
    assert!(wait_for(&p.path("counts/escapee.pid"), 60), "no escapee");
    let read = |f: &str| -> i32 {
        std::fs::read_to_string(p.path(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (worker, escapee) = (read("counts/worker.pid"), read("counts/escapee.pid"));
    let mut reap = Reap::default();
    reap.add(&[escapee, read("counts/shell.pid")]);
    assert_ne!(pgrp(escapee), pgrp(worker));
    unsafe { libc::kill(worker, libc::SIGKILL) };
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(runs(escapee), "the escapee should have survived its stage");

    std::fs::write(p.path("counts/release"), "").unwrap();
    let second = p.spawn(&["run", "esc.yaml", "--json"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        !p.path("counts/second.started").exists(),
        "the next attempt ran beside a live process of the killed one"
    );
    unsafe { libc::kill(escapee, libc::SIGKILL) };
    let o = second.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&o)["executed"], 1);
    assert!(p.path("counts/second.started").exists());
    assert_eq!(committed(&p, "out.txt"), "done\n");
}

/// SIGHUP, to the head or to the stage process, is a cancellation like SIGTERM: the
/// command gets SIGTERM and can checkpoint into scratch, nothing is committed, and the
/// next run resumes from the checkpoint.
#[test]
fn sighup_lets_a_command_checkpoint_and_the_next_run_resumes() {
    for to_head in [true, false] {
        let p = Project::new();
        let c = p.path("counts");
        std::fs::create_dir_all(&c).unwrap();
        p.write(
            "hup.yaml",
            &format!(
                r#"
stages:
  long:
    kind: command
    params:
      cmd: |
        if [ -f $UGC_SCRATCH/ckpt ]; then cp $UGC_SCRATCH/ckpt resumed.txt; exit 0; fi
        trap 'echo saved > $UGC_SCRATCH/ckpt; exit 143' TERM
        echo $PPID > {c}/worker.tmp
        mv {c}/worker.tmp {c}/worker.pid
        while :; do sleep 0.05; done
"#,
                c = c.display()
            ),
        );
        let run = p.spawn(&["run", "hup.yaml", "--json"]);
        assert!(wait_for(&p.path("counts/worker.pid"), 60), "never started");
        let target = if to_head {
            run.id() as i32
        } else {
            std::fs::read_to_string(p.path("counts/worker.pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        unsafe { libc::kill(target, libc::SIGHUP) };
        let out = run.wait_with_output().unwrap();
        if to_head {
            assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
        }
        assert_eq!(
            summary(&out)["cancelled"],
            1,
            "head {to_head}: {}",
            stdout(&out)
        );
        assert_eq!(p.records(), 0, "head {to_head}");
        let o = p.run(&["run", "hup.yaml", "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(committed(&p, "resumed.txt"), "saved\n", "head {to_head}");
    }
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn dag_prints_dot_and_mermaid() {
    let p = Project::new();
    chain(&p, "one");
    let o = p.run(&["dag", "pipe.yaml"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("digraph"));
    let o = p.run(&["dag", "pipe.yaml", "--format", "mermaid"]);
    assert!(stdout(&o).contains("flowchart") || stdout(&o).contains("graph"));
}

#[test]
fn missing_external_input_is_planned_and_refused_by_name() {
    let p = Project::new();
    p.write(
        "in.yaml",
        r#"
stages:
  use: {kind: command, params: {cmd: "cat $UGC_PIPELINE_DIR/data.txt > out", inputs: [data.txt]}}
"#,
    );
    // The plan is printed, and the dry run says it cannot run (exit 2).
    let o = p.run(&["run", "in.yaml", "--dry-run"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stdout(&o).contains("does not exist yet"), "{}", stdout(&o));
    assert!(stdout(&o).contains("plan: cannot run"), "{}", stdout(&o));
    let o = p.run(&["run", "in.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("data.txt") && stderr(&o).contains("in.yaml:3:"),
        "{}",
        stderr(&o)
    );
    // Once the file exists the stage runs, and editing it re-runs the stage.
    p.write("data.txt", "one\n");
    let o = p.run(&["run", "in.yaml", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&o)["executed"], 1);
    p.write("data.txt", "two\n");
    let o = p.run(&["run", "in.yaml", "--json"]);
    assert_eq!(summary(&o)["executed"], 1);
    let o = p.run(&["run", "in.yaml", "--json"]);
    assert_eq!(summary(&o)["executed"], 0);
}

#[test]
fn keys_do_not_depend_on_how_a_matrix_names_its_points() {
    let p = Project::new();
    let counts = p.path("counts");
    std::fs::create_dir_all(&counts).unwrap();
    let stages = format!(
        r#"
stages:
  s: {{kind: command, params: {{cmd: "echo x >> {c}/s; echo ${{x}} > s"}}}}
  t: {{kind: command, deps: [s], params: {{cmd: "echo x >> {c}/t; cat $UGC_DEP_S/s > t"}}}}
"#,
        c = counts.display()
    );
    p.write(
        "a.yaml",
        &format!("params: {{x: 1, y: 0}}\nmatrix: {{x: [1, 2], y: [0]}}\n{stages}"),
    );
    p.write("b.yaml", &format!("params: {{x: 1}}\n{stages}"));
    let o = p.run(&["run", "a.yaml", "--json"]);
    assert_eq!(summary(&o)["executed"], 4, "{}", stderr(&o));
    // b.yaml computes exactly a.yaml's x=1 point under other node ids: all cached.
    let o = p.run(&["run", "b.yaml", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&o)["executed"], 0);
    assert_eq!((p.count("counts/s"), p.count("counts/t")), (2, 2));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let p = Project::new();
    chain(&p, "one");
    assert!(p.run(&["run", "pipe.yaml"]).status.success());
    // The reader is gone before the verb prints (`ugc-pipe runs | head -0`).
    for args in [
        &["runs"][..],
        &["status", "pipe.yaml"],
        &["dag", "pipe.yaml"],
    ] {
        let mut child = p.spawn(args);
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            o.status.success() || o.status.code().is_none(),
            "{args:?}: {:?} {err}",
            o.status
        );
    }
}

#[test]
fn cache_verbs_refuse_a_cache_dir_that_does_not_exist_and_an_unknown_run() {
    let p = Project::new();
    for verb in ["runs", "gc", "verify", "unlock"] {
        let o = p.run(&[verb, "--cache-dir", "no-such-cache"]);
        assert_eq!(o.status.code(), Some(2), "{verb}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("no cache at no-such-cache"),
            "{verb}: {}",
            stderr(&o)
        );
        assert!(
            !p.path("no-such-cache").exists(),
            "{verb} created the cache"
        );
    }
    chain(&p, "one");
    assert!(p.run(&["run", "pipe.yaml"]).status.success());
    let o = p.run(&["runs", "--run", "1"]);
    assert!(
        o.status.success() && stdout(&o).contains("executed"),
        "{}",
        stderr(&o)
    );
    let o = p.run(&["runs", "--run", "42"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("no run 42"), "{}", stderr(&o));
}

#[test]
fn zero_jobs_is_a_usage_error_naming_the_value() {
    let p = Project::new();
    chain(&p, "one");
    for args in [["-j", "0"], ["--jobs", "0"]] {
        let o = p.run(&["run", "pipe.yaml", args[0], args[1]]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("'0'") && e.contains("--jobs"), "{args:?}: {e}");
        assert_eq!(p.records(), 0, "{args:?} ran something");
    }
}

/// The object of the only file of `node`'s only committed record, and the record.
fn object_of(p: &Project, node: &str) -> (std::path::PathBuf, serde_json::Value) {
    let mut found = records_of(p, node);
    assert_eq!(found.len(), 1, "records of {node}: {found:?}");
    found.pop().unwrap()
}

/// The object of the first file of each committed record of `node`, and the record.
fn records_of(p: &Project, node: &str) -> Vec<(std::path::PathBuf, serde_json::Value)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(p.cache().join("records")).unwrap() {
        let path = entry.unwrap().path();
        let Ok(text) = std::fs::read(&path) else {
            continue;
        };
        let Ok(rec) = serde_json::from_slice::<serde_json::Value>(&text) else {
            continue;
        };
        if rec["meta"]["node"] == node {
            let digest = rec["files"][0]["digest"].as_str().unwrap().to_string();
            let obj = p
                .cache()
                .join("objects")
                .join(&digest[..2])
                .join(&digest[2..]);
            found.push((obj, rec));
        }
    }
    found
}

/// Flips one bit of a file in place, restoring size, mtime and mode: bit rot no stat check
/// sees (issue 19's hostile trial).
fn rot_keeping_stat(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let before = std::fs::metadata(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    bytes[0] ^= 0x01;
    std::fs::write(path, &bytes).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(before.modified().unwrap()).unwrap();
    drop(f);
    std::fs::set_permissions(path, before.permissions()).unwrap();
    let after = std::fs::metadata(path).unwrap();
    assert_eq!(
        (after.len(), after.modified().unwrap()),
        (before.len(), before.modified().unwrap())
    );
}

#[test]
fn bit_rot_in_an_input_fails_its_consumer_and_the_rerun_repairs_it() {
    let p = Project::new();
    chain(&p, "one");
    assert!(p.run(&["run", "pipe.yaml"]).status.success());
    let (a_obj, a_rec) = object_of(&p, "a");
    rot_keeping_stat(&a_obj);
    // `a` still looks committed (its stat is unchanged), but `b`, re-running for its own
    // param, re-hashes what it reads and refuses the damage.
    let o = p.run(&["run", "pipe.yaml", "--json", "--set", "b_param=two"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s = summary(&o);
    let err = s["errors"]["b"].as_str().unwrap_or_default();
    assert!(
        err.contains("input `a`")
            && err.contains(a_rec["key"].as_str().unwrap())
            && err.contains("a.txt")
            && err.contains("re-run"),
        "{s}"
    );
    assert_eq!(p.count("counts/b"), 1, "b ran on damaged bytes");
    // The next run recomputes `a` (repairing the object) and then runs `b` on good bytes.
    let o = p.run(&["run", "pipe.yaml", "--json", "--set", "b_param=two"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&o)["executed"], 2, "{}", stdout(&o));
    assert_eq!(p.count("counts/a"), 2);
    let mut b_outputs: Vec<String> = records_of(&p, "b")
        .iter()
        .map(|(obj, _)| std::fs::read_to_string(obj).unwrap())
        .collect();
    b_outputs.sort();
    assert_eq!(b_outputs, ["a\none\n", "a\ntwo\n"]);
    assert_eq!(std::fs::read_to_string(&a_obj).unwrap(), "a\n");
    let o = p.run(&["verify"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn verify_drops_what_an_unchecked_stage_computed_from_rotten_bytes() {
    let p = Project::new();
    chain(&p, "one");
    assert!(p.run(&["run", "pipe.yaml"]).status.success());
    // `b` as a record written before stages checked their inputs; `c` checked them.
    let (_, mut b_rec) = object_of(&p, "b");
    b_rec["meta"]
        .as_object_mut()
        .unwrap()
        .remove("inputs_verified");
    let b_path = p
        .cache()
        .join("records")
        .join(format!("{}.json", b_rec["key"].as_str().unwrap()));
    std::fs::write(&b_path, serde_json::to_vec(&b_rec).unwrap()).unwrap();
    let (a_obj, _) = object_of(&p, "a");
    rot_keeping_stat(&a_obj);
    let o = p.run(&["verify"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("1 record(s) dropped as derived"), "{text}");
    assert!(
        text.contains(&format!(
            "record {} removed as derived",
            b_rec["key"].as_str().unwrap()
        )),
        "{text}"
    );
    // The re-run recomputes `a` with the same bytes, so `b`'s key is unchanged: it must
    // be recomputed, not served. `c` checked its inputs and is kept.
    let o = p.run(&["run", "pipe.yaml", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&o)["executed"], 2, "{}", stdout(&o));
    assert_eq!(
        (
            p.count("counts/a"),
            p.count("counts/b"),
            p.count("counts/c")
        ),
        (2, 2, 1)
    );
    assert!(p.run(&["verify"]).status.success());
}

#[test]
fn every_missing_external_input_is_listed_at_once_with_what_it_is() {
    let p = Project::new();
    p.write(
        "in.yaml",
        r#"
stages:
  a: {kind: command, params: {cmd: "true", inputs: [one.txt, two.txt]}}
  b: {kind: command, params: {cmd: "true", inputs: [one.txt]}}
  c: {kind: command, deps: [a], params: {cmd: "true", inputs: [three.txt]}}
"#,
    );
    for args in [
        &["run", "in.yaml"][..],
        &["run", "in.yaml", "--dry-run"][..],
    ] {
        let o = p.run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("3 external input(s) missing"), "{err}");
        for (file, at) in [
            ("one.txt", "in.yaml:3:"),
            ("one.txt", "in.yaml:4:"),
            ("two.txt", "in.yaml:3:"),
            ("three.txt", "in.yaml:5:"),
        ] {
            assert!(
                err.contains(file) && err.contains(at),
                "{file} at {at}: {err}"
            );
        }
        assert!(
            err.contains("what: Files or folders the command reads"),
            "{err}"
        );
    }
    assert_eq!(p.records(), 0, "nothing may run while inputs are missing");
    // `status` reports (exit 0) and names what `run` would refuse.
    let o = p.run(&["status", "in.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("cannot run: 3 external input(s) missing"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn every_bad_value_of_a_pipeline_is_refused_at_plan_time_with_its_position() {
    let p = Project::new();
    p.write(
        "bad.yaml",
        r#"
stages:
  a:
    kind: command
    params: {cmd: 3, outputs: oops}
  b:
    kind: command
    deps: [a]
    params: {cmd: "true", nope: 1}
"#,
    );
    for verb in [
        &["run", "bad.yaml"][..],
        &["run", "bad.yaml", "--dry-run"][..],
        &["status", "bad.yaml"][..],
    ] {
        let o = p.run(verb);
        assert_eq!(o.status.code(), Some(2), "{verb:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("3 problems"), "{err}");
        for (at, what) in [
            ("bad.yaml:5:19", "parameter `cmd`"),
            ("bad.yaml:5:31", "parameter `outputs`"),
            ("bad.yaml:9:27", "no parameter `nope`"),
        ] {
            assert!(
                err.contains(&format!("{at}: ")) && err.contains(what),
                "{at} {what}: {err}"
            );
        }
    }
    assert_eq!(p.records(), 0);
}
