//! Versioned cache keys: what a stage's output depends on, and its stable digest.
//!
//! The key is the blake3 digest of the canonical JSON of a [`KeyMaterial`] (object keys
//! sorted by their UTF-8 bytes, no whitespace). Canonical form is written here by hand
//! rather than relying on `serde_json`'s map order, because the workspace enables
//! `preserve_order`, which would make keys depend on how parameters were written.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version of the key format. Bump it when [`KeyMaterial`] or the canonical encoding
/// changes: every old record then simply misses (no wrong hits).
pub const KEY_SCHEMA_VERSION: u32 = 1;

/// The 64-hex-digit blake3 key of a stage output.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CacheKey(String);

/// A string that is not a cache key (64 lowercase hexadecimal digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cache key `{0}`: expected 64 lowercase hexadecimal digits")]
pub struct InvalidKey(pub String);

impl CacheKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `s` has the form of a key; used to tell key-named files from others.
    pub fn is_valid(s: &str) -> bool {
        s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    pub(crate) fn from_hash(hash: blake3::Hash) -> CacheKey {
        CacheKey(hash.to_hex().to_string())
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for CacheKey {
    type Err = InvalidKey;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if CacheKey::is_valid(s) {
            Ok(CacheKey(s.to_string()))
        } else {
            Err(InvalidKey(s.to_string()))
        }
    }
}

impl Serialize for CacheKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CacheKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Everything a stage's output depends on. Paths, timestamps and resource requests are
/// deliberately absent so keys are stable across runs, machines and checkouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyMaterial {
    pub key_schema: u32,
    pub kind: String,
    pub kind_version: u32,
    /// The parameters the stage reads (`not_in_key` removed, external paths replaced).
    pub params: Value,
    /// Dependency stage name -> tree digest of that dependency's committed output.
    pub upstream: BTreeMap<String, String>,
    /// Parameter path (`a.b`, `inputs[2]`) -> content digest of the external file or dir.
    pub external: BTreeMap<String, String>,
    /// Environment fingerprint: ugc-pipe version, libtorch version, device kind, flags.
    pub env: BTreeMap<String, String>,
}

impl KeyMaterial {
    /// Material for `kind` at the current [`KEY_SCHEMA_VERSION`], with empty maps.
    pub fn new(kind: impl Into<String>, kind_version: u32, params: Value) -> KeyMaterial {
        KeyMaterial {
            key_schema: KEY_SCHEMA_VERSION,
            kind: kind.into(),
            kind_version,
            params,
            upstream: BTreeMap::new(),
            external: BTreeMap::new(),
            env: BTreeMap::new(),
        }
    }

    /// Canonical JSON: sorted object keys, no whitespace. The input of [`Self::key`].
    pub fn canonical_json(&self) -> String {
        // Serializing a struct of strings, maps and a Value cannot fail.
        let value = serde_json::to_value(self).expect("KeyMaterial serializes to JSON");
        let mut out = String::new();
        write_canonical(&value, &mut out);
        out
    }

    /// The cache key: blake3 of [`Self::canonical_json`], in hex.
    pub fn key(&self) -> CacheKey {
        CacheKey::from_hash(blake3::hash(self.canonical_json().as_bytes()))
    }

    /// What changed from `old` to `self`, component by component, for `ugc-pipe explain`
    /// and `status` ("stale because ..."). Empty when both give the same key.
    pub fn diff(&self, old: &KeyMaterial) -> Vec<KeyChange> {
        let mut changes = Vec::new();
        if self.key_schema != old.key_schema {
            changes.push(KeyChange::KeySchema {
                old: old.key_schema,
                new: self.key_schema,
            });
        }
        if self.kind != old.kind {
            changes.push(KeyChange::Kind {
                old: old.kind.clone(),
                new: self.kind.clone(),
            });
        }
        if self.kind_version != old.kind_version {
            changes.push(KeyChange::KindVersion {
                old: old.kind_version,
                new: self.kind_version,
            });
        }
        diff_values("", Some(&old.params), Some(&self.params), &mut changes);
        for (name, old_v, new_v) in diff_maps(&old.upstream, &self.upstream) {
            changes.push(KeyChange::Upstream {
                dep: name,
                old: old_v,
                new: new_v,
            });
        }
        for (name, old_v, new_v) in diff_maps(&old.external, &self.external) {
            changes.push(KeyChange::External {
                path: name,
                old: old_v,
                new: new_v,
            });
        }
        for (name, old_v, new_v) in diff_maps(&old.env, &self.env) {
            changes.push(KeyChange::Env {
                name,
                old: old_v,
                new: new_v,
            });
        }
        changes
    }
}

/// One component of a cache key that differs between two materials. `None` = absent.
/// Parameter values are shown as compact JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "component", rename_all = "snake_case")]
pub enum KeyChange {
    KeySchema {
        old: u32,
        new: u32,
    },
    Kind {
        old: String,
        new: String,
    },
    KindVersion {
        old: u32,
        new: u32,
    },
    Param {
        path: String,
        old: Option<String>,
        new: Option<String>,
    },
    Upstream {
        dep: String,
        old: Option<String>,
        new: Option<String>,
    },
    External {
        path: String,
        old: Option<String>,
        new: Option<String>,
    },
    Env {
        name: String,
        old: Option<String>,
        new: Option<String>,
    },
}

fn show(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("(absent)")
}

/// Digests are shortened to 12 digits for people; the full ones are in `--json`.
fn short(v: &Option<String>) -> String {
    match v {
        Some(d) if d.len() > 12 => d[..12].to_string(),
        Some(d) => d.clone(),
        None => "(absent)".to_string(),
    }
}

impl fmt::Display for KeyChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyChange::KeySchema { old, new } => {
                write!(f, "cache key schema changed: {old} -> {new}")
            }
            KeyChange::Kind { old, new } => write!(f, "stage kind changed: {old} -> {new}"),
            KeyChange::KindVersion { old, new } => {
                write!(f, "kind version changed: {old} -> {new}")
            }
            KeyChange::Param { path, old, new } => {
                write!(f, "param `{path}` changed: {} -> {}", show(old), show(new))
            }
            KeyChange::Upstream { dep, old, new } => write!(
                f,
                "output of dependency `{dep}` changed: {} -> {}",
                short(old),
                short(new)
            ),
            KeyChange::External { path, old, new } => write!(
                f,
                "contents of external input `{path}` changed: {} -> {}",
                short(old),
                short(new)
            ),
            KeyChange::Env { name, old, new } => {
                write!(
                    f,
                    "environment `{name}` changed: {} -> {}",
                    show(old),
                    show(new)
                )
            }
        }
    }
}

fn diff_maps(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<(String, Option<String>, Option<String>)> {
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|n| {
            let (o, w) = (old.get(n), new.get(n));
            (o != w).then(|| (n.clone(), o.cloned(), w.cloned()))
        })
        .collect()
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn compact(v: &Value) -> String {
    let mut s = String::new();
    write_canonical(v, &mut s);
    s
}

/// Recursive parameter diff: objects by key (`a.b`), arrays by index (`a[2]`) when their
/// lengths match, otherwise the whole value.
fn diff_values(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<KeyChange>) {
    match (old, new) {
        (Some(Value::Object(o)), Some(Value::Object(n))) => {
            let mut names: Vec<&String> = o.keys().chain(n.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                diff_values(&join(path, name), o.get(name), n.get(name), out);
            }
        }
        (Some(Value::Array(o)), Some(Value::Array(n))) if o.len() == n.len() => {
            for (i, (a, b)) in o.iter().zip(n).enumerate() {
                diff_values(&format!("{path}[{i}]"), Some(a), Some(b), out);
            }
        }
        (o, n) => {
            if o != n {
                out.push(KeyChange::Param {
                    path: if path.is_empty() {
                        "(params)".to_string()
                    } else {
                        path.to_string()
                    },
                    old: o.map(compact),
                    new: n.map(compact),
                });
            }
        }
    }
}

/// Writes `v` as canonical JSON: object keys sorted by bytes, no whitespace, strings and
/// numbers in `serde_json`'s (deterministic) notation.
pub(crate) fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(val, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn material() -> KeyMaterial {
        let mut m = KeyMaterial::new(
            "distill",
            3,
            json!({"lr": 0.1, "steps": 100, "teachers": ["wide", "deep"], "loss": {"l1": 100.0, "tv": 1e-5}}),
        );
        m.upstream.insert("split".into(), "a".repeat(64));
        m.external.insert("dataset.root".into(), "b".repeat(64));
        m.env.insert("ugc-pipe".into(), "0.1.0".into());
        m.env.insert("device".into(), "cpu".into());
        m
    }

    #[test]
    fn same_material_same_key_regardless_of_param_order() {
        let a = material();
        let mut b = material();
        b.params = json!({"teachers": ["wide", "deep"], "loss": {"tv": 1e-5, "l1": 100.0}, "steps": 100, "lr": 0.1});
        assert_eq!(a.key(), b.key());
        assert_eq!(a.canonical_json(), b.canonical_json());
        assert!(!a.canonical_json().contains(' '));
    }

    /// Catches any accidental change of the key format (field names, encoding, hash).
    /// If this fails on purpose, bump KEY_SCHEMA_VERSION and update the constant.
    #[test]
    fn golden_key() {
        let m = material();
        assert_eq!(
            m.canonical_json(),
            r#"{"env":{"device":"cpu","ugc-pipe":"0.1.0"},"external":{"dataset.root":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"},"key_schema":1,"kind":"distill","kind_version":3,"params":{"loss":{"l1":100.0,"tv":0.00001},"lr":0.1,"steps":100,"teachers":["wide","deep"]},"upstream":{"split":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}"#
        );
        assert_eq!(m.key().as_str(), GOLDEN);
    }
    const GOLDEN: &str = "b82b834309e0a3ebc2eb73af56d0769efafb85268841fcc375c45aee560a1c47";

    #[test]
    fn every_component_changes_the_key() {
        let base = material();
        let k = base.key();
        let mut m = material();
        m.params["lr"] = json!(0.2);
        assert_ne!(m.key(), k);
        let mut m = material();
        m.kind_version = 4;
        assert_ne!(m.key(), k);
        let mut m = material();
        m.upstream.insert("split".into(), "c".repeat(64));
        assert_ne!(m.key(), k);
        let mut m = material();
        m.external.clear();
        assert_ne!(m.key(), k);
        let mut m = material();
        m.env.insert("device".into(), "cuda".into());
        assert_ne!(m.key(), k);
    }

    #[test]
    fn diff_names_each_changed_component() {
        let old = material();
        let mut new = material();
        new.params["lr"] = json!(0.2);
        new.params["loss"]["tv"] = json!(0.0);
        new.params["teachers"][1] = json!("multi");
        new.params["extra"] = json!(true);
        new.kind_version = 4;
        new.upstream.insert("split".into(), "c".repeat(64));
        new.env.remove("device");
        let changes = new.diff(&old);
        assert_eq!(
            changes,
            vec![
                KeyChange::KindVersion { old: 3, new: 4 },
                KeyChange::Param {
                    path: "extra".into(),
                    old: None,
                    new: Some("true".into())
                },
                KeyChange::Param {
                    path: "loss.tv".into(),
                    old: Some("0.00001".into()),
                    new: Some("0.0".into())
                },
                KeyChange::Param {
                    path: "lr".into(),
                    old: Some("0.1".into()),
                    new: Some("0.2".into())
                },
                KeyChange::Param {
                    path: "teachers[1]".into(),
                    old: Some("\"deep\"".into()),
                    new: Some("\"multi\"".into())
                },
                KeyChange::Upstream {
                    dep: "split".into(),
                    old: Some("a".repeat(64)),
                    new: Some("c".repeat(64))
                },
                KeyChange::Env {
                    name: "device".into(),
                    old: Some("cpu".into()),
                    new: None
                },
            ]
        );
        assert_eq!(changes[3].to_string(), "param `lr` changed: 0.1 -> 0.2");
        assert_eq!(
            changes[5].to_string(),
            "output of dependency `split` changed: aaaaaaaaaaaa -> cccccccccccc"
        );
        assert!(material().diff(&material()).is_empty());
    }

    #[test]
    fn key_parsing_is_validated() {
        let k = material().key();
        assert_eq!(k.as_str().parse::<CacheKey>().unwrap(), k);
        assert!("abc".parse::<CacheKey>().is_err());
        assert!("G".repeat(64).parse::<CacheKey>().is_err());
        assert!("A".repeat(64).parse::<CacheKey>().is_err());
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<CacheKey>(&json).unwrap(), k);
        assert!(serde_json::from_str::<CacheKey>("\"zz\"").is_err());
    }
}
