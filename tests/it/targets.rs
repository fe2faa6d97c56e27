//! `run P TARGET...` (a stage or node and its ancestors only) and "did you mean" on the
//! CLI's unknown names (targets, `--force`, `explain`, `--set`, kinds, deps, parameters).

use crate::common::{Project, stderr, stdout, summary};

/// a -> b -> c, a -> d; `ratio` sweeps b (and so c) over two points.
fn pipeline(p: &Project) -> std::path::PathBuf {
    let counts = p.path("counts");
    std::fs::create_dir_all(&counts).unwrap();
    p.write(
        "p.yaml",
        &format!(
            r#"
matrix:
  ratio: [1, 2]
stages:
  a: {{kind: command, params: {{cmd: "echo x >> {c}/a; echo a > a"}}}}
  b: {{kind: command, deps: [a], params: {{cmd: "echo x >> {c}/b; echo ${{ratio}} > b"}}}}
  c: {{kind: command, deps: [b], params: {{cmd: "echo x >> {c}/c; echo c > c"}}}}
  d: {{kind: command, deps: [a], params: {{cmd: "echo x >> {c}/d; echo d > d"}}}}
"#,
            c = counts.display()
        ),
    )
}

#[test]
fn a_target_runs_itself_and_its_ancestors_only_and_the_summary_counts_them() {
    let p = Project::new();
    pipeline(&p);
    // The plan of the selection: b's two nodes and a; nothing of c or d.
    let o = p.run(&["run", "p.yaml", "b", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plan = stdout(&o);
    assert!(plan.starts_with("plan: 3 to run, 0 cached"), "{plan}");
    for absent in ["c[", "  d "] {
        assert!(!plan.contains(absent), "{plan}");
    }

    let o = p.run(&["run", "p.yaml", "b", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = summary(&o);
    assert_eq!(
        (s["executed"].as_u64(), s["cached"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!((p.count("counts/a"), p.count("counts/b")), (1, 2));
    assert_eq!((p.count("counts/c"), p.count("counts/d")), (0, 0));

    // A node id: that node and what it needs; a and b[ratio=2] come from the cache.
    let o = p.run(&["run", "p.yaml", "c[ratio=2]", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = summary(&o);
    assert_eq!(
        (s["executed"].as_u64(), s["cached"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(p.count("counts/c"), 1);

    // The rest, then: the whole pipeline reuses every node a target ran.
    let o = p.run(&["run", "p.yaml", "--json"]);
    let s = summary(&o);
    assert_eq!(
        (s["executed"].as_u64(), s["cached"].as_u64()),
        (Some(2), Some(4))
    );
    assert_eq!((p.count("counts/c"), p.count("counts/d")), (2, 1));
}

#[test]
fn unknown_targets_and_forces_are_refused_with_did_you_mean_before_anything_runs() {
    let p = Project::new();
    pipeline(&p);
    let o = p.run(&["run", "p.yaml", "b", "dd"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("target `dd`: no stage or node `dd` in ")
            && e.contains("p.yaml; did you mean `d`?"),
        "{e}"
    );
    assert_eq!(p.count("counts/a") + p.count("counts/b"), 0, "nothing ran");

    let o = p.run(&["run", "p.yaml", "--force", "c[ratio=3]"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("did you mean `c[ratio=1]` or `c[ratio=2]` or "),
        "{e}"
    );

    // Far from every name: the stages are listed instead.
    let o = p.run(&["run", "p.yaml", "zzzzzz"]);
    assert!(
        stderr(&o).contains("(its stages: a, b, c, d)"),
        "{}",
        stderr(&o)
    );

    // Forcing a node the targets do not need is a mistake worth saying.
    let o = p.run(&["run", "p.yaml", "b", "--force", "d"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--force d: not among the nodes"),
        "{}",
        stderr(&o)
    );

    let o = p.run(&["explain", "p.yaml", "bb"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("did you mean `b`?"), "{}", stderr(&o));
}

#[test]
fn mistyped_kinds_params_deps_and_set_keys_get_a_suggestion() {
    let p = Project::new();
    p.write(
        "bad.yaml",
        "stages:\n  a:\n    kind: comand\n    params: {cmd: \"true\"}\n",
    );
    let o = p.run(&["run", "bad.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("unknown stage kind `comand`; did you mean `command`?"),
        "{e}"
    );
    // A kind it does not know stops the loading of that stage: deps in a second file.
    p.write(
        "deps.yaml",
        "stages:\n  a: {kind: command, params: {cmd: \"true\"}}\n  b: {kind: command, deps: [aa], params: {cmd: \"true\"}}\n",
    );
    let o = p.run(&["run", "deps.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("depends on `aa`, which is not a stage of this pipeline; did you mean `a`?"),
        "{e}"
    );

    p.write(
        "ok.yaml",
        "stages:\n  a:\n    kind: command\n    params:\n      cmd: \"true\"\n      outputz: [x]\n",
    );
    let o = p.run(&["run", "ok.yaml", "--dry-run"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("ok.yaml:6:7: stage `a` has no parameter `outputz`; did you mean `outputs`?"),
        "{e}"
    );

    p.write(
        "one.yaml",
        "stages:\n  a: {kind: command, params: {cmd: \"true\"}}\n",
    );
    let o = p.run(&["run", "one.yaml", "--dry-run", "--set", "a.cmdd=false"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("has no parameter `cmdd`; did you mean `cmd`?"),
        "{}",
        stderr(&o)
    );
}

/// A tiny train stage on a synthetic task, `steps` long; `extra` is more of its params.
fn train_stage(name: &str, deps: &str, steps: u64, extra: &str) -> String {
    format!(
        r#"  {name}:
    kind: train
    deps: [{deps}]
    params:
      arch: {{arch: pix2pix-resnet, ngf: 4, n_blocks: 1}}
      steps: {steps}
      batch_size: 2
      ndf: 4
      seed: 0
{extra}"#
    )
}

fn continued(p: &Project) {
    let text = format!(
        r#"stages:
  data:
    kind: synth
    params: {{task: labels2photo, n: 8, n_test: 4, size: 32, seed: 0}}
  split:
    kind: split
    deps: [data]
    params: {{label_ratio: 1.0, seed: 0}}
{}{}{}"#,
        train_stage("short", "split", 4, "      keep_state: true\n"),
        train_stage("long", "split, short", 8, "      init_from: short\n"),
        train_stage("whole", "split", 8, ""),
    );
    p.write("cont.yaml", &text);
}

/// `init_from`: 4 steps, then 4 more from its final state, equal bit for bit to one
/// 8-step run (constant learning rate, same settings, CPU): weights, log and metrics.
#[test]
fn a_continuation_trains_the_missing_steps_only_and_equals_one_longer_run() {
    let p = Project::new();
    continued(&p);
    let o = p.run(&["run", "cont.yaml", "-j", "1", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let o = p.run(&["show", "cont.yaml", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let out = |node: &str| {
        let row = rows["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["node"] == node)
            .unwrap_or_else(|| panic!("no {node} in {rows}"));
        std::path::PathBuf::from(row["output"].as_str().unwrap())
    };
    let (short, long, whole) = (out("short"), out("long"), out("whole"));
    assert!(
        short.join("state/latest.json").is_file(),
        "keep_state commits the state"
    );
    assert!(
        !whole.join("state").exists(),
        "nothing more without keep_state"
    );
    // Every output file: model (weights and model.json), log.csv, metrics.json, samples.
    let (a, b) = (walk(&long), walk(&whole));
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b));
    assert!(
        names(&a).contains(&"model/model.safetensors".to_string()),
        "{:?}",
        names(&a)
    );
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x == y,
            "{name} differs between the continuation and one 8-step run"
        );
    }
    assert_eq!(
        std::fs::read_to_string(long.join("log.csv"))
            .unwrap()
            .lines()
            .count(),
        9
    );

    // Its stage log says it trained steps 4..8 only.
    let o = p.run(&["logs", "cont.yaml", "long"]);
    let log = stdout(&o);
    assert!(
        log.contains("continuing `short`: from its step 4, training steps 4..8 only"),
        "{log}"
    );
    // Its status lines (one per step at 8 steps) start after step 4.
    assert!(log.contains("long: step 5/8 "), "{log}");
    for before in 1..=4 {
        assert!(!log.contains(&format!("long: step {before}/8 ")), "{log}");
    }

    // The key says so: another source is another key.
    let o = p.run(&[
        "run",
        "cont.yaml",
        "--dry-run",
        "--set",
        "long.init_from=null",
    ]);
    assert!(stdout(&o).contains("run     long "), "{}", stdout(&o));
}

/// Every file under `dir` (relative name, bytes), sorted.
fn walk(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_continuation_of_what_cannot_be_continued_is_exit_2_naming_stage_param_and_value() {
    let p = Project::new();
    continued(&p);
    let o = p.run(&[
        "run",
        "cont.yaml",
        "--dry-run",
        "--set",
        "long.init_from=whole",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("stage `long` parameter `init_from` = `whole`: names no dep of the stage (deps: split, short)"),
        "{e}"
    );
    let o = p.run(&["run", "cont.yaml", "--dry-run", "--set", "long.steps=4"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("`steps` = 4 must be greater than `short`'s 4"),
        "{}",
        stderr(&o)
    );
}

/// The same for `supernet` (elastic generator, sandwich sub-nets, distillation on
/// unlabeled inputs): 2 + 2 steps equal one 4-step run, every output file.
#[test]
fn a_supernet_continuation_equals_one_longer_run() {
    let p = Project::new();
    let stage = |name: &str, deps: &str, steps: u64, extra: &str| {
        format!(
            r#"  {name}:
    kind: supernet
    deps: [{deps}]
    params:
      arch: {{arch: pix2pix-resnet, ngf: 4, n_blocks: 2}}
      steps: {steps}
      batch_size: 2
      ndf: 4
      seed: 0
{extra}"#
        )
    };
    p.write(
        "sn.yaml",
        &format!(
            r#"stages:
  data:
    kind: synth
    params: {{task: labels2photo, n: 8, n_test: 4, size: 32, seed: 0}}
  split:
    kind: split
    deps: [data]
    params: {{label_ratio: 0.5, seed: 0}}
{}{}{}"#,
            stage("short", "split", 2, "      keep_state: true\n"),
            stage("long", "split, short", 4, "      init_from: short\n"),
            stage("whole", "split", 4, ""),
        ),
    );
    let o = p.run(&["run", "sn.yaml", "-j", "1", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let o = p.run(&["show", "sn.yaml", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let out = |node: &str| {
        let row = rows["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["node"] == node)
            .unwrap_or_else(|| panic!("no {node} in {rows}"));
        std::path::PathBuf::from(row["output"].as_str().unwrap())
    };
    let (long, whole) = (walk(&out("long")), walk(&out("whole")));
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&long), names(&whole));
    for ((name, a), (_, b)) in long.iter().zip(&whole) {
        assert!(
            a == b,
            "{name} differs between the continuation and one 4-step run"
        );
    }
}
