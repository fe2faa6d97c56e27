//! A positioned YAML tree, parsed by serde-saphyr under a resource budget.
//!
//! Semantic errors (unknown key, wrong type, ...) must point at the offending node, so the
//! document is first read into [`YNode`]s that keep the line/column of every node, then
//! converted to `serde_json::Value` piece by piece by the spec loader.

use std::fmt;
use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::options::DuplicateKeyPolicy;
use serde_saphyr::{Budget, Location, Spanned};

use super::{SourcePos, SpecError};

/// One YAML node with the position where it is written.
#[derive(Debug, Clone)]
pub(crate) struct YNode {
    pub value: YValue,
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone)]
pub(crate) enum YValue {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<YNode>),
    /// Entries in file order; duplicate keys are kept so the loader can report them.
    Map(Vec<(YNode, YNode)>),
}

impl YNode {
    pub fn pos(&self, file: &Path) -> SourcePos {
        SourcePos::new(file, self.line, self.col)
    }

    /// The node's text if it is a string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            YValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A short name of the node's YAML type, for "expected X, got Y" messages.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            YValue::Null => "null",
            YValue::Bool(_) => "bool",
            YValue::Int(_) | YValue::UInt(_) => "int",
            YValue::Float(_) => "float",
            YValue::Str(_) => "string",
            YValue::Seq(_) => "list",
            YValue::Map(_) => "map",
        }
    }

    /// The key as text: scalar keys (`1:`, `true:`) are stringified, collections refused.
    pub fn key_text(&self, file: &Path) -> Result<String, SpecError> {
        match &self.value {
            YValue::Str(s) => Ok(s.clone()),
            YValue::Bool(b) => Ok(b.to_string()),
            YValue::Int(i) => Ok(i.to_string()),
            YValue::UInt(u) => Ok(u.to_string()),
            YValue::Float(f) => Ok(f.to_string()),
            YValue::Null => Ok("null".to_string()),
            YValue::Seq(_) | YValue::Map(_) => Err(SpecError::WrongType {
                pos: self.pos(file),
                what: "mapping key".into(),
                expected: "a scalar".into(),
                got: self.type_name().into(),
            }),
        }
    }

    /// Converts to JSON, refusing what JSON cannot hold (non-finite floats, duplicate keys).
    pub fn to_json(&self, file: &Path) -> Result<Value, SpecError> {
        Ok(match &self.value {
            YValue::Null => Value::Null,
            YValue::Bool(b) => Value::Bool(*b),
            YValue::Int(i) => Value::from(*i),
            YValue::UInt(u) => Value::from(*u),
            YValue::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => Value::Number(n),
                None => {
                    return Err(SpecError::Invalid {
                        pos: self.pos(file),
                        message: format!("non-finite number `{f}` is not allowed"),
                    });
                }
            },
            YValue::Str(s) => Value::String(s.clone()),
            YValue::Seq(items) => Value::Array(
                items
                    .iter()
                    .map(|n| n.to_json(file))
                    .collect::<Result<_, _>>()?,
            ),
            YValue::Map(entries) => {
                let mut map = serde_json::Map::new();
                for (k, v) in entries {
                    let key = k.key_text(file)?;
                    if map.contains_key(&key) {
                        return Err(SpecError::Invalid {
                            pos: k.pos(file),
                            message: format!("duplicate key `{key}`"),
                        });
                    }
                    map.insert(key, v.to_json(file)?);
                }
                Value::Object(map)
            }
        })
    }
}

impl<'de> Deserialize<'de> for YNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<YValue>::deserialize(d)?;
        Ok(YNode {
            value: s.value,
            line: s.referenced.line() as usize,
            col: s.referenced.column() as usize,
        })
    }
}

impl<'de> Deserialize<'de> for YValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(YValueVisitor)
    }
}

struct YValueVisitor;

impl<'de> Visitor<'de> for YValueVisitor {
    type Value = YValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<YValue, E> {
        Ok(YValue::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<YValue, E> {
        Ok(YValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<YValue, D::Error> {
        YValue::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<YValue, E> {
        Ok(YValue::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<YValue, E> {
        Ok(YValue::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<YValue, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => YValue::Int(i),
            Err(_) => YValue::UInt(v),
        })
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<YValue, E> {
        i64::try_from(v)
            .map(YValue::Int)
            .map_err(|_| E::custom(format!("integer {v} does not fit in 64 bits")))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<YValue, E> {
        u64::try_from(v)
            .map(|u| self.visit_u64::<E>(u).unwrap_or(YValue::UInt(u)))
            .map_err(|_| E::custom(format!("integer {v} does not fit in 64 bits")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<YValue, E> {
        Ok(YValue::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<YValue, E> {
        Ok(YValue::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<YValue, E> {
        Ok(YValue::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, _v: &[u8]) -> Result<YValue, E> {
        Err(E::custom("binary values are not supported"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<YValue, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = seq.next_element::<YNode>()? {
            items.push(n);
        }
        Ok(YValue::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<YValue, A::Error> {
        let mut entries = Vec::new();
        // Keys are read as text so that `n:` or `1:` are names, not a bool or a number.
        while let Some(k) = map.next_key::<Spanned<String>>()? {
            let k = YNode {
                value: YValue::Str(k.value),
                line: k.referenced.line() as usize,
                col: k.referenced.column() as usize,
            };
            let v = map.next_value::<YNode>()?;
            entries.push((k, v));
        }
        Ok(YValue::Map(entries))
    }
}

/// Resource limits applied while parsing (see `LoadOptions`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_depth: usize,
    pub max_nodes: usize,
}

/// Parses one YAML document into a positioned tree, enforcing `limits` and serde-saphyr's
/// alias-expansion budget (billion laughs) while parsing, before anything is materialised.
pub(crate) fn parse(text: &str, file: &Path, limits: Limits) -> Result<YNode, SpecError> {
    let mut budget = Budget::default();
    budget.max_depth = limits.max_depth;
    budget.max_nodes = limits.max_nodes;
    budget.max_documents = 1;
    let options = serde_saphyr::options! {
        budget: Some(budget),
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
        with_snippet: false,
        // YAML 1.2 booleans only: `n`, `no`, `off` stay strings (the "Norway problem").
        strict_booleans: true,
    };
    if text.trim().is_empty() {
        return Err(SpecError::Invalid {
            pos: SourcePos::new(file, 1, 1),
            message: "empty pipeline file".into(),
        });
    }
    serde_saphyr::from_str_with_options::<YNode>(text, options)
        .map_err(|e| from_saphyr(e, file, limits))
}

fn loc_pos(file: &Path, loc: Option<Location>) -> SourcePos {
    match loc {
        Some(l) if l.line() > 0 => SourcePos::new(file, l.line() as usize, l.column() as usize),
        _ => SourcePos::new(file, 1, 1),
    }
}

fn from_saphyr(e: serde_saphyr::Error, file: &Path, limits: Limits) -> SpecError {
    use serde_saphyr::Error as E;
    use serde_saphyr::budget::BudgetBreach as B;
    let pos = loc_pos(file, e.location());
    // An error met while replaying an alias wraps the real one; the position stays the use site.
    let mut inner = &e;
    while let E::AliasError { error, .. } = inner {
        inner = error;
    }
    let limit = |message: String| SpecError::Limit {
        pos: pos.clone(),
        message,
    };
    match inner {
        E::Budget { breach, .. } => limit(match breach {
            B::Depth { .. } => format!("nesting deeper than {} levels", limits.max_depth),
            B::Nodes { .. } => format!(
                "more than {} YAML nodes (aliases counted expanded)",
                limits.max_nodes
            ),
            B::Documents { .. } => "more than one YAML document".to_string(),
            other => format!("YAML budget exceeded: {other:?}"),
        }),
        E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. }
        | E::AliasReplayCounterOverflow { .. } => {
            limit(strip_location(&inner.without_snippet().to_string()))
        }
        _ => SpecError::Yaml {
            pos,
            message: strip_location(&inner.without_snippet().to_string()),
        },
    }
}

/// serde-saphyr appends " at line X, column Y" itself; ours is the `file:line:col:` prefix.
fn strip_location(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or(msg).trim();
    match first.rfind(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}
