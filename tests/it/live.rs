//! Watching a run (issue 15 items 1-2): a training stage's status lines on a console that
//! is not a terminal, in its stage log and in `--json`; the overall line; `ugc-pipe logs`
//! by stage name (print, `--csv`, `-f`, "did you mean"); TensorBoard event files beside the
//! cache's outputs, never inside them (the output's digest is the same on a re-run).

use std::path::Path;

use crate::common::*;

/// A tiny train stage of `steps` steps on a synthetic task.
fn tiny(p: &Project, steps: u64) {
    p.write(
        "live.yaml",
        &format!(
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
    params:
      arch: {{arch: pix2pix-resnet, ngf: 4, n_blocks: 1}}
      steps: {steps}
      batch_size: 2
      ndf: 4
      seed: 0
"#
        ),
    );
}

/// The committed record of `node`'s key, from `show --json`'s rows or the records folder.
fn record_of(p: &Project, kind: &str) -> serde_json::Value {
    for e in std::fs::read_dir(p.cache().join("records")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        let r: serde_json::Value = serde_json::from_str(&text).unwrap();
        if r["material"]["kind"] == kind {
            return r;
        }
    }
    panic!("no record of kind {kind}");
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_training_stage_reports_losses_on_a_plain_console_its_log_and_tensorboard() {
    let p = Project::new();
    tiny(&p, 6);
    let o = p.run(&["run", "live.yaml", "--device", "cpu"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    // 6 steps: a status line every step (about 20 a run, at least one per step); each
    // with the step, the losses, the rate and the ETA, and the overall line beside it.
    for k in 1..=6 {
        let want = format!("  fit: step {k}/6 · ");
        assert!(err.contains(&want), "missing `{want}` in:\n{err}");
    }
    let last = err.lines().find(|l| l.contains("fit: step 6/6")).unwrap();
    assert!(
        last.contains(" steps/s · eta 0s [stages 2/3 done · 1 running, eta 0s]"),
        "{last}"
    );
    assert!(last.contains("d_real "), "the losses: {last}");
    assert!(err.contains("  stages 3/3 done"), "{err}");

    // The stage log has the same lines (with all losses), and `logs` prints it by name.
    let log = std::fs::read_to_string(p.cache().join("logs/1/fit.log")).unwrap();
    assert!(log.contains("fit: step 3/6 · "), "{log}");
    let o = p.run(&["logs", "live.yaml", "fit"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), log);
    assert!(
        stderr(&o).contains(&format!(
            "tensorboard --logdir {}",
            p.cache().join("tensorboard/fit").display()
        )),
        "{}",
        stderr(&o)
    );
    // --csv: the committed log.csv, a header and 6 rows.
    let o = p.run(&["logs", "live.yaml", "fit", "--csv"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = stdout(&o);
    assert!(csv.starts_with("step,"), "{csv}");
    assert_eq!(csv.lines().count(), 7, "{csv}");
    // -f on a stage that has ended prints it and returns.
    let o = p.run(&["logs", "live.yaml", "fit", "-f"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), log);

    // TensorBoard files beside the outputs, one run per node and key; none in the output.
    let rec = record_of(&p, "train");
    let key = rec["key"].as_str().unwrap().to_string();
    let tb = p.cache().join("tensorboard/fit").join(&key[..12]);
    let tb_files = files_under(&tb);
    assert_eq!(tb_files.len(), 1, "{tb_files:?}");
    assert!(
        tb_files[0].starts_with("events.out.tfevents."),
        "{tb_files:?}"
    );
    let out = files_under(&p.cache().join("views").join(&key));
    assert!(out.iter().all(|f| !f.contains("tfevents")), "{out:?}");
    // A forced re-run writes a second event file and commits the same bytes: the event
    // files (wall times) change no output digest and so no key downstream.
    let digest = rec["tree_digest"].clone();
    let o = p.run(&[
        "run",
        "live.yaml",
        "--device",
        "cpu",
        "--force",
        "fit",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(record_of(&p, "train")["tree_digest"], digest);
    assert_eq!(files_under(&tb).len(), 2);
    // --json: the status lines as events.
    let statuses: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "status")
        .collect();
    assert_eq!(statuses.len(), 6, "{}", stdout(&o));
    assert_eq!(statuses[5]["node"], "fit");
    assert_eq!(
        (statuses[5]["step"].as_u64(), statuses[5]["total"].as_u64()),
        (Some(6), Some(6))
    );
    assert!(statuses[5]["losses"]["d_real"].is_f64(), "{}", statuses[5]);
}

#[test]
fn logs_names_a_stage_and_suggests_close_names() {
    let p = Project::new();
    tiny(&p, 2);
    let o = p.run(&["logs", "live.yaml", "fti"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no stage or node `fti` in")
            && stderr(&o).contains("did you mean `fit`?"),
        "{}",
        stderr(&o)
    );
    let o = p.run(&["logs", "live.yaml", "qqqqqqqq"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("its stages and nodes: data, fit, split"),
        "{}",
        stderr(&o)
    );
    // A known stage that never ran: exit 1, saying so.
    let o = p.run(&["logs", "live.yaml", "fit"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("`fit` has no log in"), "{}", stderr(&o));
}

#[test]
fn logs_follow_prints_a_running_stage_until_it_ends() {
    let p = Project::new();
    tiny(&p, 300);
    let mut run = p.spawn(&["run", "live.yaml", "--device", "cpu"]);
    let log = p.cache().join("logs/1/fit.log");
    assert!(wait_for(&log, 120), "the stage never started");
    let o = p.run(&["logs", "live.yaml", "fit", "-f"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let followed = stdout(&o);
    // It ended with the stage: the last status line and the stage's outcome are in it.
    assert!(followed.contains("fit: step 300/300 · "), "{followed}");
    assert!(followed.contains("executed"), "{followed}");
    assert!(run.wait().unwrap().success());
    // What it followed is the whole log, as it stands after the run.
    assert_eq!(followed, std::fs::read_to_string(&log).unwrap());
}
