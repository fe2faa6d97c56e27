//! The Slurm executor's settings: an `executor:` mapping in the pipeline, a `--profile`
//! file (the same mapping at its top level), and command-line overrides (`key=value`),
//! applied in that order, later wins key by key (a profile is the site's choice and is
//! named explicitly, so it beats the portable pipeline; a flag beats both). Unknown keys
//! and bad values are refused with `file:line:col` (or the flag), all at once.
//!
//! Also the per-stage request (`devices, cpus, mem, time, partition`): a plain struct the
//! spec's `resources:` block converts into, parsed with the same value rules.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::spec::SourcePos;

/// Where a setting was written: a position in a YAML file or a command-line flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(SourcePos),
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{p}"),
            Origin::Flag(s) => write!(f, "{s}"),
        }
    }
}

/// Why settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{at}: unknown key `{key}` in the executor settings (valid: {})", KEYS.join(", "))]
    UnknownKey { at: Origin, key: String },
    #[error("{at}: `{key}`: {message}")]
    Invalid {
        at: Origin,
        key: String,
        message: String,
    },
    #[error("{at}: {message}")]
    Yaml { at: Origin, message: String },
    #[error("{path}: cannot read the profile: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Several(Vec<SettingsError>),
}

/// The keys of an executor mapping, in the order the docs list them.
pub const KEYS: &[&str] = &[
    "partition",
    "account",
    "qos",
    "time",
    "sbatch_args",
    "max_jobs",
    "head_kinds",
    "gpus_per_node",
    "grace",
    "lost_grace",
    "heartbeat",
    "poll_min",
    "poll_max",
    "resubmit_limit",
];

/// A Slurm time limit, in whole seconds (Slurm rounds up to minutes itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeLimit(pub u64);

impl TimeLimit {
    /// Slurm's formats: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`.
    pub fn parse(s: &str) -> Result<TimeLimit, String> {
        let bad = || {
            format!("`{s}` is not a Slurm time limit (minutes, M:S, H:M:S, D-H, D-H:M or D-H:M:S)")
        };
        let num = |t: &str| -> Result<u64, String> {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse::<u64>().map_err(|_| bad())
        };
        let s = s.trim();
        let (days, rest) = match s.split_once('-') {
            Some((d, r)) => (Some(num(d)?), r),
            None => (None, s),
        };
        let parts = rest.split(':').map(num).collect::<Result<Vec<_>, _>>()?;
        let secs = match (days, parts.as_slice()) {
            (None, [m]) => m * 60,
            (None, [m, s]) => m * 60 + s,
            (None, [h, m, s]) => h * 3600 + m * 60 + s,
            (Some(d), [h]) => d * 86400 + h * 3600,
            (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
            (Some(d), [h, m, s]) => d * 86400 + h * 3600 + m * 60 + s,
            _ => return Err(bad()),
        };
        if secs == 0 {
            return Err(format!("`{s}`: a time limit must be longer than 0"));
        }
        Ok(TimeLimit(secs))
    }

    /// As `sbatch --time` takes it: `D-HH:MM:SS`.
    pub fn to_slurm(self) -> String {
        let s = self.0;
        format!(
            "{}-{:02}:{:02}:{:02}",
            s / 86400,
            s % 86400 / 3600,
            s % 3600 / 60,
            s % 60
        )
    }
}

/// A memory request in MiB (`--mem` takes `<n>[K|M|G|T]`, M when bare).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemMiB(pub u64);

impl MemMiB {
    pub fn parse(s: &str) -> Result<MemMiB, String> {
        let t = s.trim();
        let bad = || format!("`{s}` is not a memory size (a number with K, M, G or T; M if bare)");
        let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => (&t[..i], &t[i..]),
            None => (t, "M"),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let kib = match unit.to_ascii_uppercase().trim_end_matches('B') {
            "K" => n,
            "M" => n.checked_mul(1 << 10).ok_or_else(bad)?,
            "G" => n.checked_mul(1 << 20).ok_or_else(bad)?,
            "T" => n.checked_mul(1 << 30).ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        let mib = kib.div_ceil(1 << 10);
        if mib == 0 {
            return Err(format!("`{s}`: a memory request must be more than 0"));
        }
        Ok(MemMiB(mib))
    }
}

/// What one stage asks of Slurm. Not in the cache key: where a stage runs does not change
/// what it produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRequest {
    /// Data-parallel ranks: GPUs for an accelerator stage, processes otherwise.
    pub devices: u32,
    /// CPUs per rank; Slurm's default (1) when unset.
    pub cpus: Option<u32>,
    /// Memory per node; the cluster's `DefMemPerCPU` when unset.
    pub mem: Option<MemMiB>,
    /// The stage's time limit; the executor's `time`, then the partition's default.
    pub time: Option<TimeLimit>,
    /// The stage's partition; the executor's `partition` when unset.
    pub partition: Option<String>,
    /// The stage needs its node(s) alone (`resources.exclusive`, e.g. a latency
    /// measurement): `--exclusive`, so no other job shares them.
    pub exclusive: bool,
}

impl Default for StageRequest {
    fn default() -> Self {
        StageRequest {
            devices: 1,
            cpus: None,
            mem: None,
            time: None,
            partition: None,
            exclusive: false,
        }
    }
}

impl StageRequest {
    /// From the text of a `resources:` block's fields; the error names the field.
    pub fn parse(
        devices: u32,
        cpus: Option<u32>,
        mem: Option<&str>,
        time: Option<&str>,
        partition: Option<&str>,
    ) -> Result<StageRequest, (&'static str, String)> {
        if devices == 0 {
            return Err(("devices", "must be at least 1".into()));
        }
        if cpus == Some(0) {
            return Err(("cpus", "must be at least 1".into()));
        }
        let partition = match partition {
            Some(p) => Some(check_word(p).map_err(|m| ("partition", m))?.to_string()),
            None => None,
        };
        Ok(StageRequest {
            devices,
            cpus,
            mem: mem.map(MemMiB::parse).transpose().map_err(|m| ("mem", m))?,
            time: time
                .map(TimeLimit::parse)
                .transpose()
                .map_err(|m| ("time", m))?,
            partition,
            exclusive: false,
        })
    }
}

/// The executor's settings, defaults first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmSettings {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Default time limit of a stage without its own.
    pub time: Option<TimeLimit>,
    /// Added to every job's directives as given (e.g. `--constraint=a100`).
    pub sbatch_args: Vec<String>,
    /// The most of this run's jobs in the queue at once (pending or running).
    pub max_jobs: usize,
    /// Kinds that run on the head instead of as jobs (cheap ones, such as `report`).
    pub head_kinds: BTreeSet<String>,
    /// GPUs of one node; a stage with more devices runs its ranks with `srun` across
    /// nodes. Unset: every GPU stage fits on one node.
    pub gpus_per_node: Option<u32>,
    /// Time a job gets to checkpoint and stop: `--signal=B:USR1@grace` before its time
    /// limit, and between Ctrl-C's checkpoint request and `scancel`.
    pub grace: Duration,
    /// How long a job that vanished (or ended without a trace in the cache) is given for
    /// its files to appear on the head's view of the shared filesystem before it is lost.
    pub lost_grace: Duration,
    /// How often the worker beats; a running job whose beat stops for 4 of these plus
    /// `lost_grace` is lost.
    pub heartbeat: Duration,
    /// Poll interval bounds: `poll_min` after a change, growing to `poll_max` while quiet.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// Resubmissions of one stage after node failure, preemption, loss or a
    /// checkpointed time limit, before it is reported failed.
    pub resubmit_limit: u32,
}

impl Default for SlurmSettings {
    fn default() -> Self {
        SlurmSettings {
            partition: None,
            account: None,
            qos: None,
            time: None,
            sbatch_args: Vec::new(),
            max_jobs: 100,
            head_kinds: BTreeSet::new(),
            gpus_per_node: None,
            grace: Duration::from_secs(120),
            lost_grace: Duration::from_secs(60),
            heartbeat: Duration::from_secs(30),
            poll_min: Duration::from_secs(2),
            poll_max: Duration::from_secs(30),
            resubmit_limit: 3,
        }
    }
}

/// One `key: value` with where each was written.
struct Entry {
    key: String,
    key_at: Origin,
    value: Value,
    value_at: Origin,
}

impl SlurmSettings {
    /// Applies the `executor:` mapping of a pipeline file, if it has one.
    pub fn apply_pipeline(&mut self, text: &str, file: &Path) -> Result<(), SettingsError> {
        let top: TopLevel = parse_yaml(text, file)?;
        match top.executor {
            Some(m) => self.apply_entries(m.into_entries(file)?),
            None => Ok(()),
        }
    }

    /// Applies a profile file: the executor mapping at its top level.
    pub fn apply_profile_file(&mut self, path: &Path) -> Result<(), SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Io {
            path: path.display().to_string(),
            source,
        })?;
        self.apply_profile(&text, path)
    }

    /// [`SlurmSettings::apply_profile_file`] over text already read.
    pub fn apply_profile(&mut self, text: &str, file: &Path) -> Result<(), SettingsError> {
        if text.trim().is_empty() {
            return Ok(());
        }
        let map: PosMap = parse_yaml(text, file)?;
        self.apply_entries(map.into_entries(file)?)
    }

    /// Applies command-line overrides, each `key=value` (value in YAML: `time=2:00:00`,
    /// `sbatch_args=[--exclusive]`); `flag` names the option in errors (`--executor-set`).
    pub fn apply_overrides(
        &mut self,
        assignments: &[String],
        flag: &str,
    ) -> Result<(), SettingsError> {
        let mut entries = Vec::new();
        let mut errors = Vec::new();
        for a in assignments {
            let at = Origin::Flag(format!("{flag} {a}"));
            let Some((k, v)) = a.split_once('=') else {
                errors.push(SettingsError::Yaml {
                    at,
                    message: "expected key=value".into(),
                });
                continue;
            };
            let value = if v.trim().is_empty() {
                Value::Null
            } else {
                match serde_saphyr::from_str::<Value>(v) {
                    Ok(val) => val,
                    Err(_) => Value::String(v.to_string()),
                }
            };
            entries.push(Entry {
                key: k.trim().to_string(),
                key_at: at.clone(),
                value,
                value_at: at,
            });
        }
        let applied = self.apply_entries(entries);
        match (errors.is_empty(), applied) {
            (true, r) => r,
            (false, Ok(())) => Err(several(errors)),
            (false, Err(e)) => {
                errors.push(e);
                Err(several(errors))
            }
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), SettingsError> {
        let mut errors = Vec::new();
        for e in entries {
            if let Err(err) = self.apply_one(&e) {
                errors.push(err);
            }
        }
        if errors.is_empty()
            && let Err(message) = self.check()
        {
            errors.push(SettingsError::Invalid {
                at: Origin::Flag("executor settings".into()),
                key: "poll_min".into(),
                message,
            });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(several(errors))
        }
    }

    fn apply_one(&mut self, e: &Entry) -> Result<(), SettingsError> {
        let invalid = |message: String| SettingsError::Invalid {
            at: e.value_at.clone(),
            key: e.key.clone(),
            message,
        };
        let v = &e.value;
        match e.key.as_str() {
            "partition" => self.partition = opt_word(v).map_err(invalid)?,
            "account" => self.account = opt_word(v).map_err(invalid)?,
            "qos" => self.qos = opt_word(v).map_err(invalid)?,
            "time" => {
                self.time = match v {
                    Value::Null => None,
                    _ => {
                        Some(TimeLimit::parse(&scalar_text(v).map_err(invalid)?).map_err(invalid)?)
                    }
                }
            }
            "sbatch_args" => {
                let args = string_list(v).map_err(invalid)?;
                for a in &args {
                    if !a.starts_with('-') || a.contains(['\n', '"']) {
                        return Err(invalid(format!(
                            "`{a}` is not an sbatch option (one `--name=value` per item, no quotes or newlines)"
                        )));
                    }
                }
                self.sbatch_args = args;
            }
            "max_jobs" => self.max_jobs = whole(v, 1).map_err(invalid)? as usize,
            "head_kinds" => {
                self.head_kinds = string_list(v).map_err(invalid)?.into_iter().collect()
            }
            "gpus_per_node" => {
                self.gpus_per_node = match v {
                    Value::Null => None,
                    _ => Some(
                        u32::try_from(whole(v, 1).map_err(invalid)?)
                            .map_err(|_| invalid("too large".into()))?,
                    ),
                }
            }
            "grace" => self.grace = duration(v).map_err(invalid)?,
            "lost_grace" => self.lost_grace = duration(v).map_err(invalid)?,
            "heartbeat" => {
                self.heartbeat = duration(v).map_err(invalid)?;
                if self.heartbeat.is_zero() {
                    return Err(invalid("must be longer than 0".into()));
                }
            }
            "poll_min" => self.poll_min = positive_duration(v).map_err(invalid)?,
            "poll_max" => self.poll_max = positive_duration(v).map_err(invalid)?,
            "resubmit_limit" => {
                self.resubmit_limit = u32::try_from(whole(v, 0).map_err(invalid)?)
                    .map_err(|_| invalid("too large".into()))?
            }
            _ => {
                return Err(SettingsError::UnknownKey {
                    at: e.key_at.clone(),
                    key: e.key.clone(),
                });
            }
        }
        Ok(())
    }

    /// Rules between settings.
    fn check(&self) -> Result<(), String> {
        if self.poll_min > self.poll_max {
            return Err(format!(
                "poll_min ({:?}) is longer than poll_max ({:?})",
                self.poll_min, self.poll_max
            ));
        }
        Ok(())
    }
}

fn several(mut errors: Vec<SettingsError>) -> SettingsError {
    if errors.len() == 1 {
        errors.remove(0)
    } else {
        SettingsError::Several(errors)
    }
}

/// Slurm names (partition, account, qos): no spaces, quotes or option syntax.
fn check_word(s: &str) -> Result<&str, String> {
    if s.is_empty()
        || s.starts_with('-')
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.,+".contains(c))
    {
        return Err(format!(
            "`{s}` is not a Slurm name (letters, digits, `_ - . , +`)"
        ));
    }
    Ok(s)
}

fn scalar_text(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("expected a scalar, got {}", type_name(other))),
    }
}

fn opt_word(v: &Value) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        _ => Ok(Some(check_word(&scalar_text(v)?)?.to_string())),
    }
}

fn string_list(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items.iter().map(scalar_text).collect(),
        Value::String(s) => Ok(vec![s.clone()]),
        other => Err(format!(
            "expected a list of strings, got {}",
            type_name(other)
        )),
    }
}

fn whole(v: &Value, min: u64) -> Result<u64, String> {
    match v.as_u64() {
        Some(n) if n >= min => Ok(n),
        _ => Err(format!("expected a whole number >= {min}, got {v}")),
    }
}

/// Seconds as a number, or text with a unit: `90`, `90s`, `2m`, `1h`, `0.5`.
fn duration(v: &Value) -> Result<Duration, String> {
    let bad = || format!("expected a duration (seconds, or a number with s, m or h), got {v}");
    let secs = match v {
        Value::Number(n) => n.as_f64().ok_or_else(bad)?,
        Value::String(s) => {
            let s = s.trim();
            let (num, mult) = match s.chars().last() {
                Some('s') => (&s[..s.len() - 1], 1.0),
                Some('m') => (&s[..s.len() - 1], 60.0),
                Some('h') => (&s[..s.len() - 1], 3600.0),
                _ => (s, 1.0),
            };
            num.trim().parse::<f64>().map_err(|_| bad())? * mult
        }
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

fn positive_duration(v: &Value) -> Result<Duration, String> {
    let d = duration(v)?;
    if d.is_zero() {
        return Err("must be longer than 0".into());
    }
    Ok(d)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

fn parse_yaml<'a, T: serde::Deserialize<'a>>(
    text: &'a str,
    file: &Path,
) -> Result<T, SettingsError> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
        // duplicates are refused by `PosMap` with the key's position and our wording
        duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::PassThrough,
    };
    serde_saphyr::from_str_with_options::<T>(text, options).map_err(|e| {
        let (line, col) = e
            .location()
            .filter(|l| l.line() > 0)
            .map(|l| (l.line() as usize, l.column() as usize))
            .unwrap_or((1, 1));
        let msg = e.without_snippet().to_string();
        let msg = msg.lines().next().unwrap_or("").trim();
        let msg = msg
            .rfind(" at line ")
            .map_or(msg, |i| &msg[..i])
            .to_string();
        SettingsError::Yaml {
            at: Origin::File(SourcePos::new(file, line, col)),
            message: msg,
        }
    })
}

fn pos(file: &Path, l: &serde_saphyr::Location) -> Origin {
    Origin::File(SourcePos::new(file, l.line() as usize, l.column() as usize))
}

/// A mapping read with the position of every key and value; duplicates are kept so they
/// can be refused with their position.
struct PosMap(Vec<(Spanned<String>, Spanned<Value>)>);

impl PosMap {
    fn into_entries(self, file: &Path) -> Result<Vec<Entry>, SettingsError> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (k, v) in self.0 {
            if !seen.insert(k.value.clone()) {
                errors.push(SettingsError::Yaml {
                    at: pos(file, &k.referenced),
                    message: format!("duplicate key `{}`", k.value),
                });
                continue;
            }
            out.push(Entry {
                key_at: pos(file, &k.referenced),
                key: k.value,
                value_at: pos(file, &v.referenced),
                value: v.value,
            });
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(several(errors))
        }
    }
}

impl<'de> serde::Deserialize<'de> for PosMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PosMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of executor settings")
            }
            fn visit_unit<E: de::Error>(self) -> Result<PosMap, E> {
                Ok(PosMap(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<PosMap, A::Error> {
                let mut entries = Vec::new();
                while let Some(k) = m.next_key::<Spanned<String>>()? {
                    entries.push((k, m.next_value::<Spanned<Value>>()?));
                }
                Ok(PosMap(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// A pipeline document seen only for its `executor:` entry.
struct TopLevel {
    executor: Option<PosMap>,
}

impl<'de> serde::Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a pipeline mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<TopLevel, A::Error> {
                let mut executor = None;
                while let Some(k) = m.next_key::<String>()? {
                    if k == "executor" {
                        executor = Some(m.next_value::<PosMap>()?);
                    } else {
                        m.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(TopLevel { executor })
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> &'static Path {
        Path::new("p.yaml")
    }

    #[test]
    fn defaults_hold_without_an_executor_block() {
        let mut s = SlurmSettings::default();
        s.apply_pipeline("stages:\n  a: {kind: synth}\n", file())
            .unwrap();
        assert_eq!(s, SlurmSettings::default());
    }

    #[test]
    fn pipeline_block_then_profile_then_flags() {
        let mut s = SlurmSettings::default();
        let p = "stages: {}\nexecutor:\n  partition: gpu\n  account: lab\n  time: 1-00:00\n  \
                 sbatch_args: [--exclusive, --constraint=a100]\n  head_kinds: [report]\n  \
                 grace: 5m\n  poll_max: 10\n";
        s.apply_pipeline(p, file()).unwrap();
        assert_eq!(s.partition.as_deref(), Some("gpu"));
        assert_eq!(s.time, Some(TimeLimit(86400)));
        assert_eq!(s.sbatch_args, ["--exclusive", "--constraint=a100"]);
        assert!(s.head_kinds.contains("report"));
        assert_eq!(s.grace, Duration::from_secs(300));
        assert_eq!(s.poll_max, Duration::from_secs(10));
        s.apply_profile(
            "account: other\nmax_jobs: 8\ngpus_per_node: 4\n",
            Path::new("site.yaml"),
        )
        .unwrap();
        assert_eq!(s.account.as_deref(), Some("other"));
        assert_eq!(
            s.partition.as_deref(),
            Some("gpu"),
            "the profile changes only its keys"
        );
        assert_eq!(s.max_jobs, 8);
        s.apply_overrides(
            &["partition=debug".into(), "time=30".into(), "qos=".into()],
            "--executor-set",
        )
        .unwrap();
        assert_eq!(s.partition.as_deref(), Some("debug"));
        assert_eq!(s.time, Some(TimeLimit(1800)));
        assert_eq!(s.qos, None);
        assert_eq!(s.gpus_per_node, Some(4));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_position_all_at_once() {
        let mut s = SlurmSettings::default();
        let p = "stages: {}\nexecutor:\n  partiton: gpu\n  max_jobs: 0\n  time: soon\n";
        let e = s.apply_pipeline(p, file()).unwrap_err().to_string();
        assert!(e.contains("p.yaml:3:3: unknown key `partiton`"), "{e}");
        assert!(e.contains("(valid: partition, account"), "{e}");
        assert!(
            e.contains("p.yaml:4:13: `max_jobs`: expected a whole number >= 1"),
            "{e}"
        );
        assert!(
            e.contains("p.yaml:5:9: `time`: `soon` is not a Slurm time limit"),
            "{e}"
        );
    }

    #[test]
    fn flag_errors_name_the_flag() {
        let mut s = SlurmSettings::default();
        let e = s
            .apply_overrides(&["walltime=1".into(), "grace".into()], "--executor-set")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--executor-set walltime=1: unknown key `walltime`"),
            "{e}"
        );
        assert!(
            e.contains("--executor-set grace: expected key=value"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let cases = [
            ("partition: 'a b'", "is not a Slurm name"),
            ("partition: --all", "is not a Slurm name"),
            ("sbatch_args: [exclusive]", "is not an sbatch option"),
            (
                "sbatch_args: ['--comment=\"x\"']",
                "is not an sbatch option",
            ),
            ("poll_min: 0", "must be longer than 0"),
            ("poll_min: 40", "longer than poll_max"),
            ("grace: -3", "expected a duration"),
            ("resubmit_limit: 1.5", "expected a whole number"),
            ("head_kinds: {a: 1}", "expected a list of strings"),
            (
                "partition: gpu\npartition: cpu",
                "duplicate key `partition`",
            ),
            ("[1, 2]", "executor settings"),
        ];
        for (text, want) in cases {
            let e = SlurmSettings::default()
                .apply_profile(text, Path::new("prof.yaml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(
                e.contains("prof.yaml") || e.contains("executor settings"),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn a_missing_profile_names_its_path() {
        let e = SlurmSettings::default()
            .apply_profile_file(Path::new("/nonexistent/prof.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/prof.yaml: cannot read"), "{e}");
    }

    #[test]
    fn slurm_time_formats() {
        let ok = [
            ("5", 300),
            ("5:30", 330),
            ("1:00:00", 3600),
            ("2-0", 172800),
            ("1-2:03", 93780),
            ("1-02:03:04", 93784),
        ];
        for (s, secs) in ok {
            assert_eq!(TimeLimit::parse(s), Ok(TimeLimit(secs)), "{s}");
        }
        for s in [
            "",
            "0",
            "0:00",
            "1:2:3:4",
            "x",
            "-5",
            "1-",
            "1.5",
            "1-2:3:4:5",
        ] {
            assert!(TimeLimit::parse(s).is_err(), "{s}");
        }
        assert_eq!(TimeLimit(93784).to_slurm(), "1-02:03:04");
        assert_eq!(TimeLimit(60).to_slurm(), "0-00:01:00");
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(MemMiB::parse("500"), Ok(MemMiB(500)));
        assert_eq!(MemMiB::parse("16G"), Ok(MemMiB(16384)));
        assert_eq!(MemMiB::parse("16gb"), Ok(MemMiB(16384)));
        assert_eq!(MemMiB::parse("1T"), Ok(MemMiB(1 << 20)));
        assert_eq!(
            MemMiB::parse("1500K"),
            Ok(MemMiB(2)),
            "rounded up to whole MiB"
        );
        for s in ["", "0", "G", "1.5G", "12X", "-1M"] {
            assert!(MemMiB::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn stage_requests_name_the_bad_field() {
        let r = StageRequest::parse(2, Some(4), Some("32G"), Some("4:00:00"), Some("gpu")).unwrap();
        assert_eq!(r.mem, Some(MemMiB(32768)));
        assert_eq!(r.time, Some(TimeLimit(14400)));
        assert_eq!(
            StageRequest::parse(0, None, None, None, None)
                .unwrap_err()
                .0,
            "devices"
        );
        assert_eq!(
            StageRequest::parse(1, Some(0), None, None, None)
                .unwrap_err()
                .0,
            "cpus"
        );
        assert_eq!(
            StageRequest::parse(1, None, Some("lots"), None, None)
                .unwrap_err()
                .0,
            "mem"
        );
        assert_eq!(
            StageRequest::parse(1, None, None, Some("1:2:3:4"), None)
                .unwrap_err()
                .0,
            "time"
        );
        assert_eq!(
            StageRequest::parse(1, None, None, None, Some("a b"))
                .unwrap_err()
                .0,
            "partition"
        );
    }
}
