use serde_json::json;

use super::*;
use crate::spec::testutil::{kinds, load};

const ABLATION: &str = r#"params:
  task: labels2photo
  label_ratio: 0.25
  adf: false
matrix:
  label_ratio: [0.1, 0.25, 0.5]
  adf: [true, false]
stages:
  data:
    kind: synth
    params: {task: "${task}", n: 16}
  split:
    kind: split
    deps: [data]
    params: {label_ratio: "${label_ratio}"}
  prep:
    kind: train
    deps: [data]
  distill:
    kind: train
    deps: [split, prep]
    params: {adf: "${adf}"}
  adfonly:
    kind: train
    params: {adf: "${adf}", tag: "r${adf}"}
"#;

fn dag(text: &str) -> Dag {
    Dag::build(&load(text).unwrap(), &kinds()).unwrap()
}

fn ids(d: &Dag, v: &[NodeIndex]) -> Vec<String> {
    v.iter().map(|&i| d.node(i).id.clone()).collect()
}

#[test]
fn matrix_dedups_stages_that_do_not_read_the_swept_values() {
    let d = dag(ABLATION);
    assert_eq!(d.find("data").len(), 1, "reads no matrix var");
    assert_eq!(d.find("prep").len(), 1, "only an unswept ancestor");
    assert_eq!(d.find("split").len(), 3, "reads label_ratio");
    assert_eq!(
        d.find("distill").len(),
        6,
        "reads adf, inherits label_ratio"
    );
    assert_eq!(d.find("adfonly").len(), 2, "reads adf only");
    assert_eq!(d.len(), 1 + 1 + 3 + 6 + 2);
}

#[test]
fn ids_carry_only_the_vars_a_node_depends_on_sorted() {
    let d = dag(ABLATION);
    assert_eq!(ids(&d, &d.find("data")), ["data"]);
    assert_eq!(
        ids(&d, &d.find("split")),
        [
            "split[label_ratio=0.1]",
            "split[label_ratio=0.25]",
            "split[label_ratio=0.5]"
        ]
    );
    let n = d.find("distill[adf=true,label_ratio=0.25]");
    assert_eq!(n.len(), 1);
    let node = d.node(n[0]);
    assert_eq!(node.stage, "distill");
    assert_eq!(node.kind, "train");
    assert!(node.gpu);
    assert_eq!(
        node.matrix_point,
        BTreeMap::from([
            ("adf".to_string(), json!(true)),
            ("label_ratio".to_string(), json!(0.25))
        ])
    );
    assert_eq!(node.params["adf"], json!(true));
    // Deps in the stage's `deps` order, at the same matrix point.
    assert_eq!(ids(&d, &d.deps(n[0])), ["split[label_ratio=0.25]", "prep"]);
    let a = d.node(d.find("adfonly[adf=false]")[0]);
    assert_eq!(a.params["tag"], json!("rfalse"));
}

#[test]
fn resolved_params_merge_defaults_in_schema_order() {
    let d = dag(ABLATION);
    let data = d.node(d.find("data")[0]);
    assert_eq!(
        data.params,
        json!({"log_every": 10, "n": 16, "size": 32, "task": "labels2photo"})
    );
    let keys: Vec<&String> = data.params.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["log_every", "n", "size", "task"]);
    // not_in_key paths are left out of the key.
    assert_eq!(
        data.key_params,
        json!({"n": 16, "size": 32, "task": "labels2photo"})
    );
    let prep = d.node(d.find("prep")[0]);
    assert_eq!(prep.params["opt"], json!({"beta1": 0.5, "beta2": 0.999}));
    assert!(
        prep.params.get("tag").is_none(),
        "optional without default stays absent"
    );
}

#[test]
fn topo_order_puts_deps_first_and_is_stable() {
    let d = dag(ABLATION);
    let order = d.topo_order();
    assert_eq!(order.len(), d.len());
    let pos: HashMap<NodeIndex, usize> = order.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    for &i in &order {
        for dep in d.deps(i) {
            assert!(pos[&dep] < pos[&i]);
        }
    }
    assert_eq!(d.node(order[0]).id, "data");
    assert_eq!(order, d.topo_order());
}

#[test]
fn dependents_descendants_and_find() {
    let d = dag(ABLATION);
    let data = d.find("data")[0];
    let mut deps = ids(&d, &d.dependents(data));
    deps.sort();
    assert_eq!(
        deps,
        [
            "prep",
            "split[label_ratio=0.1]",
            "split[label_ratio=0.25]",
            "split[label_ratio=0.5]"
        ]
    );
    // Everything but the two `adfonly` nodes and `data` itself is downstream of `data`.
    assert_eq!(d.descendants(data).len(), d.len() - 3);
    let s = d.find("split[label_ratio=0.5]")[0];
    let mut down = ids(&d, &d.descendants(s));
    down.sort();
    assert_eq!(
        down,
        [
            "distill[adf=false,label_ratio=0.5]",
            "distill[adf=true,label_ratio=0.5]"
        ]
    );
    assert!(d.find("nosuch").is_empty());
}

#[test]
fn dotted_matrix_var_is_read_through_its_parent_map() {
    let text = r#"params:
  model: {ngf: 8, blocks: 3}
matrix:
  model.ngf: [4, 8]
stages:
  a:
    kind: command
    params: {cmd: "x", env: {M: "${model}"}}
  b:
    kind: command
    params: {cmd: "x ${model.blocks}"}
"#;
    let d = dag(text);
    assert_eq!(ids(&d, &d.find("a")), ["a[model.ngf=4]", "a[model.ngf=8]"]);
    assert_eq!(
        d.node(d.find("a[model.ngf=4]")[0]).params["env"],
        json!({"M": {"ngf": 4, "blocks": 3}})
    );
    assert_eq!(ids(&d, &d.find("b")), ["b"]);
}

#[test]
fn string_matrix_values_are_bare_in_ids() {
    let text = "matrix:\n  strategy: [wide, deep]\nstages:\n  t: {kind: train, params: {strategy: \"${strategy}\"}}\n";
    let d = dag(text);
    assert_eq!(
        ids(&d, &d.find("t")),
        ["t[strategy=wide]", "t[strategy=deep]"]
    );
    // A matrix value that the schema's enum refuses fails at its use.
    let bad = "matrix:\n  strategy: [wide, tall]\nstages:\n  t: {kind: train, params: {strategy: \"${strategy}\"}}\n";
    let e = load(bad).unwrap_err().to_string();
    assert!(
        e.ends_with("value `tall` is not allowed (allowed: largest, wide, deep, multi)"),
        "{e}"
    );
    assert!(e.contains(":4:39:"), "{e}");
}

#[test]
fn dot_and_mermaid_contain_every_edge() {
    let d = dag(ABLATION);
    let dot = d.to_dot();
    assert!(dot.starts_with("digraph pipeline {"));
    assert!(
        dot.contains("\"data\" -> \"split[label_ratio=0.1]\";"),
        "{dot}"
    );
    assert!(dot.contains("\"split[label_ratio=0.5]\" -> \"distill[adf=false,label_ratio=0.5]\";"));
    assert!(dot.contains("\"prep\" -> \"distill[adf=true,label_ratio=0.1]\";"));
    let edges = dot.lines().filter(|l| l.contains(" -> ")).count();
    // data->split x3, data->prep, split->distill x6, prep->distill x6.
    assert_eq!(edges, 3 + 1 + 6 + 6);

    let mm = d.to_mermaid();
    assert!(mm.starts_with("flowchart LR\n"));
    let data = d.find("data")[0].index();
    let prep = d.find("prep")[0].index();
    assert!(mm.contains(&format!("n{data} --> n{prep}")), "{mm}");
    assert!(mm.contains("[\"split[label_ratio=0.1] (split)\"]"), "{mm}");
    assert_eq!(mm.lines().filter(|l| l.contains(" --> ")).count(), edges);
}

#[test]
fn without_matrix_every_stage_is_one_node() {
    let d = dag(
        "stages:\n  a: {kind: synth, params: {task: edges2photo}}\n  b: {kind: split, deps: [a], params: {label_ratio: 0.5}}\n",
    );
    assert_eq!(d.len(), 2);
    assert_eq!(ids(&d, &d.topo_order()), ["a", "b"]);
    assert!(d.node(d.find("b")[0]).matrix_point.is_empty());
}

#[test]
fn the_example_in_the_docs_loads_and_expands_as_documented() {
    let doc = include_str!("../../../../docs/pipeline-spec.md");
    let start = doc.find("```yaml\n").expect("docs have a yaml example") + 8;
    let end = start + doc[start..].find("```").unwrap();
    let d = dag(&doc[start..end]);
    assert_eq!(d.find("data").len(), 1);
    assert_eq!(d.find("split").len(), 3);
    assert_eq!(d.find("tag").len(), 3);
    assert_eq!(d.len(), 7);
    let tag = d.node(d.find("tag[label_ratio=0.1]")[0]);
    assert_eq!(
        tag.params["cmd"],
        json!("echo labels2photo-16 > ${UGC_OUT}/tag.txt")
    );
}

#[test]
fn gather_stage_is_one_node_over_every_instance_of_its_deps() {
    let text = format!(
        "{ABLATION}  report:\n    kind: train\n    gather: true\n    deps: [distill, data]\n  after:\n    kind: train\n    deps: [report]\n"
    );
    let d = dag(&text);
    let report = d.find("report");
    assert_eq!(ids(&d, &report), ["report"]);
    let deps = ids(&d, &d.deps(report[0]));
    assert_eq!(deps.len(), 7, "6 distill instances + data: {deps:?}");
    assert!(deps.contains(&"distill[adf=false,label_ratio=0.5]".to_string()));
    assert!(d.node(report[0]).matrix_point.is_empty());
    // Its dependents do not fan out over the matrix either.
    assert_eq!(ids(&d, &d.find("after")), ["after"]);
}

#[test]
fn gather_must_be_a_bool() {
    let text = format!(
        "{ABLATION}  report:\n    kind: train\n    gather: yes please\n    deps: [distill]\n"
    );
    let err = load(&text).unwrap_err().to_string();
    assert!(err.contains("gather"), "{err}");
}

#[test]
fn a_kind_rule_makes_a_stage_exclusive_unless_its_resources_say_otherwise() {
    let dag = dag(
        "stages:\n  a: {kind: timed}\n  b: {kind: timed, params: {time_it: false}}\n  \
         c: {kind: timed, resources: {exclusive: false}}\n  d: {kind: synth, params: {task: edges2photo}}\n  \
         e: {kind: synth, params: {task: edges2photo}, resources: {exclusive: true}}\n",
    );
    let exclusive = |id: &str| {
        dag.nodes()
            .find(|(_, n)| n.id == id)
            .map(|(_, n)| n.resources.exclusive)
            .unwrap()
    };
    assert_eq!(exclusive("a"), Some(true), "the rule's parameter is true");
    assert_eq!(exclusive("b"), None, "the rule's parameter is false");
    assert_eq!(exclusive("c"), Some(false), "the stage opted out");
    assert_eq!(exclusive("d"), None, "a kind without the rule");
    assert_eq!(exclusive("e"), Some(true), "asked for by the stage");
}

/// `run P distill[...]`: the target and its ancestors, nothing beside or below them.
#[test]
fn a_target_keeps_its_ancestors_only_and_plans_them_to_the_same_keys() {
    let d = dag(ABLATION);
    let target = d.find("distill[adf=true,label_ratio=0.25]");
    assert_eq!(target.len(), 1);
    let keep = d.with_ancestors(&target.iter().copied().collect());
    let sub = d.restricted(&keep);
    let sub_ids: Vec<String> = sub.nodes().map(|(_, n)| n.id.clone()).collect();
    assert_eq!(
        sub_ids,
        // Creation order: `prep` was made at the matrix's first point, before this split.
        [
            "data",
            "prep",
            "split[label_ratio=0.25]",
            "distill[adf=true,label_ratio=0.25]"
        ]
    );
    // Every kept node has its deps, in the stage's `deps` order.
    let t = sub.find("distill")[0];
    assert_eq!(ids(&sub, &sub.deps(t)), ["split[label_ratio=0.25]", "prep"]);
    assert_eq!(ids(&sub, &sub.topo_order()), sub_ids);

    // Same keys as in the whole DAG: a target reuses what a full run cached.
    let dir = tempfile::tempdir().unwrap();
    let cache = crate::cache::Cache::open(dir.path()).unwrap();
    let kinds = kinds();
    let keys = crate::plan::KeyBuilder {
        cache: &cache,
        kinds: &kinds,
        env: BTreeMap::new(),
        device_kind: "cpu".into(),
    };
    for (i, n) in sub.nodes() {
        let whole = d.find(&n.id)[0];
        assert_eq!(
            keys.own_material(&sub, i).unwrap(),
            keys.own_material(&d, whole).unwrap(),
            "{}",
            n.id
        );
    }

    // A stage name selects all its nodes; their ancestors are shared once.
    let all_split: BTreeSet<NodeIndex> = d.find("split").into_iter().collect();
    let sub = d.restricted(&d.with_ancestors(&all_split));
    assert_eq!(sub.len(), 4, "data and three splits");
}

const CONTINUED: &str = r#"stages:
  data: {kind: synth, params: {task: edges2photo}}
  short: {kind: fit, params: {steps: 4, keep_state: true}}
  long: {kind: fit, deps: [short], params: {steps: 8, init_from: short}}
"#;

/// `init_from` and `keep_state` are in the key only when used: a stage that uses
/// neither has the key it had before the kind could continue.
#[test]
fn continuation_params_enter_the_key_only_when_set() {
    let d = dag(CONTINUED);
    let key = |stage: &str| d.node(d.find(stage)[0]).key_params.clone();
    assert_eq!(
        key("short"),
        json!({"keep_state": true, "lr": 0.1, "steps": 4, "width": 4})
    );
    assert_eq!(
        key("long"),
        json!({"init_from": "short", "lr": 0.1, "steps": 8, "width": 4})
    );
    let plain = dag("stages:\n  a: {kind: fit}\n");
    assert_eq!(
        plain.node(plain.find("a")[0]).key_params,
        json!({"lr": 0.1, "steps": 10, "width": 4})
    );
}

/// Each refusal names the stage, the parameter and its value, at the value.
#[test]
fn a_continuation_of_what_cannot_be_continued_is_refused_at_plan_time() {
    let bad = |from: &str, to: &str| {
        // Loading builds the DAG, so the loader refuses it (exit 2 in the CLI).
        let e = crate::spec::testutil::err(&CONTINUED.replace(from, to));
        assert!(
            e.contains("stage `long` parameter `init_from` = `"),
            "{from} -> {to}: {e}"
        );
        e
    };
    let e = bad("init_from: short", "init_from: shrt");
    assert!(e.starts_with("/pipes/p.yaml:4:66: "), "{e}");
    assert!(
        e.contains("names no dep of the stage (deps: short); did you mean `short`?"),
        "{e}"
    );
    let e = bad(
        "deps: [short], params: {steps: 8, init_from: short}",
        "deps: [data], params: {steps: 8, init_from: data}",
    );
    assert!(
        e.contains("`data` is a synth stage; a fit stage continues only a fit stage"),
        "{e}"
    );
    let e = bad("keep_state: true", "keep_state: false");
    assert!(
        e.contains("`short` does not keep its final state: set `keep_state: true`"),
        "{e}"
    );
    let e = bad("steps: 4, keep", "steps: 4, width: 8, keep");
    assert!(
        e.contains("`short` trains other networks: `width` differs"),
        "{e}"
    );
    let e = bad("steps: 8", "steps: 4");
    assert!(
        e.contains("`steps` = 4 must be greater than `short`'s 4"),
        "{e}"
    );
    // What is right plans.
    dag(CONTINUED);
}
