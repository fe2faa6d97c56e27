//! What ties a kind's `schema.yaml` to its typed parameters, and the pipelines the
//! generated tests plan. Public so that the kinds' own tests (and the crates that run
//! them) build their cases the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Map, Value, json};
use ugc_engine::spec::{LoadOptions, Pipeline, SpecError, load_pipeline_str};
use ugc_engine::{KindSchema, ParamSchema, ParamType};

use crate::{Kind, KindParams, schema_registry};

/// A type as the typed parameters' JSON Schema describes it, reduced to what a kind's
/// schema can say.
#[derive(Debug, Default)]
struct Shape {
    /// JSON types (`integer`, `number`, `string`, ...); empty means anything.
    types: BTreeSet<String>,
    nullable: bool,
    /// Closed set of string values (a Rust enum).
    choices: Option<BTreeSet<String>>,
    items: Option<Box<Shape>>,
    /// Named fields (a Rust struct); `None` for an open map or a non-object.
    fields: Option<BTreeMap<String, Shape>>,
}

fn resolve<'a>(v: &'a Value, defs: &'a Map<String, Value>) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .rsplit('/')
            .next()
            .and_then(|name| defs.get(name))
            .map_or(v, |d| resolve(d, defs)),
        None => v,
    }
}

fn shape(v: &Value, defs: &Map<String, Value>) -> Shape {
    let v = resolve(v, defs);
    let mut s = Shape::default();
    if v == &Value::Bool(true) || v.as_object().is_some_and(Map::is_empty) {
        return s;
    }
    for branch_key in ["anyOf", "oneOf"] {
        if let Some(branches) = v.get(branch_key).and_then(Value::as_array) {
            for b in branches {
                let bs = shape(b, defs);
                s.nullable |= bs.nullable;
                s.types.extend(bs.types);
                if let Some(c) = bs.choices {
                    s.choices.get_or_insert_with(BTreeSet::new).extend(c);
                }
                s.items = s.items.or(bs.items);
                s.fields = s.fields.or(bs.fields);
            }
            return s;
        }
    }
    match v.get("type") {
        Some(Value::String(t)) => {
            s.types.insert(t.clone());
        }
        Some(Value::Array(ts)) => s
            .types
            .extend(ts.iter().filter_map(Value::as_str).map(String::from)),
        _ => {}
    }
    if s.types.remove("null") {
        s.nullable = true;
    }
    if let Some(c) = v.get("const").and_then(Value::as_str) {
        s.choices = Some(BTreeSet::from([c.to_string()]));
        s.types.insert("string".into());
    }
    if let Some(e) = v.get("enum").and_then(Value::as_array) {
        let strings: BTreeSet<String> = e
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect();
        if e.iter().any(Value::is_null) {
            s.nullable = true;
        }
        s.choices = Some(strings);
        s.types.insert("string".into());
    }
    if let Some(items) = v.get("items") {
        s.items = Some(Box::new(shape(items, defs)));
    }
    if let Some(props) = v.get("properties").and_then(Value::as_object) {
        s.fields = Some(
            props
                .iter()
                .map(|(k, p)| (k.clone(), shape(p, defs)))
                .collect(),
        );
    }
    s
}

/// The JSON type a schema type maps to (`None`: anything).
fn json_type(ty: ParamType) -> Option<&'static str> {
    match ty {
        ParamType::Bool => Some("boolean"),
        ParamType::Int => Some("integer"),
        ParamType::Float => Some("number"),
        ParamType::String | ParamType::Path => Some("string"),
        ParamType::List => Some("array"),
        ParamType::Map => Some("object"),
        ParamType::Any => None,
    }
}

/// Compares one parameter's schema with its Rust shape, pushing each difference.
fn compare(what: &str, ps: &ParamSchema, rust: &Shape, out: &mut Vec<String>) {
    if let Some(t) = json_type(ps.ty) {
        let want = BTreeSet::from([t.to_string()]);
        if rust.types != want {
            out.push(format!(
                "{what}: schema type {:?} but the typed parameter is {:?}",
                ps.ty, rust.types
            ));
        }
    }
    // A value that may be absent (or null) must be an Option in Rust.
    let may_be_null = !ps.required && ps.default.as_ref().is_none_or(Value::is_null);
    if may_be_null && !rust.nullable && ps.ty != ParamType::Any {
        out.push(format!(
            "{what}: optional without a default in the schema, but not an Option in Rust"
        ));
    }
    let yaml_choices: Option<BTreeSet<String>> =
        ps.choices.as_ref().map(|c| c.iter().cloned().collect());
    match (&yaml_choices, &rust.choices) {
        (Some(y), Some(r)) if y != r => out.push(format!(
            "{what}: schema allows {y:?} but the Rust enum has {r:?}"
        )),
        (Some(y), None) => out.push(format!(
            "{what}: schema allows only {y:?}, but the typed parameter is a free string (use an enum)"
        )),
        (None, Some(r)) => out.push(format!(
            "{what}: the Rust enum has {r:?}, but the schema declares no `enum`"
        )),
        _ => {}
    }
    match (&ps.items, &rust.items) {
        (Some(ys), Some(rs)) => compare(&format!("{what} items"), ys, rs, out),
        (None, Some(rs)) if rs.choices.is_some() || rs.fields.is_some() => out.push(format!(
            "{what}: the Rust items are constrained, but the schema declares no `items`"
        )),
        (Some(_), None) if ps.ty == ParamType::List => out.push(format!(
            "{what}: schema declares items, the typed parameter has none"
        )),
        _ => {}
    }
    match (&ps.keys, &rust.fields) {
        (Some(yk), Some(rf)) => {
            for k in yk.keys().filter(|k| !rf.contains_key(*k)) {
                out.push(format!(
                    "{what}: key `{k}` in the schema, not in the Rust struct"
                ));
            }
            for k in rf.keys().filter(|k| !yk.contains_key(*k)) {
                out.push(format!(
                    "{what}: key `{k}` in the Rust struct, not in the schema"
                ));
            }
            for (k, ks) in yk {
                if let Some(rs) = rf.get(k) {
                    compare(&format!("{what} key `{k}`"), ks, rs, out);
                }
            }
        }
        (None, Some(_)) if ps.ty == ParamType::Map => out.push(format!(
            "{what}: the Rust type has fixed fields, but the schema declares no `keys`"
        )),
        (Some(_), None) => out.push(format!(
            "{what}: the schema declares `keys`, but the Rust type is an open map"
        )),
        _ => {}
    }
}

/// The parameters every test starts from: each parameter's `example` where it has one
/// (a required parameter, or one whose default alone does not plan, like `train.arch`),
/// else its default.
pub fn baseline_params(schema: &KindSchema) -> Map<String, Value> {
    schema
        .params
        .iter()
        .filter_map(|(name, ps)| {
            ps.example
                .clone()
                .or_else(|| ps.default.clone())
                .map(|v| (name.clone(), v))
        })
        .collect()
}

/// Every difference between `schema` and the typed parameters `P` (empty: they agree).
pub fn drift<P: KindParams>(schema: &KindSchema) -> Vec<String> {
    let generated = schemars::schema_for!(P);
    let root = generated.as_value();
    let empty = Map::new();
    let defs = root
        .get("$defs")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let rust = shape(root, defs);
    let mut out = Vec::new();
    let Some(fields) = rust.fields else {
        return vec![format!(
            "kind {}: the typed parameters are not a struct with named fields",
            schema.kind
        )];
    };
    for name in schema.params.keys().filter(|k| !fields.contains_key(*k)) {
        out.push(format!(
            "{}.{name}: in schema.yaml, not in the typed parameters",
            schema.kind
        ));
    }
    for name in fields.keys().filter(|k| !schema.params.contains_key(*k)) {
        out.push(format!(
            "{}.{name}: in the typed parameters, not in schema.yaml",
            schema.kind
        ));
    }
    for (name, ps) in &schema.params {
        if let Some(rs) = fields.get(name) {
            compare(&format!("{}.{name}", schema.kind), ps, rs, &mut out);
        }
    }
    for (name, ps) in &schema.params {
        if ps.required && ps.default.is_none() && ps.example.is_none() {
            out.push(format!(
                "{}.{name}: required without a default: give it an `example`",
                schema.kind
            ));
        }
    }
    if let Err(e) = serde_json::from_value::<P>(Value::Object(baseline_params(schema))) {
        out.push(format!(
            "{}: the schema's defaults and examples do not deserialize: {e}",
            schema.kind
        ));
    }
    out
}

/// A pipeline (as JSON text, which is YAML) holding stage `s` of `kind` with `params`
/// written over its baseline, plus one stage of every kind it needs, recursively, each
/// at its baseline. Every value sits on a line of its own, so positions are exact.
pub fn pipeline_text(kind: Kind, params: &Map<String, Value>) -> String {
    let mut stages = Map::new();
    let mut todo = vec![kind];
    let mut seen = BTreeSet::new();
    while let Some(k) = todo.pop() {
        if !seen.insert(k) {
            continue;
        }
        let schema = k.schema();
        let needed: Vec<Kind> = schema
            .deps
            .required
            .iter()
            .filter_map(|n| Kind::from_name(n))
            .collect();
        let mut written = baseline_params(&schema);
        if k == kind {
            for (p, v) in params {
                written.insert(p.clone(), v.clone());
            }
        }
        let name = if k == kind {
            "s".to_string()
        } else {
            k.name().to_string()
        };
        stages.insert(
            name,
            json!({
                "kind": k.name(),
                "deps": needed.iter().map(|d| d.name()).collect::<Vec<_>>(),
                "params": written,
            }),
        );
        todo.extend(needed);
    }
    serde_json::to_string_pretty(&json!({ "stages": stages })).expect("JSON of JSON values")
}

/// Loads and plans [`pipeline_text`] as the head does (`run --dry-run`), as if read from
/// `pipeline.yaml` in the current folder (the file is never read).
pub fn plan(
    kind: Kind,
    params: &Map<String, Value>,
    overrides: &[String],
) -> (String, Result<Pipeline, SpecError>) {
    let text = pipeline_text(kind, params);
    let opts = LoadOptions {
        overrides: overrides.to_vec(),
        ..LoadOptions::default()
    };
    let r = load_pipeline_str(&text, Path::new("pipeline.yaml"), &schema_registry(), &opts);
    (text, r)
}

/// Asserts that planning `kind` with `params` written is refused with a problem about
/// stage `s` and `param` (a dotted path), positioned at the line of that value. Returns
/// the whole message.
///
/// # Panics
/// When the plan succeeds or no problem names `param` at its line (a test failure).
pub fn assert_refused(kind: Kind, params: Value, param: &str) -> String {
    let params = params.as_object().cloned().unwrap_or_default();
    let (text, r) = plan(kind, &params, &[]);
    let err = match r {
        Ok(_) => panic!("kind {kind}: {params:?} was accepted, expected a refusal of `{param}`"),
        Err(e) => e,
    };
    let top = param.split('.').next().unwrap_or(param);
    let last = param.rsplit('.').next().unwrap_or(param);
    let found = err.problems().into_iter().any(|p| {
        let m = p.to_string();
        let at_value = p.pos().is_some_and(|pos| {
            let line = text.lines().nth(pos.line.saturating_sub(1)).unwrap_or("");
            // A list item sits on its own line, below its key.
            line.contains(&format!("\"{last}\"")) || last.parse::<usize>().is_ok()
        });
        m.starts_with("pipeline.yaml:")
            && m.contains("stage `s`")
            && m.contains(&format!("`{top}"))
            && at_value
    });
    let msg = err.to_string();
    assert!(
        found,
        "kind {kind}: the refusal of {params:?} does not name `{param}` at its line:\n{msg}"
    );
    msg
}
