//! Outputs by name (`run`'s last lines, `show`, `ugc-pipe path`), the one rule that finds
//! the cache for every verb, and the installed prefix (`scripts/install.sh`) (issue 15
//! items 3 and 6). All stages are `command` stages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

/// Two matrix points; `score[r=2]` fails, so with `--keep-going` one branch is computed
/// and one is not.
const PIPELINE: &str = r#"
params: {r: 1}
matrix:
  r: [1, 2]
stages:
  data: {kind: command, params: {cmd: "echo d > d.txt", outputs: [d.txt]}}
  score:
    kind: command
    deps: [data]
    params: {cmd: "test ${r} = 1 && echo '{\"psnr\": 31.5}' > metrics.json"}
  note:
    kind: command
    deps: [score]
    params: {cmd: "echo n > n.txt"}
"#;

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(o), stderr(o)))
}

/// The project after `run --keep-going`: `data`, `score[r=1]`, `note[r=1]` computed.
fn half_computed() -> (Project, Output) {
    let p = Project::new();
    p.write("p.yaml", PIPELINE);
    let o = p.run(&["run", "p.yaml", "--keep-going", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    (p, o)
}

#[test]
fn run_ends_by_saying_where_its_results_are() {
    let (p, o) = half_computed();
    // No report or export: the results are the sinks, of which one was computed.
    let s = summary(&o);
    let outputs = s["outputs"].as_array().expect("outputs in the summary");
    assert_eq!(outputs.len(), 1, "{s}");
    assert_eq!(outputs[0]["node"], "note[r=1]", "{s}");
    assert_eq!(outputs[0]["kind"], "command", "{s}");
    // Relative to the current directory (the project's), where `n.txt` is.
    let out = outputs[0]["output"].as_str().unwrap();
    assert!(out.starts_with("cache/views/"), "{out}");
    assert!(p.path(out).join("n.txt").is_file(), "{out}");

    // Text mode: after the summary line, one line per result; a cached run says it too.
    let o = p.run(&["run", "p.yaml", "--keep-going"]);
    let err = stderr(&o);
    let summary_at = err.find("1 failed").unwrap_or_else(|| panic!("{err}"));
    let line = format!("note[r=1] (command): {out}");
    let line_at = err
        .find(&line)
        .unwrap_or_else(|| panic!("no `{line}` in:\n{err}"));
    assert!(summary_at < line_at, "{err}");
}

#[test]
fn show_lists_every_node_with_its_output_or_its_status() {
    let (p, _) = half_computed();
    let o = p.run(&["show", "p.yaml", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    // `rows` is as before: the nodes with metrics, their output absolute.
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["node"], "score[r=1]");
    assert_eq!(rows[0]["metrics"]["psnr"], 31.5);
    assert!(Path::new(rows[0]["output"].as_str().unwrap()).is_absolute());
    // `nodes`: every node in plan order, commands without metrics too.
    let nodes = v["nodes"].as_array().unwrap();
    let got: Vec<(&str, &str, bool)> = nodes
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap(),
                n["status"].as_str().unwrap(),
                n["output"].is_string(),
            )
        })
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            ("data", "cached", true),
            ("note[r=1]", "cached", true),
            ("note[r=2]", "missing", false),
            ("score[r=1]", "cached", true),
            ("score[r=2]", "missing", false),
        ],
        "{v}"
    );
    for n in nodes.iter().filter(|n| n["output"].is_string()) {
        assert!(p.path(n["output"].as_str().unwrap()).is_dir(), "{n}");
    }

    // The text: the node table, then the metrics; keys named by their node, since they
    // depend on the machine's environment.
    let o = p.run(&["show", "p.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut text = stdout(&o);
    for n in nodes {
        if let Some(key) = n["key"].as_str() {
            text = text.replace(key, &format!("<key of {}>", n["node"].as_str().unwrap()));
        }
    }
    insta::assert_snapshot!("show_text", text);
}

#[test]
fn show_before_any_run_lists_the_nodes_and_says_what_to_do() {
    let p = Project::new();
    p.write("p.yaml", PIPELINE);
    let o = p.run(&["show", "p.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    insta::assert_snapshot!("show_text_nothing_run", stdout(&o));
}

#[test]
fn path_prints_one_nodes_folder_for_scripts() {
    let (p, _) = half_computed();
    let o = p.run(&["path", "p.yaml", "data"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    // One line, nothing else, absolute: `cd $(ugc-pipe path p.yaml data)` works anywhere.
    assert_eq!(out.lines().count(), 1, "{out}");
    let dir = PathBuf::from(out.trim_end());
    assert!(dir.is_absolute(), "{out}");
    assert_eq!(std::fs::read_to_string(dir.join("d.txt")).unwrap(), "d\n");
    let o = p.run(&["path", "p.yaml", "note[r=1]"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(PathBuf::from(stdout(&o).trim_end()).join("n.txt").is_file());
    // The same folder from another directory, naming the pipeline from there.
    let sub = p.path("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let o = p
        .cmd(&["path", "../p.yaml", "data"])
        .current_dir(&sub)
        .output()
        .unwrap();
    assert_eq!(PathBuf::from(stdout(&o).trim_end()), dir, "{}", stderr(&o));

    // Not computed: exit 1, saying which state it is in and how to get it.
    let o = p.run(&["path", "p.yaml", "score[r=2]"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("`score[r=2]` is not computed yet (missing: never run)")
            && err.contains("ugc-pipe run p.yaml"),
        "{err}"
    );
    // A stage of several nodes names them; an unknown name gets the close ones; exit 2.
    let o = p.run(&["path", "p.yaml", "score"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("stage `score` has 2 nodes; name one: score[r=1], score[r=2]"),
        "{}",
        stderr(&o)
    );
    let o = p.run(&["path", "p.yaml", "dta"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no stage or node `dta`") && stderr(&o).contains("`data`"),
        "{}",
        stderr(&o)
    );
}

/// `ugc-pipe ARGS` in `dir` with no `UGC_PIPE_CACHE`: the default rule alone.
fn bare(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ugc-pipe"))
        .args(args)
        .current_dir(dir)
        .env_remove("UGC_PIPE_CACHE")
        .env_remove("RUST_LOG")
        .output()
        .expect("run ugc-pipe")
}

fn run_ids(o: &Output) -> Vec<(i64, String)> {
    json(o)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_i64().unwrap(),
                r["pipeline"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn every_verb_finds_the_same_cache_by_one_rule() {
    let p = Project::new();
    let one = "stages:\n  a: {kind: command, params: {cmd: \"echo a > a.txt\"}}\n";
    p.write("pipelines/p.yaml", one);
    p.write("pipelines/q.yaml", &one.replace("echo a", "echo q"));
    let root = p.dir.path();
    // A pipeline in `pipelines/`: its project's `cache/`, from wherever it is run.
    for (dir, file) in [
        (root.to_path_buf(), "pipelines/p.yaml"),
        (p.path("pipelines"), "q.yaml"),
    ] {
        let o = bare(&dir, &["run", file, "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert!(p.path("cache/records").is_dir());
    assert!(!p.path("pipelines/cache").exists());

    // The cache verbs without a pipeline: the nearest `cache/` here or above, so the same
    // one from the project's root, its `pipelines/` and a folder below.
    let deep = p.path("pipelines/a/b");
    std::fs::create_dir_all(&deep).unwrap();
    for dir in [root.to_path_buf(), p.path("pipelines"), deep.clone()] {
        let o = bare(&dir, &["runs", "--json"]);
        assert!(o.status.success(), "{}: {}", dir.display(), stderr(&o));
        assert_eq!(run_ids(&o).len(), 2, "{}", dir.display());
        for verb in [&["gc"][..], &["verify"], &["unlock"]] {
            let o = bare(&dir, verb);
            assert!(
                o.status.success(),
                "{verb:?} in {}: {}",
                dir.display(),
                stderr(&o)
            );
        }
    }
    // Found above the current directory: it says which.
    let o = bare(&deep, &["runs"]);
    let cache = std::fs::canonicalize(p.cache()).unwrap();
    assert!(
        stderr(&o).contains(&format!("cache {}", cache.display())),
        "{}",
        stderr(&o)
    );

    // Given a pipeline, from anywhere: its project's cache, and `runs` lists its runs only.
    let elsewhere = tempfile::tempdir().unwrap();
    let pq = p.path("pipelines/q.yaml");
    let o = bare(elsewhere.path(), &["runs", pq.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids = run_ids(&o);
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(ids[0].1.ends_with("pipelines/q.yaml"), "{ids:?}");
    for verb in ["gc", "verify", "unlock"] {
        let o = bare(elsewhere.path(), &[verb, pq.to_str().unwrap()]);
        assert!(o.status.success(), "{verb}: {}", stderr(&o));
    }
    assert!(!elsewhere.path().join("cache").exists());

    // No cache anywhere: a usage error that says how to name one.
    let o = bare(elsewhere.path(), &["runs"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("no cache found") && stderr(&o).contains("--cache-dir"),
        "{}",
        stderr(&o)
    );
    let o = bare(elsewhere.path(), &["gc", "no-such.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("pipeline no-such.yaml: no such file"),
        "{}",
        stderr(&o)
    );

    // `--cache-dir` beats UGC_PIPE_CACHE, which beats the pipeline and the search.
    let o = bare(
        root,
        &["runs", "--cache-dir", "nowhere", pq.to_str().unwrap()],
    );
    assert!(stderr(&o).contains("no cache at nowhere"), "{}", stderr(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_ugc-pipe"))
        .args(["runs", pq.to_str().unwrap()])
        .current_dir(root)
        .env("UGC_PIPE_CACHE", "from-env")
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("no cache at from-env"),
        "{}",
        stderr(&o)
    );
}

/// The folder of the built binaries (`target/debug`), which the installer copies.
fn built_bins() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ugc-pipe"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn an_installed_prefix_runs_from_any_folder_with_libtorch_of_its_own() {
    // In the target folder, so that `--link` can hard-link the libraries (the same
    // filesystem as the build's virtualenv): gigabytes of CUDA libraries are not copied.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let prefix = tmp.path().join("prefix");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh");
    let o = Command::new(&script)
        .args(["--prefix", prefix.to_str().unwrap(), "--from"])
        .arg(built_bins())
        .arg("--link")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("libraries"), "{}", stdout(&o));

    // Moved, as another node sees a shared prefix under another mount point.
    let moved = tmp.path().join("elsewhere");
    std::fs::rename(&prefix, &moved).unwrap();
    let head = moved.join("bin/ugc-pipe");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // Nothing exported: no LD_LIBRARY_PATH, no variable of the build.
    let bare = |args: &[&str], debug: bool| {
        let mut c = Command::new(&head);
        c.args(args)
            .current_dir(&work)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LD_LIBRARY_PATH", "");
        if debug {
            c.env("LD_DEBUG", "libs");
        }
        c.output().unwrap()
    };
    let o = bare(&["--version"], false);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        format!("ugc-pipe {}", env!("CARGO_PKG_VERSION"))
    );

    // A worker verb: it loads libtorch, and every torch or CUDA library it loads is the
    // prefix's (the loader's `calling init:` lines name each library it initialises).
    let o = bare(
        &[
            "synth",
            "--task",
            "edges2photo",
            "--n",
            "2",
            "--size",
            "32",
            "--out",
            "ds",
        ],
        true,
    );
    let err = stderr(&o);
    assert!(
        o.status.success(),
        "{}",
        err.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(work.join("ds/dataset.json").is_file());
    let inits: Vec<&str> = err
        .lines()
        .filter_map(|l| l.split_once("calling init: ").map(|(_, lib)| lib.trim()))
        .collect();
    let torch: Vec<&&str> = inits
        .iter()
        .filter(|l| l.contains("libtorch") || l.contains("libc10") || l.contains("nvidia"))
        .collect();
    assert!(
        torch.iter().any(|l| l.ends_with("libtorch_cpu.so")),
        "libtorch_cpu not loaded: {inits:?}"
    );
    for lib in &torch {
        assert!(
            lib.starts_with(moved.to_str().unwrap()),
            "{lib} is not the prefix's"
        );
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv");
    let venv_real = std::fs::canonicalize(&venv).unwrap_or(venv.clone());
    for lib in &inits {
        assert!(
            !lib.starts_with(venv.to_str().unwrap())
                && !lib.starts_with(venv_real.to_str().unwrap()),
            "{lib} comes from the build's virtualenv"
        );
    }
}
