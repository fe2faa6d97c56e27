//! Resolution of one stage at one matrix point: defaults merged, `${}` references
//! substituted, types checked against the kind's schema, paths made absolute, and the
//! cache-relevant view (`key_params`, `external_inputs`) derived.

use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use super::refs::{self, Piece};
use super::{Pipeline, SourcePos, SpecError, StageSpec};
use crate::stage::{KindRegistry, KindSchema, ParamSchema, ParamType};

/// A stage's parameters at one matrix point.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub params: Value,
    pub key_params: Value,
    pub external_inputs: Vec<(String, PathBuf)>,
}

/// Most bytes the resolved parameters of all nodes of a DAG may take together, as
/// [`ResolveBudget`] counts them. References and the matrix multiply what is written: a
/// 200 KB file (one long list referenced thousands of times) expanded to gigabytes, so such
/// a file is refused, as an alias bomb is. Real pipelines resolve to well under 1 MiB.
pub const MAX_RESOLVED_BYTES: usize = 64 << 20;

/// What is left of [`MAX_RESOLVED_BYTES`] while one DAG is expanded: each value produced
/// costs 32 bytes (a `serde_json::Value`) plus the text of its string or key.
pub(crate) struct ResolveBudget {
    left: usize,
}

impl ResolveBudget {
    pub fn new() -> Self {
        ResolveBudget {
            left: MAX_RESOLVED_BYTES,
        }
    }

    fn take(&mut self, bytes: usize) -> Result<(), Spent> {
        self.left = self.left.checked_sub(bytes).ok_or(Spent)?;
        Ok(())
    }

    /// Charges a copy of `v` before it is made, walking `v` only as far as the budget lasts.
    fn take_value(&mut self, v: &Value) -> Result<(), Spent> {
        let mut stack = vec![v];
        while let Some(v) = stack.pop() {
            self.take(VALUE_BYTES)?;
            match v {
                Value::String(s) => self.take(s.len())?,
                Value::Array(items) => stack.extend(items),
                Value::Object(m) => {
                    for (k, item) in m {
                        self.take(k.len())?;
                        stack.push(item);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// [`ResolveBudget`] ran out; the error is made where the position is known.
struct Spent;

impl Spent {
    fn at(self, pos: SourcePos) -> SpecError {
        SpecError::Limit {
            pos,
            message: format!(
                "the stages' parameters, references and matrix points expanded, come to more \
                 than {} MiB",
                MAX_RESOLVED_BYTES >> 20
            ),
        }
    }
}

/// What one value costs [`ResolveBudget`] besides its text: the size of a `Value`.
const VALUE_BYTES: usize = 32;

/// The pipeline params with the matrix point's values written at their variable paths.
pub(crate) fn point_params(p: &Pipeline, point: &[(String, Value)]) -> Map<String, Value> {
    let mut params = p.params.clone();
    for (var, value) in point {
        let segs: Vec<&str> = var.split('.').collect();
        set_path(&mut params, &segs, value.clone());
    }
    params
}

/// Sets `segs` in `map`, creating (or replacing non-map values with) maps on the way.
pub(crate) fn set_path(map: &mut Map<String, Value>, segs: &[&str], value: Value) {
    let Some((last, init)) = segs.split_last() else {
        return;
    };
    let mut cur = map;
    for seg in init {
        let entry = cur
            .entry(seg.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        cur = entry.as_object_mut().expect("made an object above");
    }
    cur.insert(last.to_string(), value);
}

/// Lexically folds `.` and `..` (the path may not exist yet, so no canonicalize).
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// The merged parameters of `stage` before substitution: written values, then schema
/// defaults for what is not written (a written key replaces its default whole).
/// Values are in schema (sorted) order so that the resolved object is canonical.
pub(crate) fn merged(
    stage: &StageSpec,
    schema: &KindSchema,
) -> Result<Map<String, Value>, SpecError> {
    let empty = Map::new();
    let written = stage.params.as_object().unwrap_or(&empty);
    let mut problems = Vec::new();
    for unknown in written.keys().filter(|k| !schema.params.contains_key(*k)) {
        problems.push(SpecError::UnknownParam {
            pos: stage.param_pos.at(std::slice::from_ref(unknown)).clone(),
            stage: stage.name.clone(),
            param: unknown.clone(),
            valid: schema.params.keys().cloned().collect(),
        });
    }
    let mut out = Map::new();
    for (name, ps) in &schema.params {
        if let Some(v) = written.get(name) {
            out.insert(name.clone(), v.clone());
        } else if let Some(d) = &ps.default {
            out.insert(name.clone(), d.clone());
        } else if ps.required {
            problems.push(SpecError::MissingParam {
                pos: stage.pos.clone(),
                stage: stage.name.clone(),
                param: name.clone(),
            });
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(SpecError::several(problems))
    }
}

/// Resolves `stage` against the point's `params`, charging what it produces to `budget`.
pub(crate) fn resolve_stage(
    p: &Pipeline,
    stage: &StageSpec,
    schema: &KindSchema,
    kinds: &KindRegistry,
    params: &Map<String, Value>,
    budget: &mut ResolveBudget,
) -> Result<Resolved, SpecError> {
    let empty = Map::new();
    let written = stage.params.as_object().unwrap_or(&empty);
    let merged = merged(stage, schema)?;
    let mut out = Map::new();
    // Every problem of every value, not the first: the user fixes them in one go.
    let mut problems = Vec::new();
    // Defaults come from the kind's schema: point at the stage that uses them.
    let pos_of = |path: &[String]| -> SourcePos {
        if path.first().is_some_and(|name| written.contains_key(name)) {
            stage.param_pos.at(path).clone()
        } else {
            stage.pos.clone()
        }
    };
    for (name, value) in merged {
        let ps = &schema.params[&name];
        let mut path = vec![name.clone()];
        let value = substitute(&value, params, &mut path, &pos_of, budget)?;
        let what = format!("stage `{}` parameter `{name}`", stage.name);
        let value = check_value(&what, ps, value, &mut path, &pos_of, &mut problems);
        let value = if ps.ty == ParamType::Path {
            match value {
                Value::String(s) => Value::String(absolute_in(&p.dir, &s)),
                other => other,
            }
        } else {
            value
        };
        out.insert(name, value);
    }

    check_at_most(stage, schema, &out, &pos_of, &mut problems);
    if problems.is_empty()
        && let Some(check) = kinds.check(&stage.kind)
    {
        for pb in check(&Value::Object(out.clone())) {
            let segs: Vec<String> = pb.param.split('.').map(str::to_string).collect();
            let message = if pb.param.is_empty() {
                format!("stage `{}`: {}", stage.name, pb.message)
            } else {
                format!(
                    "stage `{}` parameter `{}`: {}",
                    stage.name, pb.param, pb.message
                )
            };
            problems.push(SpecError::Invalid {
                pos: pos_of(&segs),
                message,
            });
        }
    }
    if !problems.is_empty() {
        return Err(SpecError::several(problems));
    }

    let mut external_inputs = Vec::new();
    for dotted in &schema.external_inputs {
        let segs: Vec<String> = dotted.split('.').map(str::to_string).collect();
        let pos = stage.param_pos.at(&segs).clone();
        let Some(v) = get_mut(&mut out, &segs) else {
            continue;
        };
        match v {
            Value::Null => {}
            Value::String(s) => {
                *s = absolute_in(&p.dir, s);
                external_inputs.push((dotted.clone(), PathBuf::from(&*s)));
            }
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let Value::String(s) = item else {
                        return Err(SpecError::WrongType {
                            pos,
                            what: format!("stage `{}` external input `{dotted}`", stage.name),
                            expected: "a list of paths".into(),
                            got: format!("an item that is {}", describe(item)),
                        });
                    };
                    *s = absolute_in(&p.dir, s);
                    external_inputs.push((format!("{dotted}.{i}"), PathBuf::from(&*s)));
                }
            }
            other => {
                return Err(SpecError::WrongType {
                    pos,
                    what: format!("stage `{}` external input `{dotted}`", stage.name),
                    expected: "a path or a list of paths".into(),
                    got: describe(other),
                });
            }
        }
    }

    let mut key = out.clone();
    for dotted in schema.not_in_key.iter().chain(&schema.external_inputs) {
        let segs: Vec<String> = dotted.split('.').map(str::to_string).collect();
        remove_path(&mut key, &segs);
    }
    // A continuation's parameters are in the key only when used (see ContinueSchema).
    if let Some(c) = &schema.continues {
        if key.get(&c.from).is_some_and(Value::is_null) {
            key.remove(&c.from);
        }
        if key.get(&c.keep) == Some(&Value::Bool(false)) {
            key.remove(&c.keep);
        }
    }
    Ok(Resolved {
        params: Value::Object(out),
        key_params: Value::Object(key),
        external_inputs,
    })
}

fn absolute_in(dir: &Path, s: &str) -> String {
    let path = Path::new(s);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    };
    normalize(&joined).to_string_lossy().into_owned()
}

fn get_mut<'a>(map: &'a mut Map<String, Value>, segs: &[String]) -> Option<&'a mut Value> {
    let (first, rest) = segs.split_first()?;
    let mut cur = map.get_mut(first)?;
    for seg in rest {
        cur = cur.as_object_mut()?.get_mut(seg)?;
    }
    Some(cur)
}

fn remove_path(map: &mut Map<String, Value>, segs: &[String]) {
    match segs {
        [] => {}
        [last] => {
            map.remove(last);
        }
        [first, rest @ ..] => {
            if let Some(Value::Object(inner)) = map.get_mut(first) {
                remove_path(inner, rest);
            }
        }
    }
}

/// Substitutes references in `v` (at `path` inside the stage params).
fn substitute(
    v: &Value,
    params: &Map<String, Value>,
    path: &mut Vec<String>,
    pos_of: &dyn Fn(&[String]) -> SourcePos,
    budget: &mut ResolveBudget,
) -> Result<Value, SpecError> {
    budget
        .take(VALUE_BYTES)
        .map_err(|spent| spent.at(pos_of(path)))?;
    Ok(match v {
        Value::String(s) => {
            let pieces = refs::parse_template(s).map_err(|message| SpecError::Invalid {
                pos: pos_of(path),
                message,
            })?;
            let lookup = |name: &str| {
                refs::lookup(params, name).map_err(|mut hint| {
                    // Most likely a shell variable meant for a command.
                    if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                        hint.push_str(&format!(
                            "; write `$${{{name}}}` for a literal `${{{name}}}`"
                        ));
                    }
                    SpecError::UnknownRef {
                        pos: pos_of(path),
                        name: name.to_string(),
                        hint,
                    }
                })
            };
            match pieces.as_slice() {
                [Piece::Ref(name)] => {
                    let found = lookup(name)?;
                    budget
                        .take_value(found)
                        .map_err(|spent| spent.at(pos_of(path)))?;
                    found.clone()
                }
                _ => {
                    let mut text = String::new();
                    for piece in &pieces {
                        match piece {
                            Piece::Text(t) => {
                                budget
                                    .take(t.len())
                                    .map_err(|spent| spent.at(pos_of(path)))?;
                                text.push_str(t)
                            }
                            Piece::Ref(name) => {
                                // Its text is at least as long as its strings: charged first.
                                let found = lookup(name)?;
                                budget
                                    .take_value(found)
                                    .map_err(|spent| spent.at(pos_of(path)))?;
                                text.push_str(&refs::as_text(found))
                            }
                        }
                    }
                    Value::String(text)
                }
            }
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                out.push(substitute(item, params, path, pos_of, budget)?);
                path.pop();
            }
            Value::Array(out)
        }
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, item) in m {
                budget
                    .take(k.len())
                    .map_err(|spent| spent.at(pos_of(path)))?;
                path.push(k.clone());
                out.insert(k.clone(), substitute(item, params, path, pos_of, budget)?);
                path.pop();
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// "int 3", "string \"abc\"", "map": what a value is, for type errors.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("bool {b}"),
        Value::Number(n) if n.is_f64() => format!("float {n}"),
        Value::Number(n) => format!("int {n}"),
        Value::String(s) => format!("string {}", super::abbreviate(&format!("{s:?}"))),
        Value::Array(_) => "list".into(),
        Value::Object(_) => "map".into(),
    }
}

/// What a parameter of `ty` must be, for type errors.
fn expected(ty: ParamType) -> &'static str {
    match ty {
        ParamType::Bool => "bool",
        ParamType::Int => "int",
        ParamType::Float => "float",
        ParamType::String => "string",
        ParamType::Path => "path (a non-empty string)",
        ParamType::List => "list",
        ParamType::Map => "map",
        ParamType::Any => "anything",
    }
}

/// Checks `v` (at `path`) against its schema: type, allowed values, range, list items and
/// map keys, pushing every problem found. Floats accept (and widen) integers so that
/// `lr: 1` and `lr: 1.0` resolve, and key, identically. Returns the (widened) value.
fn check_value(
    what: &str,
    ps: &ParamSchema,
    v: Value,
    path: &mut Vec<String>,
    pos_of: &dyn Fn(&[String]) -> SourcePos,
    problems: &mut Vec<SpecError>,
) -> Value {
    // An explicit null unsets an optional parameter.
    if v.is_null() && !ps.required {
        return v;
    }
    let ok = match ps.ty {
        ParamType::Bool => v.is_boolean(),
        ParamType::Int => v.is_i64() || v.is_u64(),
        ParamType::Float => v.is_number(),
        ParamType::String => v.is_string(),
        ParamType::Path => v.as_str().is_some_and(|s| !s.is_empty()),
        ParamType::List => v.is_array(),
        ParamType::Map => v.is_object(),
        ParamType::Any => true,
    };
    if !ok {
        problems.push(SpecError::WrongType {
            pos: pos_of(path),
            what: what.to_string(),
            expected: expected(ps.ty).into(),
            got: describe(&v),
        });
        return v;
    }
    if let (Some(choices), Value::String(s)) = (&ps.choices, &v)
        && !choices.contains(s)
    {
        problems.push(SpecError::NotAllowed {
            pos: pos_of(path),
            what: what.to_string(),
            value: s.clone(),
            allowed: choices.clone(),
        });
    }
    if let (Some(range), Some(x)) = (&ps.range, v.as_f64())
        && !range.contains(x)
    {
        problems.push(SpecError::Invalid {
            pos: pos_of(path),
            message: format!("{what}: {v} is outside the allowed range {range}"),
        });
    }
    match v {
        Value::Number(_) if ps.ty == ParamType::Float && !v.is_f64() => {
            v.as_f64().map_or(v, Value::from)
        }
        Value::Array(items) => {
            if let Some(min) = ps.min_items
                && items.len() < min
            {
                problems.push(SpecError::Invalid {
                    pos: pos_of(path),
                    message: format!("{what}: has {} item(s), needs at least {min}", items.len()),
                });
            }
            let Some(item_schema) = &ps.items else {
                return Value::Array(items);
            };
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                path.push(i.to_string());
                let what = format!("{what} item {i}");
                out.push(check_value(
                    &what,
                    item_schema,
                    item,
                    path,
                    pos_of,
                    problems,
                ));
                path.pop();
            }
            Value::Array(out)
        }
        Value::Object(map) => {
            let Some(keys) = &ps.keys else {
                return Value::Object(map);
            };
            if let Some(unknown) = map.keys().find(|k| !keys.contains_key(*k)) {
                path.push(unknown.clone());
                problems.push(SpecError::NotAllowed {
                    pos: pos_of(path),
                    what: format!("{what}: key"),
                    value: unknown.clone(),
                    allowed: keys.keys().cloned().collect(),
                });
                path.pop();
            }
            for (k, ks) in keys {
                if ks.required && ks.default.is_none() && !map.contains_key(k) {
                    problems.push(SpecError::Invalid {
                        pos: pos_of(path),
                        message: format!("{what}: the key `{k}` is required"),
                    });
                }
            }
            let mut out = Map::new();
            for (k, item) in map {
                let item = match keys.get(&k) {
                    Some(ks) => {
                        path.push(k.clone());
                        let what = format!("{what} key `{k}`");
                        let item = check_value(&what, ks, item, path, pos_of, problems);
                        path.pop();
                        item
                    }
                    None => item,
                };
                out.insert(k, item);
            }
            Value::Object(out)
        }
        other => other,
    }
}

/// `at_most: other`: a value may not exceed its sibling's (both numbers; null skips).
fn check_at_most(
    stage: &StageSpec,
    schema: &KindSchema,
    resolved: &Map<String, Value>,
    pos_of: &dyn Fn(&[String]) -> SourcePos,
    problems: &mut Vec<SpecError>,
) {
    for (name, ps) in &schema.params {
        let Some(other) = &ps.at_most else { continue };
        let (Some(x), Some(limit)) = (
            resolved.get(name).and_then(Value::as_f64),
            resolved.get(other).and_then(Value::as_f64),
        ) else {
            continue;
        };
        if x > limit {
            problems.push(SpecError::Invalid {
                pos: pos_of(std::slice::from_ref(name)),
                message: format!(
                    "stage `{}` parameter `{name}`: {} exceeds `{other}` ({})",
                    stage.name, resolved[name], resolved[other]
                ),
            });
        }
    }
}
