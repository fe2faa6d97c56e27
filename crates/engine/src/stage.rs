//! The contract between the engine and the code of a stage kind.
//!
//! A stage kind (`synth`, `split`, `supernet`, `command`, ...) is registered with the engine
//! as a [`StageKind`]. Its parameter schema and defaults come from its `schema.yaml` in `ugc-kinds`
//! ([`KindSchema`]); the engine validates and resolves parameters, computes the cache key,
//! hands the stage a [`StageContext`] with a fresh output directory, and commits what the
//! stage wrote only when [`StageKind::run`] returns `Ok`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The type a parameter must have; checked when the pipeline is loaded, with the
/// file:line:column of the offending value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    Bool,
    /// An integer (YAML `3`).
    Int,
    /// A number; integers are accepted and widened.
    Float,
    String,
    /// A file or directory path; relative paths are resolved against the pipeline file's
    /// folder. Path parameters listed in `external_inputs` enter the cache key by content.
    Path,
    List,
    Map,
    /// Anything (validated by the stage itself).
    Any,
}

/// One parameter of a stage kind, as declared in its schema.
///
/// Everything here is checked by the head at plan time, for every node, with the position
/// of the offending value ([`crate::spec`]); the kind's typed parameters are tied to these
/// declarations by a test in `ugc-kinds`, so a stage never sees a value its schema refuses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSchema {
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// Default value; `None` together with `required: false` means "absent unless given".
    #[serde(default)]
    pub default: Option<Value>,
    #[serde(default)]
    pub required: bool,
    /// For `type: string`: the allowed values, if the set is closed.
    #[serde(default, rename = "enum")]
    pub choices: Option<Vec<String>>,
    /// For `int` and `float`: the interval the value must lie in, written as in mathematics,
    /// e.g. `"[1, inf)"` or `"(0, 1]"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<Range>,
    /// For `int` and `float`: the value may not exceed this sibling parameter's value
    /// (e.g. `lr_decay_steps` at most `steps`); skipped while either is null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_most: Option<String>,
    /// For `type: list`: the schema of every item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Box<ParamSchema>>,
    /// Least number of items of a `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_items: Option<usize>,
    /// For `type: map`: the closed set of keys, each with its schema. A written map replaces
    /// the default whole, so keys it leaves out take their own `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<BTreeMap<String, ParamSchema>>,
    /// A value that satisfies the schema, for a required parameter without a default (or
    /// one whose default plans only together with another parameter): used by the
    /// generated tests and shown in the kinds' reference (docs/stage-kinds.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example: Option<Value>,
    /// For an external input: what the file is and how to get or convert it (names the
    /// doc section), printed when the file is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub how_to_get: Option<String>,
    #[serde(default)]
    pub doc: String,
}

/// A closed, open or half-open interval of numbers, as `"[1, inf)"`, `"(0, 1]"`,
/// `"[0, 1]"` or `"(-inf, 0)"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub min: Option<f64>,
    pub min_inclusive: bool,
    pub max: Option<f64>,
    pub max_inclusive: bool,
}

impl Range {
    /// Whether `x` lies in the interval (NaN never does).
    pub fn contains(&self, x: f64) -> bool {
        if x.is_nan() {
            return false;
        }
        let above = match self.min {
            None => true,
            Some(m) if self.min_inclusive => x >= m,
            Some(m) => x > m,
        };
        let below = match self.max {
            None => true,
            Some(m) if self.max_inclusive => x <= m,
            Some(m) => x < m,
        };
        above && below
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let num = |v: Option<f64>, inf: &str| v.map_or(inf.to_string(), |v| v.to_string());
        write!(
            f,
            "{}{}, {}{}",
            if self.min_inclusive { '[' } else { '(' },
            num(self.min, "-inf"),
            num(self.max, "inf"),
            if self.max_inclusive { ']' } else { ')' },
        )
    }
}

impl std::str::FromStr for Range {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("range `{s}`: expected an interval such as `[1, inf)` or `(0, 1]`");
        let t = s.trim();
        let (open, rest) = t.split_at_checked(1).ok_or_else(bad)?;
        let (body, close) = rest
            .split_at_checked(rest.len().saturating_sub(1))
            .ok_or_else(bad)?;
        let (lo, hi) = body.split_once(',').ok_or_else(bad)?;
        let bound = |b: &str, inf: &str| -> Result<Option<f64>, String> {
            let b = b.trim();
            if b == inf {
                return Ok(None);
            }
            b.parse::<f64>().map(Some).map_err(|_| bad())
        };
        let r = Range {
            min: bound(lo, "-inf")?,
            min_inclusive: match open {
                "[" => true,
                "(" => false,
                _ => return Err(bad()),
            },
            max: bound(hi, "inf")?,
            max_inclusive: match close {
                "]" => true,
                ")" => false,
                _ => return Err(bad()),
            },
        };
        if (r.min.is_none() && r.min_inclusive) || (r.max.is_none() && r.max_inclusive) {
            return Err(format!("range `{s}`: an infinite end must be open"));
        }
        Ok(r)
    }
}

impl Serialize for Range {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Range {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The deps a kind needs, by kind: checked at plan time against the stage's `deps`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepsSchema {
    /// Kinds of which the stage needs one among its direct deps.
    #[serde(default)]
    pub required: Vec<String>,
    /// Kinds the stage uses when present (documentation; never an error).
    #[serde(default)]
    pub optional: Vec<String>,
}

/// What a stage kind declares about itself (its `schema.yaml` in `ugc-kinds`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindSchema {
    pub kind: String,
    /// Bumped whenever the kind's code changes what it produces: part of the cache key.
    pub version: u32,
    #[serde(default)]
    pub doc: String,
    /// Whether the stage runs on the accelerator: at most one such stage per GPU runs at a
    /// time, and the resolved device enters its cache key.
    #[serde(default)]
    pub gpu: bool,
    /// Dotted parameter paths (e.g. `dataset.root`, `inputs`) whose values are files or
    /// directories outside the cache. Their *contents* enter the cache key, their paths do not.
    #[serde(default)]
    pub external_inputs: Vec<String>,
    /// Dotted parameter paths that never enter the cache key (e.g. `log_every`).
    #[serde(default)]
    pub not_in_key: Vec<String>,
    /// The kinds of deps the stage reads.
    #[serde(default)]
    pub deps: DepsSchema,
    /// Present when the kind can run as several data-parallel ranks
    /// (`resources: {devices: N}` with N > 1); absent, a stage of it runs as one process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_parallel: Option<DataParallelSchema>,
    /// A bool parameter that, when true, makes a stage of the kind need the machine to
    /// itself (the evaluate kind's `latency`: a timing measured beside other stages measures
    /// their load). A stage's `resources.exclusive` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive_when: Option<String>,
    /// Present when a stage of the kind can start from a dep's final training state
    /// (`init_from`) instead of from step 0: checked at plan time ([`crate::graph`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues: Option<ContinueSchema>,
    pub params: BTreeMap<String, ParamSchema>,
}

/// How a training kind continues another stage's training (`train.init_from: trained200`
/// with `steps: 400` runs steps 200..400 only).
///
/// `from` and `keep` enter the cache key only when set (not null / not false), so adding
/// them to a kind left the keys of every stage that does not use them as they were; when
/// set, `from` is in the key by value and the dep's output by the dep mechanism.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContinueSchema {
    /// The string parameter naming the dep to start from; null: from scratch.
    pub from: String,
    /// The bool parameter that makes a stage commit its final state (weights, optimiser
    /// moments, step) in its output: the dep named by `from` must have it on.
    pub keep: String,
    /// The int parameter of the total steps: must be greater than the dep's.
    pub steps: String,
    /// Parameters that must equal the dep's: the state fits only the same networks.
    #[serde(default)]
    pub same: Vec<String>,
}

/// The parameter a continuing kind names its start dep with (`continues.from`): the one
/// name the training core reads (`ugc_train::run`), so every kind's schema must use it.
pub const INIT_FROM: &str = "init_from";
/// The parameter that commits a stage's final state (`continues.keep`), likewise.
pub const KEEP_STATE: &str = "keep_state";

/// How a data-parallel kind splits its work over ranks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataParallelSchema {
    /// Integer parameters that are global batch sizes, each sharded over the ranks: every
    /// one must be at least the number of devices, so each rank gets an example of every
    /// batch (checked at plan time).
    #[serde(default)]
    pub batch_params: Vec<String>,
}

/// One problem with a stage's resolved parameters, found by its kind's own check (the
/// cross-field rules a schema cannot state). `param` is the dotted path of the value to
/// point at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamProblem {
    pub param: String,
    pub message: String,
}

impl ParamProblem {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        ParamProblem {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// A kind's cross-field check of its resolved parameters (a JSON object that already
/// satisfies the schema): every problem, not the first.
pub type ParamCheck = fn(&Value) -> Vec<ParamProblem>;

impl KindSchema {
    /// Parses a kind's `schema.yaml` document. A `data_parallel.batch_params` entry must
    /// name an `int` parameter of the kind (a typo would silently skip the plan-time check).
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let schema: KindSchema = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        if let Some(dp) = &schema.data_parallel {
            for name in &dp.batch_params {
                match schema.params.get(name) {
                    Some(p) if p.ty == ParamType::Int => {}
                    Some(_) => {
                        return Err(format!(
                            "kind {}: data_parallel.batch_params names `{name}`, which is not \
                             an int parameter",
                            schema.kind
                        ));
                    }
                    None => {
                        return Err(format!(
                            "kind {}: data_parallel.batch_params names `{name}`, which is not \
                             a parameter (params: {})",
                            schema.kind,
                            schema.params.keys().cloned().collect::<Vec<_>>().join(", ")
                        ));
                    }
                }
            }
        }
        if let Some(c) = &schema.continues {
            for (field, name, fixed) in
                [("from", &c.from, INIT_FROM), ("keep", &c.keep, KEEP_STATE)]
            {
                if name != fixed {
                    return Err(format!(
                        "kind {}: continues.{field} is `{name}`, but the training core reads `{fixed}`",
                        schema.kind
                    ));
                }
            }
            let want = [
                (&c.from, ParamType::String),
                (&c.keep, ParamType::Bool),
                (&c.steps, ParamType::Int),
            ];
            for (name, ty) in want {
                if schema.params.get(name).map(|p| p.ty) != Some(ty) {
                    return Err(format!(
                        "kind {}: continues names `{name}`, which is not a {ty:?} parameter",
                        schema.kind
                    ));
                }
            }
            if let Some(bad) = c.same.iter().find(|n| !schema.params.contains_key(*n)) {
                return Err(format!(
                    "kind {}: continues.same names `{bad}`, which is not a parameter",
                    schema.kind
                ));
            }
        }
        if let Some(name) = &schema.exclusive_when {
            match schema.params.get(name) {
                Some(p) if p.ty == ParamType::Bool => {}
                _ => {
                    return Err(format!(
                        "kind {}: exclusive_when names `{name}`, which is not a bool parameter",
                        schema.kind
                    ));
                }
            }
        }
        Ok(schema)
    }

    /// Whether a stage of this kind with these resolved `params` needs the machine alone
    /// by the kind's rule (`exclusive_when`).
    pub fn exclusive_for(&self, params: &Value) -> bool {
        self.exclusive_when
            .as_ref()
            .is_some_and(|p| params.get(p).and_then(Value::as_bool) == Some(true))
    }
}

/// Where a stage runs. `Cuda(i)` is GPU `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceKind {
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceKind::Cpu => write!(f, "cpu"),
            DeviceKind::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Cooperative cancellation: set on SIGINT/SIGTERM. Long stages poll it between steps,
/// checkpoint into their scratch directory, and return [`StageError::Cancelled`].
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// The shared flag, for registering with `signal_hook::flag::register`.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

/// The committed output of one upstream stage, read-only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageInput {
    /// Name of the upstream stage as written in the pipeline (`deps` entry).
    pub name: String,
    /// Node id of the upstream instance, e.g. `evaluate[label_ratio=0.25]`.
    #[serde(default)]
    pub node: String,
    /// The matrix values of that instance (empty outside a matrix). A stage with
    /// `gather: true` receives every instance of a dep and tells them apart by this.
    #[serde(default)]
    pub point: BTreeMap<String, Value>,
    /// Its kind, so a stage can find e.g. "the split it depends on".
    pub kind: String,
    /// Folder holding its outputs. Never write into it.
    pub dir: PathBuf,
}

/// Reports progress of a running stage. Implemented by the executor (it drives one
/// progress bar per running stage); [`NullProgress`] for tests.
pub trait Progress: Send + Sync {
    /// Starts (or restarts) a phase of `total` steps, e.g. "train" or "hash".
    fn start(&self, phase: &str, total: u64);
    /// Sets the current step of the phase.
    fn set(&self, step: u64);
    /// A one-line status message, shown next to the bar and kept in the stage log.
    fn message(&self, msg: &str);
}

/// Progress sink that drops everything.
#[derive(Debug, Default)]
pub struct NullProgress;

impl Progress for NullProgress {
    fn start(&self, _phase: &str, _total: u64) {}
    fn set(&self, _step: u64) {}
    fn message(&self, _msg: &str) {}
}

/// Everything a running stage may use. The stage reads `params` and `inputs`, writes only
/// under `out_dir`, may keep resumable checkpoints under `scratch_dir`, and polls `cancel`.
pub struct StageContext<'a> {
    /// Node id, e.g. `supernet` or `distill[label_ratio=0.25]`.
    pub node: &'a str,
    pub kind: &'a str,
    /// Resolved parameters (defaults merged, overrides and matrix values applied,
    /// `${...}` references substituted, relative paths made absolute). A JSON object.
    pub params: &'a Value,
    pub inputs: &'a [StageInput],
    /// Fresh, empty, private directory. Everything the stage produces goes here.
    pub out_dir: &'a Path,
    /// Per-cache-key directory that survives crashes; never treated as committed output.
    pub scratch_dir: &'a Path,
    pub device: DeviceKind,
    pub progress: &'a dyn Progress,
    pub cancel: &'a CancelToken,
    /// Extra environment for subprocesses the stage starts (the `command` kind passes it on).
    pub env: &'a BTreeMap<String, String>,
    /// This process's rank when the stage runs as several data-parallel processes
    /// (`resources: {devices: N}`); `None` for one process.
    pub rank: Option<&'a crate::rank::RankEnv>,
}

impl StageContext<'_> {
    /// The output folder of the first upstream stage of `kind`, if any.
    pub fn input_of_kind(&self, kind: &str) -> Option<&StageInput> {
        self.inputs.iter().find(|i| i.kind == kind)
    }

    /// The output folder of the first upstream stage of `kind`, or a clear error.
    pub fn require_input(&self, kind: &str) -> Result<&StageInput, StageError> {
        self.input_of_kind(kind).ok_or_else(|| {
            StageError::Config(format!(
                "stage `{}` (kind {}) needs a `{kind}` stage among its deps",
                self.node, self.kind
            ))
        })
    }

    /// Deserializes the resolved parameters into the stage's own typed struct.
    pub fn typed_params<T: serde::de::DeserializeOwned>(&self) -> Result<T, StageError> {
        serde_json::from_value(self.params.clone())
            .map_err(|e| StageError::Config(format!("stage `{}` parameters: {e}", self.node)))
    }
}

/// Why a stage did not produce output. Nothing is committed in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Bad parameters or inputs: the user's to fix (message names the value).
    #[error("{0}")]
    Config(String),
    /// Bad data on disk (message names the file).
    #[error("{0}")]
    Data(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The stage saw the cancel token, saved what it could into scratch, and stopped.
    #[error("cancelled")]
    Cancelled,
    /// A user command exited non-zero, a numeric failure, etc.
    #[error("{0}")]
    Failed(String),
}

impl StageError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The code of one stage kind.
pub trait StageKind: Send + Sync {
    /// The parsed `schema.yaml` of the kind.
    fn schema(&self) -> &KindSchema;
    /// Runs the stage. On `Ok` the engine commits everything under `ctx.out_dir`.
    /// A top-level `metrics.json` (a flat JSON object of numbers) is also recorded in the
    /// run registry and shown by `ugc-pipe show`.
    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError>;
}

/// The stage kinds known to a binary, by name. The head process (`ugc-pipe`) only plans,
/// so it holds the kinds' schemas; the worker (`ugc-pipe-worker`) also holds their code.
#[derive(Default, Clone)]
pub struct KindRegistry {
    schemas: BTreeMap<String, KindSchema>,
    checks: BTreeMap<String, ParamCheck>,
    kinds: BTreeMap<String, Arc<dyn StageKind>>,
}

impl KindRegistry {
    pub fn new() -> Self {
        Self::default()
    }
    /// Registers a kind with its code (it can run here).
    pub fn register(&mut self, kind: Arc<dyn StageKind>) {
        let schema = kind.schema().clone();
        self.kinds.insert(schema.kind.clone(), kind);
        self.schemas.insert(schema.kind.clone(), schema);
    }
    /// Registers a kind by its schema only: pipelines using it can be validated, planned
    /// and keyed here, and its stages run in a process that has its code.
    pub fn register_schema(&mut self, schema: KindSchema) {
        self.schemas.insert(schema.kind.clone(), schema);
    }
    /// Registers the cross-field check of a kind, run at plan time on every node of it.
    pub fn register_check(&mut self, kind: &str, check: ParamCheck) {
        self.checks.insert(kind.to_string(), check);
    }
    /// The cross-field check of a kind, if it has one.
    pub fn check(&self, name: &str) -> Option<ParamCheck> {
        self.checks.get(name).copied()
    }
    /// The code of a kind, when this process can run it.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn StageKind>> {
        self.kinds.get(name)
    }
    pub fn schema(&self, name: &str) -> Option<&KindSchema> {
        self.schemas.get(name)
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.schemas.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The training core reads `init_from` and `keep_state` by name: a schema that calls
    /// them anything else would plan continuations the core never performs.
    #[test]
    fn a_continuing_kind_must_use_the_names_the_training_core_reads() {
        let schema = |from: &str, keep: &str| {
            KindSchema::from_yaml(&format!(
                "kind: fit\nversion: 1\ncontinues: {{from: {from}, keep: {keep}, steps: steps}}\n\
                 params:\n  steps: {{type: int, default: 1}}\n  {from}: {{type: string}}\n  \
                 {keep}: {{type: bool, default: false}}\n"
            ))
        };
        assert!(schema(INIT_FROM, KEEP_STATE).is_ok());
        let e = schema("start", KEEP_STATE).unwrap_err();
        assert!(
            e.contains("continues.from is `start`, but the training core reads `init_from`"),
            "{e}"
        );
        let e = schema(INIT_FROM, "commit").unwrap_err();
        assert!(e.contains("continues.keep is `commit`"), "{e}");
    }
}
