//! `docs/stage-kinds.md`, generated from the schemas (a test keeps the file current).

use std::fmt::Write as _;

use serde_json::Value;
use ugc_engine::{ParamSchema, ParamType};

use crate::Kind;

fn type_name(ps: &ParamSchema) -> String {
    let base = match ps.ty {
        ParamType::Bool => "bool",
        ParamType::Int => "int",
        ParamType::Float => "float",
        ParamType::String => "string",
        ParamType::Path => "path",
        ParamType::List => "list",
        ParamType::Map => "map",
        ParamType::Any => "any",
    };
    match &ps.items {
        Some(items) => format!("list of {}", type_name(items)),
        None => base.to_string(),
    }
}

fn constraints(ps: &ParamSchema) -> String {
    let mut c = Vec::new();
    if ps.required {
        c.push("required".to_string());
    }
    if let Some(choices) = &ps.choices {
        c.push(format!("one of {}", choices.join(", ")));
    }
    if let Some(r) = &ps.range {
        c.push(format!("in {r}"));
    }
    if let Some(other) = &ps.at_most {
        c.push(format!("at most `{other}`"));
    }
    if let Some(n) = ps.min_items {
        c.push(format!("at least {n} item(s)"));
    }
    if let Some(items) = &ps.items {
        let inner = constraints(items);
        if !inner.is_empty() {
            c.push(format!("items: {inner}"));
        }
    }
    if let Some(keys) = &ps.keys {
        let names: Vec<String> = keys.keys().map(|k| format!("`{k}`")).collect();
        c.push(format!("keys {}", names.join(", ")));
    }
    c.join("; ")
}

fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn value(v: &Option<Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(v) => format!("`{v}`"),
    }
}

/// The reference of every kind, in the order of the list in `lib.rs`.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# Stage kinds\n\n\
         Generated from `crates/kinds/src/<kind>/schema.yaml` by `ugc-kinds`; do not edit by \
         hand. Refresh with `UPDATE_DOCS=1 cargo test -p ugc-kinds`. Every constraint below \
         is checked by `ugc-pipe run`, `run --dry-run` and `status` before any stage starts \
         (docs/architecture.md).\n",
    );
    for &kind in Kind::ALL {
        let s = kind.schema();
        let _ = writeln!(
            out,
            "\n## `{}` (version {})\n\n{}\n",
            s.kind,
            s.version,
            cell(&s.doc)
        );
        let mut facts = Vec::new();
        if s.gpu {
            facts.push("runs on the accelerator when there is one".to_string());
        }
        if !s.deps.required.is_empty() {
            facts.push(format!("needs deps of kind {}", s.deps.required.join(", ")));
        }
        if !s.deps.optional.is_empty() {
            facts.push(format!("optional deps {}", s.deps.optional.join(", ")));
        }
        if !s.external_inputs.is_empty() {
            facts.push(format!(
                "external inputs (by content) {}",
                s.external_inputs.join(", ")
            ));
        }
        if !s.not_in_key.is_empty() {
            facts.push(format!("not in the cache key {}", s.not_in_key.join(", ")));
        }
        for f in facts {
            let _ = writeln!(out, "- {f}");
        }
        let _ = writeln!(
            out,
            "\n| parameter | type | default | constraints | doc |\n|---|---|---|---|---|"
        );
        for (name, ps) in &s.params {
            let default = match (&ps.default, &ps.example) {
                (Some(_), _) => value(&ps.default),
                (None, Some(_)) => format!("(e.g. {})", value(&ps.example)),
                (None, None) => String::new(),
            };
            let mut doc = cell(&ps.doc);
            if let Some(how) = &ps.how_to_get {
                doc.push_str(&format!(" How to get it: {}", cell(how)));
            }
            let _ = writeln!(
                out,
                "| `{name}` | {} | {} | {} | {doc} |",
                type_name(ps),
                cell(&default),
                cell(&constraints(ps)),
            );
        }
    }
    out
}
