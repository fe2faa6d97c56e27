//! The head/worker split: `ugc-pipe` schedules without libtorch (so a cached re-run starts
//! in milliseconds); `ugc-pipe-worker` links it and runs stages and model verbs.

use crate::common::*;

fn needed_libs(bin: &str) -> String {
    let o = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .expect("ldd");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_head_does_not_load_libtorch_and_the_worker_does() {
    let head = needed_libs(env!("CARGO_BIN_EXE_ugc-pipe"));
    assert!(
        !head.contains("libtorch") && !head.contains("libc10"),
        "{head}"
    );
    let worker = needed_libs(env!("CARGO_BIN_EXE_ugc-pipe-worker"));
    assert!(worker.contains("libtorch_cpu"), "{worker}");
    // torch_cuda stays linked past --as-needed, so CUDA works where a GPU exists.
    assert!(worker.contains("libtorch_cuda"), "{worker}");
}

#[test]
fn the_worker_refuses_pipeline_verbs() {
    let p = Project::new();
    p.write(
        "p.yaml",
        "stages:\n  a: {kind: command, params: {cmd: \"true\"}}\n",
    );
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ugc-pipe-worker"))
        .args(["run", "p.yaml"])
        .current_dir(p.dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("use `ugc-pipe`"), "{}", stderr(&o));
}
