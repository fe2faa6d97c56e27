//! Tests generated from the schemas: every kind's schema parses and agrees with its typed
//! parameters, its baseline plans, and each declared constraint, violated once, is
//! refused at plan time with the value's position.

use std::path::Path;

use serde_json::{Map, Value, json};
use ugc_engine::spec::load_pipeline_str;
use ugc_engine::{ParamSchema, ParamType};

use crate::testing::{assert_refused, baseline_params, pipeline_text, plan};
use crate::{Kind, reference_markdown, schema_registry};

#[test]
fn every_schema_parses_under_its_own_name() {
    for &kind in Kind::ALL {
        assert_eq!(kind.schema().kind, kind.name());
        assert_eq!(Kind::from_name(kind.name()), Some(kind));
    }
    assert_eq!(schema_registry().names().count(), Kind::ALL.len());
}

#[test]
fn every_schema_agrees_with_its_typed_parameters() {
    let drift: Vec<String> = Kind::ALL.iter().flat_map(|k| k.drift()).collect();
    assert!(
        drift.is_empty(),
        "schema/typed-parameter drift:\n{}",
        drift.join("\n")
    );
}

#[test]
fn every_kind_plans_at_its_baseline() {
    for &kind in Kind::ALL {
        let (text, r) = plan(kind, &Map::new(), &[]);
        if let Err(e) = r {
            panic!("kind {kind}: the baseline pipeline is refused:\n{e}\n{text}");
        }
    }
}

/// A value of the wrong type for `ty` (`None` for `any`).
fn wrong_type(ty: ParamType) -> Option<Value> {
    match ty {
        ParamType::Bool => Some(json!(3)),
        ParamType::Int | ParamType::Float | ParamType::List | ParamType::Map => {
            Some(json!("not-a-number-list-or-map"))
        }
        ParamType::String | ParamType::Path => Some(json!(3)),
        ParamType::Any => None,
    }
}

/// Values just outside the declared range: the nearest one that must be refused on each
/// bounded side.
fn out_of_range(ps: &ParamSchema) -> Vec<Value> {
    let Some(r) = ps.range else { return Vec::new() };
    let int = ps.ty == ParamType::Int;
    let mut out = Vec::new();
    let num = |x: f64| if int { json!(x as i64) } else { json!(x) };
    if let Some(m) = r.min {
        out.push(num(if r.min_inclusive {
            if int {
                m.ceil() - 1.0
            } else {
                m - m.abs().max(1.0) * 1e-3
            }
        } else if int {
            m.floor()
        } else {
            m
        }));
    }
    if let Some(m) = r.max {
        out.push(num(if r.max_inclusive {
            if int {
                m.floor() + 1.0
            } else {
                m + m.abs().max(1.0) * 1e-3
            }
        } else if int {
            m.ceil()
        } else {
            m
        }));
    }
    out
}

/// Every violation of `ps` as (value to write, dotted path the refusal must name).
fn violations(name: &str, ps: &ParamSchema) -> Vec<(Value, String)> {
    let mut out = Vec::new();
    if let Some(bad) = wrong_type(ps.ty) {
        out.push((bad, name.to_string()));
    }
    if ps.required {
        out.push((Value::Null, name.to_string()));
    }
    if ps.choices.is_some() {
        out.push((json!("no-such-choice"), name.to_string()));
    }
    for v in out_of_range(ps) {
        out.push((v, name.to_string()));
    }
    if let Some(min) = ps.min_items.filter(|&n| n > 0) {
        let base = ps.default.clone().or(ps.example.clone());
        let item = base
            .as_ref()
            .and_then(Value::as_array)
            .and_then(|a| a.first().cloned())
            .unwrap_or(json!(0));
        out.push((Value::Array(vec![item; min - 1]), name.to_string()));
    }
    if let Some(items) = &ps.items {
        for (bad, _) in violations("0", items) {
            out.push((json!([bad]), format!("{name}.0")));
        }
    }
    if let Some(keys) = &ps.keys {
        let base = ps
            .default
            .clone()
            .or(ps.example.clone())
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        let mut unknown = base.clone();
        unknown.insert("no_such_key".into(), json!(1));
        out.push((Value::Object(unknown), format!("{name}.no_such_key")));
        for (k, ks) in keys {
            for (bad, _) in violations(k, ks) {
                let mut m = base.clone();
                m.insert(k.clone(), bad);
                out.push((Value::Object(m), format!("{name}.{k}")));
            }
        }
    }
    out
}

#[test]
fn every_declared_constraint_is_refused_at_plan_time_with_its_position() {
    let mut checked = 0;
    for &kind in Kind::ALL {
        let schema = kind.schema();
        let base = baseline_params(&schema);
        for (name, ps) in &schema.params {
            for (bad, path) in violations(name, ps) {
                assert_refused(kind, json!({ name: bad }), &path);
                checked += 1;
            }
            if let Some(other) = &ps.at_most
                && let Some(limit) = base.get(other).and_then(Value::as_f64)
            {
                let over = if ps.ty == ParamType::Int {
                    json!(limit as i64 + 1)
                } else {
                    json!(limit + 1.0)
                };
                assert_refused(kind, json!({ name: over }), name);
                checked += 1;
            }
        }
    }
    // Guards against a generator that silently produces nothing.
    assert!(checked > 100, "only {checked} violations generated");
}

#[test]
fn all_problems_of_a_stage_are_reported_in_one_message() {
    for &kind in Kind::ALL {
        let schema = kind.schema();
        let mut params = Map::new();
        for (name, ps) in &schema.params {
            if let Some(bad) = wrong_type(ps.ty) {
                params.insert(name.clone(), bad);
            }
        }
        if params.len() < 2 {
            continue;
        }
        let (_, r) = plan(kind, &params, &[]);
        let err = r.expect_err("every parameter has the wrong type");
        assert_eq!(
            err.problems().len(),
            params.len(),
            "kind {kind}: one problem per wrong value:\n{err}"
        );
    }
}

#[test]
fn a_missing_required_dep_is_refused_naming_the_kind() {
    for &kind in Kind::ALL {
        let schema = kind.schema();
        if schema.deps.required.is_empty() {
            continue;
        }
        let mut doc: Value = serde_json::from_str(&pipeline_text(kind, &Map::new())).unwrap();
        doc["stages"]["s"]["deps"] = json!([]);
        let text = serde_json::to_string_pretty(&doc).unwrap();
        let err = load_pipeline_str(
            &text,
            Path::new("pipeline.yaml"),
            &schema_registry(),
            &Default::default(),
        )
        .expect_err("no deps");
        for needed in &schema.deps.required {
            assert!(
                err.to_string()
                    .contains(&format!("needs a `{needed}` stage")),
                "kind {kind}: {err}"
            );
        }
    }
}

#[test]
fn a_set_flag_is_named_as_the_position_of_its_value() {
    // `--set s.<param>=<wrong type>` must point at the flag, not the file.
    for &kind in Kind::ALL {
        let schema = kind.schema();
        let Some((name, _)) = schema
            .params
            .iter()
            .find(|(_, ps)| matches!(ps.ty, ParamType::Int | ParamType::Float))
        else {
            continue;
        };
        let flag = format!("s.{name}=\"x\"");
        let (_, r) = plan(kind, &Map::new(), std::slice::from_ref(&flag));
        let msg = r.expect_err("a string for a number").to_string();
        assert!(
            msg.starts_with(&format!("--set {flag}")),
            "kind {kind}: {msg}"
        );
    }
}

#[test]
fn docs_stage_kinds_md_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/stage-kinds.md");
    let want = reference_markdown();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).expect("write docs/stage-kinds.md");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is stale: run `UPDATE_DOCS=1 cargo test -p ugc-kinds`",
        path.display()
    );
}

/// The continuation parameters (`continues`) were added without changing any key: at
/// their defaults they are not in the key material, set they are.
#[test]
fn continuation_params_are_in_the_key_only_when_set() {
    let kinds = schema_registry();
    let mut continuing = Vec::new();
    for &kind in Kind::ALL {
        let Some(c) = kind.schema().continues else {
            continue;
        };
        continuing.push(kind.name());
        let key_of = |params: &Map<String, Value>| {
            let (text, r) = plan(kind, params, &[]);
            let p = r.unwrap_or_else(|e| panic!("kind {kind}: {e}\n{text}"));
            let dag = ugc_engine::graph::Dag::build(&p, &kinds).unwrap();
            dag.node(dag.find("s")[0]).key_params.clone()
        };
        let plain = key_of(&Map::new());
        for name in [&c.from, &c.keep] {
            assert!(
                plain.get(name).is_none(),
                "kind {kind}: `{name}` in {plain}"
            );
        }
        let mut keep = Map::new();
        keep.insert(c.keep.clone(), json!(true));
        assert_eq!(key_of(&keep)[&c.keep], json!(true), "kind {kind}");
    }
    assert_eq!(continuing, ["supernet", "distill", "train"]);
}
