//! `resources: {devices: N}` through the CLI (issue 13): the plan-time refusals (exit 2,
//! with positions), and a training stage run as 2 CPU ranks by the worker's launcher,
//! recorded with its devices in the run registry.

use crate::common::*;

/// A tiny train stage on a synthetic task; `resources` is the stage's `resources:` line.
fn tiny(p: &Project, resources: &str, batch: usize) -> std::path::PathBuf {
    p.write("dp.yaml", &tiny_yaml(resources, batch))
}

/// The pipeline of [`tiny`]: synth data, a split, and the train stage `fit`.
pub fn tiny_yaml(resources: &str, batch: usize) -> String {
    format!(
        r#"stages:
  data:
    kind: synth
    params: {{task: labels2photo, n: 8, n_test: 4, size: 32, seed: 0}}
  split:
    kind: split
    deps: [data]
    params: {{label_ratio: 1.0, seed: 0}}
  fit:
    kind: train
    deps: [split]
{resources}    params:
      arch: {{arch: pix2pix-resnet, ngf: 4, n_blocks: 1}}
      steps: 2
      batch_size: {batch}
      ndf: 4
      seed: 0
"#
    )
}

#[test]
fn devices_on_a_kind_that_runs_as_one_process_is_refused_with_its_position() {
    let p = Project::new();
    p.write(
        "bad.yaml",
        "stages:\n  a:\n    kind: command\n    resources: {devices: 2}\n    params: {cmd: \"true\"}\n",
    );
    let o = p.run(&["run", "bad.yaml", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("bad.yaml:4:26: stage `a` asks for 2 devices, but kind command runs as one process (data-parallel kinds: distill, evaluator, supernet, train)"),
        "{e}"
    );
}

#[test]
fn every_plan_problem_of_resources_is_reported_at_once() {
    let p = Project::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let too_many = cores + 1;
    tiny(
        &p,
        &format!("    resources: {{devices: {too_many}, gpus: 1}}\n"),
        1,
    );
    let o = p.run(&["run", "dp.yaml", "--device", "cpu", "--dry-run"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    let s = if cores == 1 { "" } else { "s" };
    // `gpus` follows `devices: N, ` on the resources line.
    let gpus_col = 26 + too_many.to_string().len() + 2;
    for want in [
        format!(
            "dp.yaml:12:26: stage `fit` asks for {too_many} devices, but this machine has no GPU in use and {cores} CPU core{s} (one rank per core)"
        ),
        format!("dp.yaml:12:{gpus_col}: unknown key `gpus` in `resources` of stage `fit`"),
        format!(
            "dp.yaml:16:19: stage `fit`: `batch_size` = 1 is smaller than its {too_many} devices"
        ),
    ] {
        assert!(e.contains(&want), "missing `{want}` in:\n{e}");
    }
    // The same refusal from the command line names the flag.
    tiny(&p, "", 1);
    let flag = format!("fit.resources.devices={too_many}");
    let o = p.run(&["run", "dp.yaml", "--device", "cpu", "--set", &flag]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "--set {flag}:1:23: stage `fit` asks for {too_many} devices"
        )),
        "{}",
        stderr(&o)
    );
}

/// Two CPU ranks of a real training stage, started by the worker's launcher: the stage is
/// committed once, its log holds both ranks' lines, the registry records 2 devices, and a
/// rerun of the same key with one device is a cache hit (resources are not in the key).
#[test]
fn a_training_stage_runs_as_two_cpu_ranks_and_is_recorded_with_its_devices() {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("skipped: needs 2 CPU cores for 2 ranks");
        return;
    }
    let p = Project::new();
    tiny(&p, "    resources: {devices: 2, dist_timeout_s: 120}\n", 2);
    let o = p.run(&["run", "dp.yaml", "--device", "cpu", "--json", "-j", "2"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let s = summary(&o);
    assert_eq!(
        (s["executed"].as_u64(), s["failed"].as_u64()),
        (Some(3), Some(0)),
        "{s}"
    );
    let run = s["run_id"].as_i64().unwrap().to_string();

    let log = std::fs::read_to_string(p.cache().join("logs").join(&run).join("fit.log")).unwrap();
    assert!(
        log.contains("[rank 0] ") && log.contains("[rank 1] "),
        "{log}"
    );

    let o = p.run(&["runs", "--run", &run, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let fit = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == "fit" && r["status"] == "executed")
        .expect("fit's execution");
    assert_eq!(
        fit["resources"],
        serde_json::json!({"devices": 2, "dist_timeout_s": 120.0})
    );
    let split = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == "split")
        .unwrap();
    assert_eq!(split["resources"]["devices"], 1);

    let o = p.run(&[
        "run",
        "dp.yaml",
        "--device",
        "cpu",
        "--json",
        "--set",
        "fit.resources.devices=1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&o)["executed"], 0, "same key with one device");
}
