//! `ugc-pipe exp show`: three `--set` runs of a pipeline (and a cached re-run) compared in
//! one table, as text, JSON and CSV; `--diff`; matrix points as rows; a failed point; runs
//! recorded before the registry stored overrides (schema 5).

use serde_json::{Value, json};

use crate::common::{Project, stderr, stdout, summary};

/// `train` writes a model from `lr` and `steps`; `eval` scores it: psnr = 30 + 10 lr,
/// ssim = steps / 100, printed with two and three decimals, so the values read back are
/// the parses of short decimals (31.00 -> 31.0, 0.100 -> 0.1) and compare exactly.
const PIPELINE: &str = r#"
params:
  lr: 0.1
  steps: 10
stages:
  train:
    kind: command
    params:
      cmd: echo "$LR $STEPS" > model.txt
      env: {LR: "${lr}", STEPS: "${steps}"}
  eval:
    kind: command
    deps: [train]
    params:
      cmd: >-
        awk -v lr="$LR" -v s="$STEPS"
        'BEGIN{printf "{\"psnr\": %.2f, \"ssim\": %.3f}", 30 + lr * 10, s / 100}' > metrics.json
      env: {LR: "${lr}", STEPS: "${steps}"}
"#;

fn run_ok(p: &Project, args: &[&str]) -> Value {
    let o = p.run(args);
    assert!(o.status.success(), "{args:?}: {}{}", stdout(&o), stderr(&o));
    summary(&o)
}

fn json_of(p: &Project, args: &[&str]) -> Value {
    let o = p.run(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)))
}

/// Three `--set` runs, then the first setting again (all cached).
fn three_runs_and_a_cached_one(p: &Project) {
    p.write("p.yaml", PIPELINE);
    run_ok(p, &["run", "p.yaml", "--json"]);
    run_ok(p, &["run", "p.yaml", "--json", "--set", "lr=0.3"]);
    run_ok(
        p,
        &[
            "run",
            "p.yaml",
            "--json",
            "--set",
            "lr=0.3",
            "--set=steps=20",
        ],
    );
    let s = run_ok(p, &["run", "p.yaml", "--json"]);
    assert_eq!(
        (s["executed"].as_u64(), s["cached"].as_u64()),
        (Some(0), Some(2))
    );
}

/// The text table with what changes from one machine or moment to the next replaced:
/// start times by a fixed stamp, each distinct short key by `<key N>` in the order they
/// first appear (equal keys keep equal names), padded to the key's width so the columns
/// stay aligned.
fn redacted(text: &str, doc: &Value) -> String {
    let mut out = text.to_string();
    let mut keys: Vec<String> = Vec::new();
    for row in doc["rows"].as_array().unwrap() {
        let started = row["started"].as_str().unwrap();
        out = out.replace(started, "YYYY-MM-DD HH:MM:SSZ");
        for key in row["keys"].as_object().unwrap().values() {
            let short: String = key.as_str().unwrap().chars().take(12).collect();
            if !keys.contains(&short) && out.contains(&short) {
                keys.push(short);
            }
        }
    }
    keys.sort_by_key(|k| out.find(k.as_str()));
    for (i, k) in keys.iter().enumerate() {
        out = out.replace(k, &format!("{:<12}", format!("<key {}>", i + 1)));
    }
    out.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

#[test]
fn three_set_runs_compare_in_one_table() {
    let p = Project::new();
    three_runs_and_a_cached_one(&p);
    let doc = json_of(&p, &["exp", "show", "p.yaml", "--json"]);
    let o = p.run(&["exp", "show", "p.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    insta::assert_snapshot!("three_set_runs", redacted(&stdout(&o), &doc));

    // Only the parameters that differ between the rows, named as `--set` names them.
    assert_eq!(
        doc["columns"],
        json!({
            "point": [],
            "params": ["eval.env.LR", "eval.env.STEPS", "train.env.LR", "train.env.STEPS"],
            "metrics": ["eval.psnr", "eval.ssim"],
        })
    );
    let rows = doc["rows"].as_array().unwrap();
    let runs: Vec<i64> = rows.iter().map(|r| r["run"].as_i64().unwrap()).collect();
    assert_eq!(runs, [1, 2, 3, 4]);
    let overrides: Vec<&Value> = rows.iter().map(|r| &r["overrides"]).collect();
    assert_eq!(
        overrides,
        [
            &json!({}),
            &json!({"lr": "0.3"}),
            &json!({"lr": "0.3", "steps": "20"}),
            &json!({})
        ]
    );
    let metrics: Vec<&Value> = rows.iter().map(|r| &r["metrics"]).collect();
    assert_eq!(
        metrics,
        [
            &json!({"eval.psnr": 31.0, "eval.ssim": 0.1}),
            &json!({"eval.psnr": 33.0, "eval.ssim": 0.1}),
            &json!({"eval.psnr": 33.0, "eval.ssim": 0.2}),
            // A run that found every node cached has their metrics.
            &json!({"eval.psnr": 31.0, "eval.ssim": 0.1}),
        ]
    );
    // A whole-value reference copies the value with its type.
    assert_eq!(rows[2]["params"]["train.env.STEPS"], 20);
    assert_eq!(
        rows[3]["keys"], rows[0]["keys"],
        "the same setting, the same keys"
    );
    assert_ne!(rows[1]["keys"]["eval"], rows[0]["keys"]["eval"]);
    assert!(
        rows.iter()
            .all(|r| r["status"] == "ok" && r["executor"] == "local")
    );
    assert!(rows.iter().all(|r| r["settings_source"] == "recorded"));

    // CSV: a header and one line per row, whole keys, the values as JSON reads them.
    let o = p.run(&["exp", "show", "p.yaml", "--csv"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = stdout(&o);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "run,started,status,overrides,eval.env.LR,eval.env.STEPS,train.env.LR,train.env.STEPS,\
         eval.psnr,eval.ssim,eval.key"
    );
    assert_eq!(lines.len(), 5, "{csv}");
    assert_eq!(
        lines[3],
        format!(
            "3,{},ok,lr=0.3 steps=20,0.3,20,0.3,20,33,0.2,{}",
            rows[2]["started"].as_str().unwrap(),
            rows[2]["keys"]["eval"].as_str().unwrap()
        )
    );

    // --metric: by name, or by stage and name; an unknown one is refused with the closest.
    let only = json_of(
        &p,
        &["exp", "show", "p.yaml", "--json", "--metric", "eval.ssim"],
    );
    assert_eq!(only["columns"]["metrics"], json!(["eval.ssim"]));
    let o = p.run(&["exp", "show", "p.yaml", "--metric", "psnx"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("did you mean `psnr`"), "{}", stderr(&o));
    // --param: a name or a stage (any dotted prefix); --all-params keeps equal ones too.
    let train = json_of(&p, &["exp", "show", "p.yaml", "--json", "--param", "train"]);
    assert_eq!(
        train["columns"]["params"],
        json!(["train.env.LR", "train.env.STEPS"])
    );
    let all = json_of(
        &p,
        &[
            "exp",
            "show",
            "p.yaml",
            "--json",
            "--param",
            "train.env.LR,train.cmd",
            "--all-params",
        ],
    );
    assert_eq!(
        all["columns"]["params"],
        json!(["train.cmd", "train.env.LR"])
    );
    let o = p.run(&["exp", "show", "p.yaml", "--param", "trian"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("did you mean `train`"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        all["rows"][0]["params"]["train.cmd"],
        r#"echo "$LR $STEPS" > model.txt"#
    );
    // --limit keeps the latest runs.
    let last = json_of(&p, &["exp", "show", "p.yaml", "--json", "--limit", "2"]);
    let runs: Vec<i64> = last["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_i64().unwrap())
        .collect();
    assert_eq!(runs, [3, 4]);

    // `runs` shows each run's flags, as one would type them again.
    let o = p.run(&["runs"]);
    let text = stdout(&o);
    let line = |id: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("no run {id}: {text}"))
            .to_string()
    };
    assert!(
        line("3").ends_with("p.yaml  --set lr=0.3 --set steps=20"),
        "{text}"
    );
    assert!(line("1").ends_with("p.yaml"), "{text}");
}

#[test]
fn diff_shows_what_differs_between_two_runs_with_metric_changes() {
    let p = Project::new();
    three_runs_and_a_cached_one(&p);
    let d = json_of(&p, &["exp", "show", "p.yaml", "--diff", "1", "3", "--json"]);
    assert_eq!(
        (d["a"]["run"].as_i64(), d["b"]["run"].as_i64()),
        (Some(1), Some(3))
    );
    assert_eq!(
        d["overrides"],
        json!([{"key": "lr", "a": null, "b": "0.3"}, {"key": "steps", "a": null, "b": "20"}])
    );
    let params: Vec<&str> = d["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["param"].as_str().unwrap())
        .collect();
    assert_eq!(
        params,
        [
            "eval.env.LR",
            "eval.env.STEPS",
            "train.env.LR",
            "train.env.STEPS"
        ]
    );
    let m = d["metrics"].as_array().unwrap();
    assert_eq!(m.len(), 2, "{d}");
    assert_eq!(
        (&m[0]["metric"], &m[0]["a"], &m[0]["b"]),
        (&json!("eval.psnr"), &json!(31.0), &json!(33.0))
    );
    // One subtraction of two doubles near 0.2: off by at most an ulp of 0.2 (2.8e-17).
    let change = |i: usize, field: &str| m[i][field].as_f64().unwrap();
    assert!((change(0, "change") - 2.0).abs() < 1e-12, "{d}");
    assert!((change(0, "change_pct") - 200.0 / 31.0).abs() < 1e-9, "{d}");
    assert!((change(1, "change") - 0.1).abs() < 1e-12, "{d}");
    let keyed: Vec<&str> = d["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["node"].as_str().unwrap())
        .collect();
    assert_eq!(keyed, ["eval", "train"]);

    // The text form names both runs and shows each change with its percentage.
    let o = p.run(&["exp", "show", "p.yaml", "--diff", "1", "3"]);
    let text = stdout(&o);
    assert!(text.starts_with("run 1 (ok) vs run 3 (ok)\n"), "{text}");
    let psnr = text
        .lines()
        .find(|l| l.contains("eval.psnr"))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        psnr.split_whitespace().collect::<Vec<_>>(),
        ["metric", "eval.psnr", "31", "33", "+2", "(+6.5%)"]
    );
    // The whole of it, its keys named by order of appearance.
    let mut shown = text.clone();
    let mut keys: Vec<String> = d["keys"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|k| [&k["a"], &k["b"]])
        .map(|k| k.as_str().unwrap().chars().take(12).collect())
        .collect();
    keys.sort_by_key(|k| shown.find(k.as_str()));
    for (i, k) in keys.iter().enumerate() {
        shown = shown.replace(k, &format!("{:<12}", format!("<key {}>", i + 1)));
    }
    insta::assert_snapshot!("diff_1_3", shown);
    // A alone: against the latest run (4, the first setting again: nothing differs).
    let d = json_of(&p, &["exp", "show", "p.yaml", "--diff", "1", "--json"]);
    assert_eq!(d["b"]["run"], 4);
    for section in ["overrides", "params", "metrics", "keys"] {
        assert_eq!(d[section], json!([]), "{section}: {d}");
    }
    let o = p.run(&["exp", "show", "p.yaml", "--diff", "1"]);
    assert!(stdout(&o).contains("no overrides, parameters, metrics or keys differ"));
    // CSV: one line per difference.
    let o = p.run(&["exp", "show", "p.yaml", "--diff", "2", "3", "--csv"]);
    let csv = stdout(&o);
    assert_eq!(
        csv.lines().collect::<Vec<_>>()[..3],
        [
            "what,name,run 2,run 3,change",
            "override,steps,,20,",
            "param,eval.env.STEPS,10,20,"
        ],
        "{csv}"
    );
    assert!(csv.contains("\nmetric,eval.ssim,0.1,0.2,0.1\n"), "{csv}");

    // Bad run ids are usage errors that say which runs there are.
    let o = p.run(&["exp", "show", "p.yaml", "--diff", "4"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--diff 3 4"), "{}", stderr(&o));
    let o = p.run(&["exp", "show", "p.yaml", "--diff", "9", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no run 9") && stderr(&o).contains("1, 2, 3, 4"));
}

#[test]
fn matrix_points_are_rows_and_a_failed_point_says_so() {
    let p = Project::new();
    p.write(
        "m.yaml",
        r#"
params:
  lr: 0.1
matrix:
  seed: [1, 2, 3]
stages:
  data: {kind: command, params: {cmd: "echo d > d"}}
  train:
    kind: command
    deps: [data]
    params: {cmd: "echo $LR $SEED > m", env: {LR: "${lr}", SEED: "${seed}"}}
  eval:
    kind: command
    deps: [train]
    params:
      cmd: >-
        test "$SEED" != 3 &&
        awk -v lr="$LR" -v s="$SEED" 'BEGIN{printf "{\"psnr\": %.2f}", 30 + lr * 10 + s}' > metrics.json
      env: {LR: "${lr}", SEED: "${seed}"}
"#,
    );
    let o = p.run(&["run", "m.yaml", "--json", "--keep-going"]);
    assert_eq!(summary(&o)["failed"], 1, "{}", stderr(&o));
    let o = p.run(&["run", "m.yaml", "--json", "--keep-going", "--set", "lr=0.2"]);
    assert_eq!(summary(&o)["failed"], 1, "{}", stderr(&o));
    let doc = json_of(&p, &["exp", "show", "m.yaml", "--json"]);
    assert_eq!(doc["columns"]["point"], json!(["seed"]));
    let rows = doc["rows"].as_array().unwrap();
    let seen: Vec<(i64, i64, &str, Option<f64>)> = rows
        .iter()
        .map(|r| {
            (
                r["run"].as_i64().unwrap(),
                r["point"]["seed"].as_i64().unwrap(),
                r["status"].as_str().unwrap(),
                r["metrics"]["eval.psnr"].as_f64(),
            )
        })
        .collect();
    // A point of the failed runs whose nodes all completed is ok; the failed one says so.
    assert_eq!(
        seen,
        [
            (1, 1, "ok", Some(32.0)),
            (1, 2, "ok", Some(33.0)),
            (1, 3, "failed", None),
            (2, 1, "ok", Some(33.0)),
            (2, 2, "ok", Some(34.0)),
            (2, 3, "failed", None),
        ]
    );
    // Each row holds its own point's nodes and the shared `data`.
    assert_eq!(
        rows[0]["nodes"],
        json!({"data": "data", "train": "train[seed=1]", "eval": "eval[seed=1]"})
    );
    assert_eq!(rows[0]["run_status"], "failed");
    // The parameters that differ: the point's (seed) and the override's (lr).
    assert_eq!(
        doc["columns"]["params"],
        json!([
            "eval.env.LR",
            "eval.env.SEED",
            "train.env.LR",
            "train.env.SEED"
        ])
    );
}

#[test]
fn runs_recorded_before_schema_6_show_their_overrides_from_argv() {
    let p = Project::new();
    three_runs_and_a_cached_one(&p);
    // What a schema-5 registry migrated to 6 holds for its runs: no structured settings.
    let db = rusqlite::Connection::open(p.cache().join("registry.sqlite")).unwrap();
    db.execute_batch("DELETE FROM run_overrides; UPDATE runs SET executor = NULL;")
        .unwrap();
    drop(db);
    let doc = json_of(&p, &["exp", "show", "p.yaml", "--json"]);
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows[2]["overrides"], json!({"lr": "0.3", "steps": "20"}));
    assert!(rows.iter().all(|r| r["settings_source"] == "argv"), "{doc}");
    assert!(rows.iter().all(|r| r["executor"] == "local"));
}

#[test]
fn a_pipeline_without_runs_says_how_to_get_them() {
    let p = Project::new();
    p.write("p.yaml", PIPELINE);
    let o = p.run(&["exp", "show", "p.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("no runs of"), "{}", stdout(&o));
    assert!(!p.cache().exists(), "showing creates no cache");
    let doc = json_of(&p, &["exp", "show", "p.yaml", "--json"]);
    assert_eq!(doc["rows"], json!([]));
    let o = p.run(&["exp", "show", "p.yaml", "--diff", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no runs yet"), "{}", stderr(&o));
    let o = p.run(&["exp", "show", "missing.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing.yaml"), "{}", stderr(&o));
}
