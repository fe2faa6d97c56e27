use std::io::Write as _;
use std::path::Path;

use serde_json::json;

use super::testutil::{FILE, err, kinds, load, load_on, load_with};
use super::*;

const GOOD: &str = r#"params:
  task: labels2photo
  label_ratio: 0.25
  model: {ngf: 8, name: "g"}
stages:
  data:
    kind: synth
    doc: make a dataset
    params: {task: "${task}", n: 16}
  split:
    kind: split
    deps: [data]
    params: {label_ratio: "${label_ratio}", seed: 0}
"#;

#[test]
fn loads_a_valid_pipeline() {
    let p = load(GOOD).unwrap();
    assert_eq!(p.path, Path::new(FILE));
    assert_eq!(p.dir, Path::new("/pipes"));
    assert_eq!(p.params["label_ratio"], json!(0.25));
    let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["data", "split"]);
    let split = p.stage("split").unwrap();
    assert_eq!(split.deps, ["data"]);
    assert_eq!(
        split.params,
        json!({"label_ratio": "${label_ratio}", "seed": 0})
    );
    assert_eq!((split.pos.line, split.pos.col), (10, 3));
    assert_eq!(p.stage("data").unwrap().doc, "make a dataset");
}

#[test]
fn stage_order_follows_the_file_not_the_alphabet() {
    let p = load("stages:\n  zz: {kind: synth, params: {task: edges2photo}}\n  aa: {kind: synth, params: {task: edges2photo}}\n").unwrap();
    assert_eq!(p.stages[0].name, "zz");
    assert_eq!(p.stages[1].name, "aa");
}

#[test]
fn syntax_error_has_position() {
    let e = err("stages:\n  data:\n    kind: [synth\n");
    assert!(e.starts_with(&format!("{FILE}:")), "{e}");
    assert!(e.contains("YAML syntax"), "{e}");
    // The unclosed flow sequence is reported on line 3 or at the end of input (line 4).
    let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
    assert!((3..=4).contains(&line), "{e}");

    let e = err("stages:\n  data: {kind: synth\n  x: 1\n");
    assert!(e.contains("YAML syntax"), "{e}");
}

#[test]
fn unknown_top_level_key_has_position() {
    let e = err("params: {}\nstagez:\n  a: {kind: synth}\n");
    assert_eq!(
        e,
        format!(
            "{FILE}:2:1: unknown key `stagez` in the pipeline; did you mean `stages`? (valid: params, matrix, stages, executor)"
        )
    );
}

#[test]
fn missing_stages_is_an_error() {
    let e = err("params: {a: 1}\n");
    assert_eq!(
        e,
        format!("{FILE}:1:1: the pipeline is missing the required key `stages`")
    );
}

#[test]
fn unknown_stage_key_has_position() {
    let e = err("stages:\n  data:\n    kind: synth\n    dep: [x]\n");
    assert_eq!(
        e,
        format!(
            "{FILE}:4:5: unknown key `dep` in stage `data`; did you mean `deps`? (valid: kind, deps, params, resources, doc, gather)"
        )
    );
}

#[test]
fn unknown_param_lists_the_valid_ones() {
    let e = err(
        "stages:\n  data:\n    kind: synth\n    params:\n      task: edges2photo\n      nn: 3\n",
    );
    assert_eq!(
        e,
        format!(
            "{FILE}:6:7: stage `data` has no parameter `nn`; did you mean `n`? (valid: log_every, n, size, task)"
        )
    );
}

#[test]
fn missing_required_param_points_at_the_stage() {
    let e = err("stages:\n  data:\n    kind: synth\n");
    assert_eq!(
        e,
        format!("{FILE}:2:3: stage `data` is missing the required parameter `task`")
    );
}

#[test]
fn type_error_says_expected_and_got() {
    let e = err("stages:\n  data:\n    kind: synth\n    params: {task: edges2photo, n: many}\n");
    assert_eq!(
        e,
        format!("{FILE}:4:36: stage `data` parameter `n`: expected int, got string \"many\"")
    );
    // A float where an int is expected.
    let e = err("stages:\n  data:\n    kind: synth\n    params: {task: edges2photo, n: 1.5}\n");
    assert!(e.ends_with("expected int, got float 1.5"), "{e}");
    // A type error through a reference points at the reference.
    let e = err(
        "params: {n: abc}\nstages:\n  data:\n    kind: synth\n    params:\n      task: edges2photo\n      n: \"${n}\"\n",
    );
    assert_eq!(
        e,
        format!("{FILE}:7:10: stage `data` parameter `n`: expected int, got string \"abc\"")
    );
}

#[test]
fn float_params_widen_ints() {
    let p = load("stages:\n  s:\n    kind: split\n    params: {label_ratio: 1}\n").unwrap();
    let dag = crate::graph::Dag::build(&p, &kinds()).unwrap();
    let n = dag.node(dag.find("s")[0]);
    assert!(n.params["label_ratio"].is_f64());
    assert_eq!(n.params["label_ratio"], json!(1.0));
}

#[test]
fn enum_value_not_allowed() {
    let e = err("stages:\n  data:\n    kind: synth\n    params: {task: horses}\n");
    assert_eq!(
        e,
        format!(
            "{FILE}:4:20: stage `data` parameter `task`: value `horses` is not allowed (allowed: labels2photo, edges2photo)"
        )
    );
}

#[test]
fn unknown_kind_lists_known_kinds() {
    let e = err("stages:\n  data:\n    kind: synthh\n");
    assert_eq!(
        e,
        format!(
            "{FILE}:3:11: unknown stage kind `synthh`; did you mean `synth`? (known: command, dp, fit, ranged, split, synth, timed, train)"
        )
    );
}

#[test]
fn missing_dep_has_position() {
    let e = err(
        "stages:\n  data: {kind: synth, params: {task: edges2photo}}\n  split:\n    kind: split\n    deps: [data, dta]\n    params: {label_ratio: 0.5}\n",
    );
    assert_eq!(
        e,
        format!(
            "{FILE}:5:18: stage `split` depends on `dta`, which is not a stage of this pipeline; did you mean `data`?"
        )
    );
}

#[test]
fn duplicate_stage_names_are_refused() {
    let e = err(
        "stages:\n  data: {kind: synth, params: {task: edges2photo}}\n  data: {kind: synth, params: {task: labels2photo}}\n",
    );
    assert_eq!(
        e,
        format!("{FILE}:3:3: duplicate stage name `data` (first defined at {FILE}:2:3)")
    );
}

#[test]
fn bad_stage_name_is_refused() {
    let e = err("stages:\n  Data: {kind: synth, params: {task: edges2photo}}\n");
    assert_eq!(
        e,
        format!("{FILE}:2:3: stage name `Data` must match [a-z0-9_-]+")
    );
}

#[test]
fn cycle_names_every_stage_in_order() {
    let text = "stages:
  a: {kind: split, deps: [c], params: {label_ratio: 0.1}}
  b: {kind: split, deps: [a], params: {label_ratio: 0.1}}
  c: {kind: split, deps: [b], params: {label_ratio: 0.1}}
  d: {kind: split, deps: [a], params: {label_ratio: 0.1}}
";
    assert_eq!(err(text), format!("{FILE}:2:3: cycle: a -> b -> c -> a"));
    let self_loop = "stages:\n  x: {kind: split, deps: [x], params: {label_ratio: 0.1}}\n";
    assert_eq!(err(self_loop), format!("{FILE}:2:3: cycle: x -> x"));
    // Entered from a stage that is not on the cycle itself.
    let tail = "stages:
  z: {kind: split, deps: [q], params: {label_ratio: 0.1}}
  q: {kind: split, deps: [r], params: {label_ratio: 0.1}}
  r: {kind: split, deps: [q], params: {label_ratio: 0.1}}
";
    assert_eq!(err(tail), format!("{FILE}:3:3: cycle: q -> r -> q"));
}

#[test]
fn oversize_file_is_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(
        f,
        "stages:\n  a: {{kind: synth, params: {{task: edges2photo}}}}"
    )
    .unwrap();
    f.write_all(&vec![b'#'; 2048]).unwrap();
    drop(f);
    let opts = LoadOptions {
        max_bytes: 1024,
        ..LoadOptions::default()
    };
    let e = load_pipeline(&path, &kinds(), &opts).unwrap_err();
    assert!(matches!(e, SpecError::TooLarge { max: 1024, .. }), "{e}");
    assert!(e.to_string().contains("big.yaml"), "{e}");
    // The same file is fine under the default limit.
    load_pipeline(&path, &kinds(), &LoadOptions::default()).unwrap();
    let e = load_pipeline_str(&"#".repeat(2000), Path::new(FILE), &kinds(), &opts).unwrap_err();
    assert!(matches!(e, SpecError::TooLarge { .. }), "{e}");
}

#[test]
fn missing_file_names_the_path() {
    let e = load_pipeline(
        Path::new("/nonexistent/p.yaml"),
        &kinds(),
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/p.yaml: "), "{e}");
}

#[test]
fn deep_nesting_is_refused() {
    let deep = format!(
        "params:\n  x: {}{}\nstages:\n  a: {{kind: synth, params: {{task: edges2photo}}}}\n",
        "[".repeat(100),
        "]".repeat(100)
    );
    let e = load(&deep).unwrap_err();
    assert!(matches!(e, SpecError::Limit { .. }), "{e}");
    assert!(e.to_string().starts_with(&format!("{FILE}:2:")), "{e}");
    // Within the limit it loads.
    let ok = deep
        .replace(&"[".repeat(100), &"[".repeat(20))
        .replace(&"]".repeat(100), &"]".repeat(20));
    load(&ok).unwrap();
}

#[test]
fn too_many_nodes_is_refused() {
    let items = vec!["1"; 500].join(", ");
    let text = format!(
        "params:\n  x: [{items}]\nstages:\n  a: {{kind: synth, params: {{task: edges2photo}}}}\n"
    );
    let opts = LoadOptions {
        max_nodes: 100,
        ..LoadOptions::default()
    };
    let e = load_pipeline_str(&text, Path::new(FILE), &kinds(), &opts).unwrap_err();
    assert!(matches!(e, SpecError::Limit { .. }), "{e}");
    load(&text).unwrap();
}

#[test]
fn alias_bomb_is_refused_quickly() {
    let mut text =
        String::from("params:\n  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*l{}", i - 1); 9].join(", ");
        text.push_str(&format!("  l{i}: &l{i} [{refs}]\n"));
    }
    text.push_str("stages:\n  a: {kind: synth, params: {task: edges2photo}}\n");
    let t = std::time::Instant::now();
    let e = load(&text).unwrap_err();
    assert!(matches!(e, SpecError::Limit { .. }), "{e}");
    assert!(e.to_string().starts_with(&format!("{FILE}:")), "{e}");
    assert!(t.elapsed().as_secs() < 5, "took {:?}", t.elapsed());
    // Plain, small aliases are fine.
    let ok = "params:\n  base: &b {ngf: 8}\n  other: *b\nstages:\n  a: {kind: synth, params: {task: edges2photo}}\n";
    assert_eq!(load(ok).unwrap().params["other"], json!({"ngf": 8}));
}

#[test]
fn override_of_a_param() {
    let p = load_with(GOOD, &["label_ratio=0.5", "model.ngf=16"]).unwrap();
    assert_eq!(p.params["label_ratio"], json!(0.5));
    assert_eq!(p.params["model"], json!({"ngf": 16, "name": "g"}));
    let dag = crate::graph::Dag::build(&p, &kinds()).unwrap();
    let split = dag.node(dag.find("split")[0]);
    assert_eq!(split.params["label_ratio"], json!(0.5));
}

#[test]
fn override_of_a_stage_param() {
    let p = load_with(GOOD, &["split.seed=3", "data.task=edges2photo"]).unwrap();
    assert_eq!(p.stage("split").unwrap().params["seed"], json!(3));
    assert_eq!(
        p.stage("data").unwrap().params["task"],
        json!("edges2photo")
    );
    // A nested override starts from the kind's default map.
    let p = load_with(
        "stages:\n  t: {kind: train}\n",
        &["t.opt.beta1=0.9", "t.tag=[a, b]"],
    );
    let e = p.unwrap_err();
    // `tag` is a string param: the list is refused, naming the flag.
    assert_eq!(
        e.to_string(),
        "--set t.tag=[a, b]:1:7: stage `t` parameter `tag`: expected string, got list"
    );
    let p = load_with("stages:\n  t: {kind: train}\n", &["t.opt.beta1=0.9"]).unwrap();
    assert_eq!(
        p.stage("t").unwrap().params["opt"],
        json!({"beta1": 0.9, "beta2": 0.999})
    );
    // A wrongly typed override is refused at load.
    let e = load_with(GOOD, &["split.seed=abc"]).unwrap_err();
    assert!(
        e.to_string().contains("expected int, got string \"abc\""),
        "{e}"
    );
}

#[test]
fn override_with_unknown_path_names_the_flag() {
    let e = load_with(GOOD, &["nosuch.x=1"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--set nosuch.x=1: `nosuch` is neither a param (params: task, label_ratio, model) nor a stage (stages: data, split)"
    );
    let e = load_with(GOOD, &["model.ngff=1"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--set model.ngff=1: `params.model.ngff` does not exist; did you mean `ngf`? (keys there: ngf, name)"
    );
    let e = load_with(GOOD, &["split.sede=1"]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("--set split.sede=1: stage `split` (kind split) has no parameter `sede`; did you mean `seed`?"),
        "{e}"
    );
    let e = load_with(GOOD, &["split=1"]).unwrap_err();
    assert!(
        e.to_string().contains("name a parameter of stage `split`"),
        "{e}"
    );
    let e = load_with(GOOD, &["split.seed=[1, 2"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--set split.seed=[1, 2: value `[1, 2` is not valid YAML: unclosed bracket '['"
    );
    let e = load_with(GOOD, &["seed"]).unwrap_err();
    assert!(e.to_string().contains("expected `path=value`"), "{e}");
}

#[test]
fn override_of_a_matrix_var_is_refused() {
    let text = format!("{GOOD}matrix:\n  label_ratio: [0.1, 0.5]\n");
    let e = load_with(&text, &["label_ratio=0.3"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--set label_ratio=0.3: `label_ratio` is a matrix variable; edit its list under `matrix:` instead"
    );
}

#[test]
fn typed_and_interpolated_refs() {
    let text = r#"params:
  n: 16
  model: {ngf: 8}
  tags: [x, y]
  name: run
stages:
  data:
    kind: synth
    params: {task: labels2photo, n: "${n}", size: "${model.ngf}"}
  c:
    kind: command
    deps: [data]
    params:
      cmd: "train --n ${n} --m ${model} --t ${tags.1} --name ${name}-$${HOME}"
      env: {MODEL: "${model}"}
"#;
    let p = load(text).unwrap();
    let dag = crate::graph::Dag::build(&p, &kinds()).unwrap();
    let data = dag.node(dag.find("data")[0]);
    assert_eq!(data.params["n"], json!(16));
    assert_eq!(data.params["size"], json!(8));
    let c = dag.node(dag.find("c")[0]);
    assert_eq!(
        c.params["cmd"],
        json!("train --n 16 --m {\"ngf\":8} --t y --name run-${HOME}")
    );
    assert_eq!(c.params["env"], json!({"MODEL": {"ngf": 8}}));
}

#[test]
fn unknown_ref_points_at_the_string() {
    let e = err(
        "params: {task: edges2photo}\nstages:\n  data:\n    kind: synth\n    params:\n      task: \"${tsk}\"\n",
    );
    assert_eq!(
        e,
        format!(
            "{FILE}:6:13: unknown reference `${{tsk}}` (did you mean `task`? params are: task)"
        )
    );
    let e = err(
        "params: {m: {ngf: 8}}\nstages:\n  c: {kind: command, params: {cmd: \"x ${m.nfg}\"}}\n",
    );
    assert_eq!(
        e,
        format!(
            "{FILE}:3:36: unknown reference `${{m.nfg}}` (did you mean `m.ngf`? `m` has keys: ngf)"
        )
    );
    let e = err("stages:\n  c: {kind: command, params: {cmd: \"x ${oops\"}}\n");
    assert!(e.contains("unterminated reference"), "{e}");
}

#[test]
fn refs_in_top_level_params_are_refused() {
    let e = err(
        "params:\n  a: 1\n  b: \"${a}\"\nstages:\n  d: {kind: synth, params: {task: edges2photo}}\n",
    );
    assert!(
        e.starts_with(&format!(
            "{FILE}:3:6: `${{a}}`: references are expanded in stage params only"
        )),
        "{e}"
    );
}

#[test]
fn matrix_shape_errors() {
    let base = "stages:\n  d: {kind: synth, params: {task: edges2photo}}\n";
    let e = err(&format!("{base}matrix:\n  x: []\n"));
    assert_eq!(
        e,
        format!("{FILE}:4:6: matrix variable `x` has an empty list of values")
    );
    let e = err(&format!("{base}matrix:\n  x: 3\n"));
    assert_eq!(
        e,
        format!("{FILE}:4:6: matrix variable `x`: expected a list of values, got int")
    );
    let e = err(&format!("{base}matrix:\n  x: [1, 1]\n"));
    assert!(e.contains("lists `1` twice"), "{e}");
}

#[test]
fn relative_paths_resolve_against_the_pipeline_folder() {
    let text = "stages:
  s:
    kind: split
    params: {label_ratio: 0.5, out: ../data/./out}
  c:
    kind: command
    params:
      cmd: run
      inputs: [a.png, /abs/b.png]
      data: {root: images, other: keep}
";
    let p = load_pipeline_str(
        text,
        Path::new("/work/pipes/p.yaml"),
        &kinds(),
        &LoadOptions::default(),
    )
    .unwrap();
    let dag = crate::graph::Dag::build(&p, &kinds()).unwrap();
    let s = dag.node(dag.find("s")[0]);
    assert_eq!(s.params["out"], json!("/work/data/out"));
    let c = dag.node(dag.find("c")[0]);
    assert_eq!(
        c.params["inputs"],
        json!(["/work/pipes/a.png", "/abs/b.png"])
    );
    assert_eq!(
        c.params["data"],
        json!({"root": "/work/pipes/images", "other": "keep"})
    );
    assert_eq!(
        c.external_inputs,
        vec![
            ("inputs.0".to_string(), "/work/pipes/a.png".into()),
            ("inputs.1".to_string(), "/abs/b.png".into()),
            ("data.root".to_string(), "/work/pipes/images".into()),
        ]
    );
    // External inputs and not_in_key paths stay out of the key; the rest stays in.
    assert_eq!(
        c.key_params,
        json!({"cmd": "run", "data": {"other": "keep"}})
    );
}

#[test]
fn relative_pipeline_path_is_made_absolute() {
    let p = load_pipeline_str(
        "stages:\n  d: {kind: synth, params: {task: edges2photo}}\n",
        Path::new("sub/p.yaml"),
        &kinds(),
        &LoadOptions::default(),
    )
    .unwrap();
    assert!(p.path.is_absolute());
    assert_eq!(p.dir, std::env::current_dir().unwrap().join("sub"));
}

#[test]
fn duplicate_keys_inside_params_are_refused() {
    let e = err("stages:\n  d:\n    kind: synth\n    params: {task: edges2photo, n: 1, n: 2}\n");
    assert_eq!(e, format!("{FILE}:4:39: duplicate key `n`"));
}

#[test]
fn every_positioned_error_displays_its_position_first() {
    let e = load("stages:\n  a:\n    kind: nope\n").unwrap_err();
    let pos = e.pos().unwrap();
    assert!(e.to_string().starts_with(&format!("{pos}: ")));
    assert_eq!((pos.line, pos.col), (3, 11));
}

#[test]
fn a_long_chain_of_stages_loads_without_deep_recursion() {
    let n = 5000;
    let mut text = String::from("stages:\n  s0: {kind: synth, params: {task: edges2photo}}\n");
    for i in 1..n {
        text.push_str(&format!(
            "  s{i}: {{kind: split, deps: [s{}], params: {{label_ratio: 0.5}}}}\n",
            i - 1
        ));
    }
    let t = std::time::Instant::now();
    let p = load(&text).unwrap();
    assert_eq!(p.stages.len(), n);
    let dag = crate::graph::Dag::build(&p, &kinds()).unwrap();
    assert_eq!(dag.descendants(dag.find("s0")[0]).len(), n - 1);
    // Closing the chain into a loop names all of it.
    let looped = text.replacen(
        "s0: {kind: synth, params:",
        &format!("s0: {{kind: synth, deps: [s{}], params:", n - 1),
        1,
    );
    let e = load(&looped).unwrap_err();
    let SpecError::Cycle { stages, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(stages.len(), n + 1);
    assert_eq!((stages[0].as_str(), stages[n].as_str()), ("s0", "s0"));
    assert!(t.elapsed().as_secs() < 20, "took {:?}", t.elapsed());
}

#[test]
fn a_huge_matrix_is_refused() {
    let list = (0..30)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "matrix:\n  a: [{list}]\n  b: [{list}]\n  c: [{list}]\nstages:\n  d: {{kind: synth, params: {{task: edges2photo}}}}\n"
    );
    let e = load(&text).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{FILE}:2:3: refused: the matrix has 27000 points, more than the limit of 10000")
    );
}

/// Refused by the point limit from the list's length, before its values are compared.
/// (The duplicate check ran first and compared every pair: 16.9 s for this list.)
#[test]
fn a_100k_value_matrix_list_is_refused_by_the_point_limit() {
    let list = (0..100_000)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "matrix:\n  a: [{list}]\nstages:\n  d: {{kind: synth, params: {{task: edges2photo}}}}\n"
    );
    let e = load(&text).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{FILE}:2:3: refused: the matrix has 100000 points, more than the limit of 10000")
    );
}

#[test]
fn matrix_duplicates_are_found_by_canonical_value() {
    let base = "stages:\n  d: {kind: synth, params: {task: edges2photo}}\nmatrix:\n";
    let e = err(&format!(
        "{base}  x: [{{a: 1, b: [2]}}, 3, {{b: [2], a: 1}}]\n"
    ));
    assert_eq!(
        e,
        format!("{FILE}:4:26: matrix variable `x` lists `{{\"b\":[2],\"a\":1}}` twice")
    );
    // Values that key differently are different points: 1, 1.0 and "1".
    let p = load(&format!("{base}  x: [1, 1.0, \"1\"]\n")).unwrap();
    assert_eq!(p.matrix[0].1, vec![json!(1), json!(1.0), json!("1")]);
}

#[test]
fn overlapping_matrix_variables_name_the_earliest_one() {
    let base = "stages:\n  d: {kind: synth, params: {task: edges2photo}}\nmatrix:\n";
    let cases = [
        (
            "  a: [1]\n  a.b: [2]\n",
            "5:3: matrix variable `a.b` overlaps `a`",
        ),
        (
            "  a.b: [1]\n  a: [2]\n",
            "5:3: matrix variable `a` overlaps `a.b`",
        ),
        (
            "  a.b: [1]\n  a.c: [1]\n  a: [2]\n",
            "6:3: matrix variable `a` overlaps `a.b`",
        ),
        (
            "  x.y: [1]\n  x.y: [2]\n",
            "5:3: matrix variable `x.y` overlaps `x.y`",
        ),
    ];
    for (vars, want) in cases {
        assert_eq!(
            err(&format!("{base}{vars}")),
            format!("{FILE}:{want}"),
            "{vars}"
        );
    }
    // Sharing a prefix of text, or of segments, is not overlapping.
    let p = load(&format!(
        "{base}  a.b: [1]\n  a.bc: [2]\n  a.c.d: [3]\n  ab: [4]\n"
    ))
    .unwrap();
    assert_eq!(p.matrix.len(), 4);
}

/// Lists of one value keep the point count at 1: the variable count has its own limit,
/// checked before the pairwise overlap check (and the DAG's points, which carry every one).
#[test]
fn matrix_variables_are_limited_in_number_and_depth() {
    let stages = "stages:\n  d: {kind: synth, params: {task: edges2photo}}\n";
    let vars = |n: usize| -> String { (0..n).map(|i| format!("  v{i}.x: [{i}]\n")).collect() };
    let p = load(&format!("matrix:\n{}{stages}", vars(MAX_MATRIX_VARS))).unwrap();
    assert_eq!(p.matrix.len(), MAX_MATRIX_VARS);
    let e = err(&format!("matrix:\n{}{stages}", vars(50_000)));
    assert_eq!(
        e,
        format!(
            "{FILE}:1002:3: refused: the matrix has 50000 variables, more than the limit of 1000"
        )
    );
    let deep = vec!["a"; 65].join(".");
    let e = err(&format!("matrix:\n  {deep}: [1]\n{stages}"));
    assert_eq!(
        e,
        format!(
            "{FILE}:2:3: refused: matrix variable `{}...` has 65 segments, deeper than 64 levels",
            &deep[..40]
        )
    );
    let e = load_with(GOOD, &[&format!("task.{deep}=1")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("has 66 segments, deeper than 64 levels"), "{e}");
}

/// References and the matrix multiply what is written; a file that expands past the budget
/// is refused as an alias bomb is. Each of these went to gigabytes before the budget.
#[test]
fn reference_and_matrix_bombs_are_refused() {
    let list = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    let head = format!(
        "params:\n  big: [{}]\nstages:\n  t:\n    kind: train\n",
        list(20_000)
    );
    let uses = vec!["\"${big}\""; 20_000].join(", ");
    let by_value = format!("{head}    params: {{opt: {{x: [{uses}]}}}}\n");
    let by_text = format!(
        "{head}    params: {{tag: \"{}\"}}\n",
        "${big}".repeat(2_000)
    );
    let by_matrix = format!(
        "matrix:\n  m: [{}]\nstages:\n  t:\n    kind: train\n    params: {{tag: \"${{m}}\", opt: {{l: [{}]}}}}\n",
        (0..MAX_MATRIX_POINTS)
            .map(|i| format!("s{i}"))
            .collect::<Vec<_>>()
            .join(", "),
        list(5_000)
    );
    for (what, text) in [
        ("value", by_value),
        ("text", by_text),
        ("matrix", by_matrix),
    ] {
        let e = err(&text);
        assert!(
            e.starts_with(&format!("{FILE}:"))
                && e.ends_with(
                    "refused: the stages' parameters, references and matrix points expanded, \
                     come to more than 64 MiB"
                ),
            "{what}: {e}"
        );
    }
    // Under the budget, the same shapes load.
    let uses = vec!["\"${big}\""; 20].join(", ");
    assert!(load(&format!("{head}    params: {{opt: {{x: [{uses}]}}}}\n")).is_ok());
}

#[test]
fn unknown_env_like_ref_suggests_the_escape() {
    let e = err("stages:\n  c: {kind: command, params: {cmd: \"ls ${UGC_OUT}\"}}\n");
    assert!(e.contains("unknown reference `${UGC_OUT}`"), "{e}");
    assert!(
        e.contains("write `$${UGC_OUT}` for a literal `${UGC_OUT}`"),
        "{e}"
    );
}

const RANGED: &str = "stages:\n  s:\n    kind: split\n    params: {label_ratio: 0.5}\n  r:\n    kind: ranged\n    deps: [s]\n    params:\n";

#[test]
fn declared_constraints_are_checked_with_positions() {
    let ok = load(&format!("{RANGED}      steps: 5\n")).unwrap();
    assert_eq!(ok.stages.len(), 2);
    // The written value is on line 9, after `      <name>: `.
    for (line, want) in [
        (
            "steps: 0",
            "9:14: stage `r` parameter `steps`: 0 is outside the allowed range [1, inf)",
        ),
        (
            "ratio: 0",
            "9:14: stage `r` parameter `ratio`: 0 is outside the allowed range (0, 1]",
        ),
        (
            "ratio: 1.5",
            "9:14: stage `r` parameter `ratio`: 1.5 is outside the allowed range (0, 1]",
        ),
        (
            "decay: 11",
            "9:14: stage `r` parameter `decay`: 11 exceeds `steps` (10)",
        ),
        (
            "metrics: []",
            "9:16: stage `r` parameter `metrics`: has 0 item(s), needs at least 1",
        ),
        (
            "metrics: [psnr, lpips]",
            "9:23: stage `r` parameter `metrics` item 1: value `lpips` is not allowed",
        ),
        (
            "weights: {a: -1}",
            "9:20: stage `r` parameter `weights` key `a`: -1 is outside",
        ),
        (
            "weights: {c: 1}",
            "stage `r` parameter `weights`: key: value `c` is not allowed (allowed: a, b)",
        ),
        ("odd: 2", "9:12: stage `r` parameter `odd`: must be odd"),
    ] {
        let text = format!("{RANGED}      {line}\n");
        let e = err(&text);
        assert!(e.contains(want), "{line}: {e}");
    }
}

#[test]
fn every_problem_of_a_pipeline_is_reported_at_once() {
    let text = "stages:\n  s:\n    kind: split\n    params: {label_ratio: x, nope: 1}\n  r:\n    kind: ranged\n    deps: [s]\n    params: {steps: 0, ratio: 2, odd: 2}\n  t:\n    kind: ranged\n    params: {}\n";
    let e = load_with(text, &["r.decay=oops"]).unwrap_err();
    let all: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
    let want = [
        "--set r.decay=oops",
        "4:30: stage `s` has no parameter `nope`",
        "4:27: stage `s` parameter `label_ratio`: expected float",
        "8:21: stage `r` parameter `steps`",
        "8:31: stage `r` parameter `ratio`",
        "stage `t` (kind ranged) needs a `split` stage among its deps",
    ];
    for w in want {
        assert!(all.iter().any(|p| p.contains(w)), "missing `{w}` in:\n{e}");
    }
    // The cross-field check runs only once the schema's own checks pass.
    assert!(!all.iter().any(|p| p.contains("must be odd")), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("{} problems:", all.len())),
        "{e}"
    );
}

#[test]
fn ranges_parse_and_refuse_nonsense() {
    let r: crate::stage::Range = "(0, 1]".parse().unwrap();
    assert!(!r.contains(0.0) && r.contains(1.0) && r.contains(0.5) && !r.contains(f64::NAN));
    assert_eq!(r.to_string(), "(0, 1]");
    let r: crate::stage::Range = "[2, inf)".parse().unwrap();
    assert!(r.contains(2.0) && !r.contains(1.999) && r.contains(1e300));
    for bad in ["0, 1", "[0, inf]", "[a, 1]", "(1)", "", "[-inf, 0)"] {
        assert!(bad.parse::<crate::stage::Range>().is_err(), "{bad}");
    }
}

const DP: &str = r#"stages:
  fit:
    kind: dp
    resources: {devices: 2, dist_timeout_s: 30}
    params: {batch_size: 4}
  plain:
    kind: synth
    params: {task: edges2photo}
"#;

#[test]
fn resources_parse_with_their_defaults() {
    let p = load(DP).unwrap();
    let fit = p.stage("fit").unwrap();
    assert_eq!(fit.resources.devices, 2);
    assert_eq!(
        fit.resources.dist_timeout,
        std::time::Duration::from_secs(30)
    );
    let plain = p.stage("plain").unwrap();
    assert_eq!(plain.resources, Resources::default());
    assert_eq!(plain.resources.dist_timeout, crate::rank::DEFAULT_TIMEOUT);
    // `devices` points at its value; the block's root at its key.
    let at = resources::devices_pos(&fit.resources_pos);
    assert_eq!((at.line, at.col), (4, 26));
}

#[test]
fn bad_resources_are_refused_with_positions_all_at_once() {
    let text = r#"stages:
  a:
    kind: dp
    resources: {devices: 0, gpus: 2}
  b:
    kind: dp
    resources: {devices: 1.5, dist_timeout_s: -1}
  c:
    kind: dp
    resources: [devices]
  d:
    kind: dp
    resources: {devices: "2"}
"#;
    let e = err(text);
    for want in [
        format!("{FILE}:4:26: stage `a`: `devices` must be a whole number >= 1, got 0"),
        format!(
            "{FILE}:4:29: unknown key `gpus` in `resources` of stage `a`; did you mean `cpus`? (valid: devices, dist_timeout_s, cpus, mem, time, partition, exclusive)"
        ),
        format!(
            "{FILE}:7:26: `resources.devices` of stage `b`: expected a whole number >= 1, got float"
        ),
        format!("{FILE}:7:47: stage `b`: `dist_timeout_s` must be a number of seconds > 0, got -1"),
        format!("{FILE}:10:16: `resources` of stage `c`: expected a map"),
        format!(
            "{FILE}:13:26: `resources.devices` of stage `d`: expected a whole number >= 1, got string"
        ),
    ] {
        assert!(e.contains(&want), "missing `{want}` in:\n{e}");
    }
}

#[test]
fn devices_on_a_kind_that_is_not_data_parallel_is_refused_at_the_value() {
    let text = "stages:\n  s:\n    kind: synth\n    resources: {devices: 2}\n    params: {task: edges2photo}\n";
    let e = err(text);
    assert!(
        e.starts_with(&format!(
            "{FILE}:4:26: stage `s` asks for 2 devices, but kind synth runs as one process \
             (data-parallel kinds: dp)"
        )),
        "{e}"
    );
    // One device is every kind's default, and always fine.
    load(&text.replace("devices: 2", "devices: 1")).unwrap();
}

#[test]
fn every_batch_parameter_must_cover_the_devices() {
    // `batch_size` written (points at it), `unlabeled_batch_size` a default (the stage).
    let text = DP.replace("devices: 2", "devices: 6");
    let e = load_on(&text, &[], 8, 8).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{FILE}:5:26: stage `fit`: `batch_size` = 4 is smaller than its 6 devices"
        )),
        "{e}"
    );
    assert!(!e.contains("unlabeled_batch_size"), "8 >= 6 is fine: {e}");
    let e = load_on(&text, &["fit.unlabeled_batch_size=5"], 8, 8)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--set fit.unlabeled_batch_size=5:1:26: stage `fit`: `unlabeled_batch_size` = 5 is smaller than its 6 devices"),
        "{e}"
    );
    // Equal is enough: one example per rank.
    load_on(&text, &["fit.batch_size=6"], 8, 8).unwrap();
}

#[test]
fn more_devices_than_the_machine_has_is_refused_naming_what_it_has() {
    let e = load_on(DP, &[], 1, 64).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("{FILE}:4:26: stage `fit` asks for 2 devices, but this machine has 1 GPU")
    );
    let e = load_on(DP, &[], 0, 1).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{FILE}:4:26: stage `fit` asks for 2 devices, but this machine has no GPU in use \
             and 1 CPU core (one rank per core)"
        )
    );
    load_on(DP, &[], 2, 1).unwrap();
    load_on(DP, &[], 0, 2).unwrap();
    // Planning without a machine (drawing the DAG) does not ask.
    load(DP).unwrap();
}

#[test]
fn resources_are_set_from_the_command_line_with_the_flag_in_errors() {
    let p = load_with(
        DP,
        &[
            "fit.resources.devices=3",
            "fit.resources.dist_timeout_s=7.5",
        ],
    )
    .unwrap();
    let fit = p.stage("fit").unwrap();
    assert_eq!(fit.resources.devices, 3);
    assert_eq!(
        fit.resources.dist_timeout,
        std::time::Duration::from_secs_f64(7.5)
    );
    let p = load_with(DP, &["plain.resources={devices: 1}"]).unwrap();
    assert_eq!(p.stage("plain").unwrap().resources.devices, 1);
    // A refusal after the flag names it.
    let e = load_on(DP, &["fit.resources.devices=4"], 2, 2)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--set fit.resources.devices=4:1:23: stage `fit` asks for 4 devices, but this machine has 2 GPUs"),
        "{e}"
    );
    let e = load_with(DP, &["plain.resources.devices=2"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "--set plain.resources.devices=2:1:25: stage `plain` asks for 2 devices, but kind synth"
        ),
        "{e}"
    );
    for (flag, want) in [
        (
            "fit.resources.devices=0",
            "`devices` must be a whole number >= 1, got 0",
        ),
        (
            "fit.resources.devices=two",
            "`devices` must be a whole number >= 1, got \"two\"",
        ),
        (
            "fit.resources.gpus=2",
            "unknown resource `gpus` (valid: devices, dist_timeout_s, cpus, mem, time, partition, exclusive)",
        ),
        ("fit.resources=2", "`fit.resources` takes a map"),
        ("fit.resources.devices.x=2", "name one resource"),
    ] {
        let e = load_with(DP, &[flag]).unwrap_err().to_string();
        assert!(
            e.contains(&format!("--set {flag}: ")) && e.contains(want),
            "{flag}: {e}"
        );
    }
}

#[test]
fn slurm_resources_are_parsed_checked_with_positions_and_left_out_of_the_job_when_unset() {
    let text = r#"stages:
  a:
    kind: dp
    resources: {cpus: 4, mem: 8G, time: "1:30:00", partition: gpu}
  b:
    kind: dp
    resources: {cpus: 0, mem: lots, time: "soon", partition: "a b"}
"#;
    let e = err(text);
    for want in [
        format!("{FILE}:7:23: stage `b`: `cpus` must be a whole number >= 1, got 0"),
        format!("{FILE}:7:31: stage `b`: `mem` = \"lots\""),
        format!("{FILE}:7:43: stage `b`: `time` = \"soon\""),
        format!("{FILE}:7:62: stage `b`: `partition` = \"a b\""),
    ] {
        assert!(e.contains(&want), "missing `{want}` in:\n{e}");
    }
    let p = load(&text.replace(
        "resources: {cpus: 0, mem: lots, time: \"soon\", partition: \"a b\"}",
        "params: {}",
    ))
    .unwrap();
    let a = &p.stage("a").unwrap().resources;
    assert_eq!(
        (
            a.cpus,
            a.mem.as_deref(),
            a.time.as_deref(),
            a.partition.as_deref()
        ),
        (Some(4), Some("8G"), Some("1:30:00"), Some("gpu"))
    );
    let req = a.slurm_request();
    assert_eq!(
        (req.cpus, req.mem.map(|m| m.0), req.time.map(|t| t.0)),
        (Some(4), Some(8192), Some(5400))
    );
    // Unset fields are not serialised: a job file without them is the one before them.
    let b = serde_json::to_value(&p.stage("b").unwrap().resources).unwrap();
    assert_eq!(b.as_object().unwrap().len(), 2, "{b}");
}

/// A typo far from every name gets no suggestion, only the list.
#[test]
fn a_name_close_to_none_gets_the_list_without_a_guess() {
    let e = err("stages:\n  data:\n    kind: zzzzzzz\n");
    assert!(e.contains("unknown stage kind `zzzzzzz` (known: "), "{e}");
    let e = load_with(GOOD, &["split.zzzzzz=1"])
        .unwrap_err()
        .to_string();
    assert!(!e.contains("did you mean"), "{e}");
    // `--set` of a stage name mistyped: the stage is suggested.
    let e = load_with(GOOD, &["splt.seed=1"]).unwrap_err().to_string();
    assert!(e.ends_with("; did you mean `split`?"), "{e}");
}
