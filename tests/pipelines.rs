//! Every shipped pipeline loads and plans (`run --dry-run`), with or without its data.

mod common;

use common::*;

#[test]
fn every_shipped_pipeline_plans() {
    let p = Project::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let o = p.run(&["run", path.to_str().unwrap(), "--dry-run", "--json"]);
        assert!(o.status.success(), "{}: {}", path.display(), stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert!(
            !v["plan"].as_array().unwrap().is_empty(),
            "{}",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 7, "only {seen} pipelines found");
}
