use serde_json::json;
use ugc_data::{SplitManifest, SplitStage, SynthStage};
use ugc_engine::testing::{run_quick as run, with_defaults};
use ugc_engine::{KindSchema, StageError, StageInput, StageKind};

fn schema(name: &str) -> KindSchema {
    let name = name.trim_end_matches(".yaml");
    ugc_kinds::Kind::from_name(name)
        .unwrap_or_else(|| panic!("no kind `{name}`"))
        .schema()
}

#[test]
fn schemas_parse_and_document_every_parameter() {
    for (file, kind) in [("synth.yaml", "synth"), ("split.yaml", "split")] {
        let s = schema(file);
        assert_eq!(s.kind, kind);
        assert!(
            s.params.values().all(|p| !p.doc.is_empty()),
            "{file}: undocumented param"
        );
    }
    assert!(
        schema("split.yaml")
            .external_inputs
            .contains(&"dataset.root".to_string())
    );
}

#[test]
fn synth_then_split_through_the_stage_contract() {
    let synth = SynthStage::new(schema("synth.yaml"));
    let split = SplitStage::new(schema("split.yaml"));
    let sdir = tempfile::tempdir().unwrap();
    let p = with_defaults(
        synth.schema(),
        json!({"task": "labels2photo", "n": 20, "n_test": 4, "size": 16}),
    );
    run(&synth, p, &[], sdir.path()).unwrap();
    let inputs = [StageInput {
        name: "data".into(),
        kind: "synth".into(),
        dir: sdir.path().to_path_buf(),
        node: "data".into(),
        point: Default::default(),
    }];
    let out = tempfile::tempdir().unwrap();
    let p = with_defaults(split.schema(), json!({"label_ratio": 0.5}));
    run(&split, p, &inputs, out.path()).unwrap();
    let m = SplitManifest::load(out.path()).unwrap();
    assert_eq!(
        (
            m.counts.holdout,
            m.counts.labeled,
            m.counts.unlabeled,
            m.counts.test
        ),
        (2, 9, 9, 4)
    );
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["labeled"], 9);
}

#[test]
fn split_stage_config_errors_name_the_parameter() {
    let split = SplitStage::new(schema("split.yaml"));
    let out = tempfile::tempdir().unwrap();
    let e = run(
        &split,
        with_defaults(split.schema(), json!({})),
        &[],
        out.path(),
    )
    .unwrap_err();
    assert!(matches!(e, StageError::Config(_)));
    assert!(e.to_string().contains("dataset.root"), "{e}");

    let d = tempfile::tempdir().unwrap();
    let p = with_defaults(split.schema(), json!({"dataset": {"root": d.path()}}));
    let e = run(&split, p, &[], out.path()).unwrap_err().to_string();
    assert!(e.contains("dataset.format"), "{e}");

    let p = with_defaults(
        split.schema(),
        json!({"dataset": {"root": d.path(), "fromat": "aligned"}}),
    );
    let e = run(&split, p, &[], out.path()).unwrap_err().to_string();
    assert!(e.contains("fromat"), "{e}");

    // Out-of-range values never reach the stage: planning refuses them.
    ugc_kinds::testing::assert_refused(
        ugc_kinds::Kind::Split,
        json!({"label_ratio": 0}),
        "label_ratio",
    );

    let p = with_defaults(
        split.schema(),
        json!({"dataset": {"root": d.path().join("gone"), "format": "aligned"}}),
    );
    let e = run(&split, p, &[], out.path()).unwrap_err().to_string();
    assert!(e.contains("gone") && e.contains("dataset.root"), "{e}");
}

#[test]
fn a_split_commits_the_same_bytes_wherever_its_synth_input_lies() {
    let synth = SynthStage::new(schema("synth.yaml"));
    let split = SplitStage::new(schema("split.yaml"));
    let made = tempfile::tempdir().unwrap();
    let p = with_defaults(
        synth.schema(),
        json!({"task": "labels2photo", "n": 8, "n_test": 2, "size": 16}),
    );
    run(&synth, p, &[], made.path()).unwrap();
    // A bad file (skipped, so the manifest names it) in two copies at different places,
    // as when a cache is moved.
    let roots = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let outs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for (root, out) in roots.iter().zip(&outs) {
        let data = root.path().join("cache/objects/synth-output");
        ugc_engine::testing::copy_tree(made.path(), &data);
        std::fs::remove_file(
            data.join("gtFine/train/synth/synth_000003_000019_gtFine_labelIds.png"),
        )
        .unwrap();
        std::fs::write(
            data.join("leftImg8bit/train/synth/synth_000005_000019_leftImg8bit.png"),
            b"not a png",
        )
        .unwrap();
        let inputs = [StageInput {
            name: "data".into(),
            kind: "synth".into(),
            dir: data,
            node: "data".into(),
            point: Default::default(),
        }];
        let p = with_defaults(
            split.schema(),
            json!({"label_ratio": 0.5, "skip_bad": true}),
        );
        run(&split, p, &inputs, out.path()).unwrap();
        let m = SplitManifest::load(out.path()).unwrap();
        assert_eq!(m.counts.skipped, 2);
        let text = std::fs::read_to_string(out.path().join("manifest.json")).unwrap();
        assert!(
            !text.contains(&root.path().display().to_string()),
            "the manifest names the input's location:\n{text}"
        );
    }
    ugc_engine::testing::assert_same_tree(outs[0].path(), outs[1].path());
}
