//! The shipped quickstart pipeline, end to end through the CLI at a reduced scale:
//! every stage kind of the UGC chain runs, the report is written, and a re-run executes
//! nothing.

use crate::common::*;

#[test]
fn quickstart_runs_every_stage_and_reruns_nothing() {
    let p = Project::new();
    let pipeline =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/quickstart.yaml");
    let pipeline = pipeline.to_str().unwrap();
    let small = [
        "--set",
        "n=40",
        "--set",
        "steps=6",
        "--set",
        "eval_steps=6",
        "--set",
        "population=8",
        "--set",
        "generations=2",
    ];
    let mut args = vec!["run", pipeline, "--json", "-j", "2", "--cache-dir"];
    let cache = p.cache();
    args.push(cache.to_str().unwrap());
    args.extend_from_slice(&small);
    let o = p.run(&args);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let s = summary(&o);
    assert_eq!(s["failed"], 0, "{s}");
    let executed = s["executed"].as_u64().unwrap();
    assert!(executed >= 19, "{s}");

    let o = p.run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&o)["executed"], 0);

    // The report and the evaluations are there.
    let mut show = vec![
        "show",
        pipeline,
        "--json",
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    show.extend_from_slice(&small);
    let o = p.run(&show);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let ugc = rows
        .iter()
        .find(|r| r["node"] == "eval_ugc")
        .expect("eval_ugc row");
    for m in ["miou", "psnr", "ssim", "seg_fd", "macs", "params"] {
        assert!(ugc["metrics"][m].is_number(), "{m} missing: {ugc}");
    }
    let report = rows
        .iter()
        .find(|r| r["node"] == "report")
        .expect("report row");
    let out = std::path::PathBuf::from(report["output"].as_str().unwrap());
    for f in [
        "report.md",
        "tables/models.md",
        "tables/models.csv",
        "tradeoff.png",
        "tradeoff.svg",
        "grid.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing in {}", out.display());
    }
}

/// Issue 12's reproduction: two bad values given with `--set` are both refused, with their
/// flags, before any stage runs, by `run`, `run --dry-run` and `status`.
#[test]
fn bad_set_values_are_all_refused_before_any_stage_runs() {
    let p = Project::new();
    let pipeline =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/quickstart.yaml");
    let pipeline = pipeline.to_str().unwrap();
    let bad = [
        "--set",
        "distill.batch_size=0",
        "--set",
        "search.population=0",
    ];
    for verb in [&["run"][..], &["run", "--dry-run"][..], &["status"][..]] {
        let mut args = verb.to_vec();
        args.push(pipeline);
        args.extend_from_slice(&bad);
        let o = p.run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("2 problems"), "{err}");
        for flag in ["--set distill.batch_size=0", "--set search.population=0"] {
            assert!(
                err.lines().any(|l| l.trim_start().starts_with(flag)),
                "{flag} not named: {err}"
            );
        }
    }
    assert_eq!(p.records(), 0, "no stage may run");
}
