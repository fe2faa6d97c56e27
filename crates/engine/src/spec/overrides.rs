//! `--set a.b=v` overrides.
//!
//! The first segment decides the target: a top-level param (`--set label_ratio=0.5`,
//! `--set model.ngf=32`) or a stage's params (`--set split.seed=3`). Values are YAML
//! scalars or flow collections, so `3` is an int, `true` a bool and `[1, 2]` a list.

use std::path::Path;

use serde_json::{Map, Value};

use super::refs::paths_overlap;
use super::resolve::describe;
use super::suggest::did_you_mean;
use super::{Pipeline, SourcePos, SpecError, yaml};
use crate::stage::KindRegistry;

/// Applies one `--set` flag to the loaded pipeline.
/// `max_depth` bounds the path's segments as the file's nesting is bounded: each one can
/// create a level of params.
pub(crate) fn apply(
    p: &mut Pipeline,
    flag: &str,
    kinds: &KindRegistry,
    max_depth: usize,
) -> Result<(), SpecError> {
    let err = |message: String| SpecError::Override {
        flag: flag.to_string(),
        message,
    };
    let (lhs, rhs) = flag
        .split_once('=')
        .ok_or_else(|| err("expected `path=value`, e.g. `--set split.seed=3`".into()))?;
    let segs: Vec<&str> = lhs.trim().split('.').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(err(format!("`{lhs}` is not a dotted path")));
    }
    if segs.len() > max_depth {
        return Err(err(format!(
            "`{}` has {} segments, deeper than {max_depth} levels",
            super::abbreviate(lhs),
            segs.len()
        )));
    }
    let value = parse_value(rhs).map_err(err)?;
    // Positions of overridden values name the flag, so a later type error says which flag.
    let pos = SourcePos::new(Path::new(&format!("--set {flag}")), 1, lhs.len() + 2);
    let first = segs[0];

    let is_param = p.params.contains_key(first)
        || p.matrix
            .iter()
            .any(|(v, _)| v.split('.').next() == Some(first));
    let stage_idx = p.stages.iter().position(|s| s.name == first);
    match (is_param, stage_idx) {
        (true, Some(_)) => Err(err(format!(
            "`{first}` names both a param and a stage; rename one of them"
        ))),
        (true, None) => {
            if let Some((var, _)) = p.matrix.iter().find(|(v, _)| paths_overlap(v, lhs)) {
                return Err(err(format!(
                    "`{var}` is a matrix variable; edit its list under `matrix:` instead"
                )));
            }
            set_existing(&mut p.params, &segs, value).map_err(err)?;
            let path: Vec<String> = segs.iter().map(|s| s.to_string()).collect();
            p.param_pos.set(&path, pos);
            Ok(())
        }
        (false, Some(i)) => {
            let stage = &mut p.stages[i];
            let Some(param) = segs.get(1) else {
                return Err(err(format!(
                    "name a parameter of stage `{first}`, e.g. `--set {first}.<param>=...`"
                )));
            };
            if *param == "resources" {
                return set_resources(stage, &segs[2..], value, pos).map_err(err);
            }
            let schema = kinds
                .schema(&stage.kind)
                .ok_or_else(|| err(format!("stage `{first}` has unknown kind `{}`", stage.kind)))?;
            let Some(ps) = schema.params.get(*param) else {
                return Err(err(format!(
                    "stage `{first}` (kind {}) has no parameter `{param}`{} (valid: {})",
                    stage.kind,
                    did_you_mean(param, schema.params.keys()),
                    schema.params.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            };
            let written = stage
                .params
                .as_object_mut()
                .expect("stage params are a map once loaded");
            if segs.len() == 2 {
                written.insert(param.to_string(), value);
            } else {
                // A nested override starts from what is written, else the default.
                if !written.contains_key(*param) {
                    let base = ps.default.clone().unwrap_or(Value::Object(Map::new()));
                    written.insert(param.to_string(), base);
                }
                set_nested(written, &segs[1..], value).map_err(err)?;
            }
            let path: Vec<String> = segs[1..].iter().map(|s| s.to_string()).collect();
            stage.param_pos.set(&path, pos);
            Ok(())
        }
        (false, None) => {
            let names: Vec<&String> = p
                .params
                .keys()
                .chain(p.stages.iter().map(|s| &s.name))
                .collect();
            Err(err(format!(
                "`{first}` is neither a param (params: {}) nor a stage (stages: {}){}",
                join(p.params.keys()),
                join(p.stages.iter().map(|s| &s.name)),
                did_you_mean(first, names)
            )))
        }
    }
}

/// `--set STAGE.resources.KEY=V`, or `--set STAGE.resources={KEY: V, ...}` for several.
fn set_resources(
    stage: &mut super::StageSpec,
    keys: &[&str],
    value: Value,
    pos: SourcePos,
) -> Result<(), String> {
    let name = stage.name.clone();
    let pairs: Vec<(String, Value)> = match (keys, value) {
        ([key], value) => vec![(key.to_string(), value)],
        ([], Value::Object(m)) => m.into_iter().collect(),
        ([], other) => {
            return Err(format!(
                "`{name}.resources` takes a map, e.g. `{{devices: 2}}`; got {}",
                describe(&other)
            ));
        }
        _ => {
            return Err(format!(
                "name one resource, e.g. `--set {name}.resources.devices=2` (valid: {})",
                super::resources::RESOURCE_KEYS.join(", ")
            ));
        }
    };
    for (key, value) in pairs {
        stage.resources.set(&key, &value)?;
        stage.resources_pos.set(&[key], pos.clone());
    }
    Ok(())
}

fn join<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Parses the right-hand side as YAML (scalar or flow collection). An empty value is "".
fn parse_value(rhs: &str) -> Result<Value, String> {
    if rhs.trim().is_empty() {
        return Ok(Value::String(String::new()));
    }
    let file = Path::new("--set");
    let limits = yaml::Limits {
        max_depth: 16,
        max_nodes: 10_000,
    };
    let bad = |e: SpecError| {
        let why = match e {
            SpecError::Yaml { message, .. }
            | SpecError::Limit { message, .. }
            | SpecError::Invalid { message, .. } => message,
            other => other.to_string(),
        };
        format!("value `{rhs}` is not valid YAML: {why}")
    };
    let node = yaml::parse(rhs, file, limits).map_err(bad)?;
    node.to_json(file).map_err(bad)
}

/// Replaces an existing value in the top-level params. The path must exist: a typo would
/// otherwise add a value that nothing reads.
fn set_existing(
    params: &mut Map<String, Value>,
    segs: &[&str],
    value: Value,
) -> Result<(), String> {
    let (last, init) = segs.split_last().expect("at least one segment");
    let mut cur = params;
    let mut walked = String::from("params");
    for seg in init {
        walked.push('.');
        walked.push_str(seg);
        let hint = did_you_mean(seg, cur.keys());
        let next = cur
            .get_mut(*seg)
            .ok_or_else(|| format!("`{walked}` does not exist{hint}"))?;
        let desc = describe(next);
        cur = next
            .as_object_mut()
            .ok_or_else(|| format!("`{walked}` is {desc}, not a map"))?;
    }
    if !cur.contains_key(*last) {
        return Err(format!(
            "`{walked}.{last}` does not exist{} (keys there: {})",
            did_you_mean(last, cur.keys()),
            join(cur.keys())
        ));
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

/// Sets a nested path inside a stage's params, creating maps for missing segments.
fn set_nested(map: &mut Map<String, Value>, segs: &[&str], value: Value) -> Result<(), String> {
    let (last, init) = segs.split_last().expect("at least one segment");
    let mut cur = map;
    let mut walked = String::new();
    for seg in init {
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(seg);
        let next = cur
            .entry(seg.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        let desc = describe(next);
        cur = next
            .as_object_mut()
            .ok_or_else(|| format!("`{walked}` is {desc}, not a map"))?;
    }
    cur.insert(last.to_string(), value);
    Ok(())
}
