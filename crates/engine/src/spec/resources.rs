//! A stage's `resources:` block: what the stage needs from the machine, beside its
//! `params`. Resources change where and how fast a stage runs, never what it computes, so
//! they are not part of its cache key; each execution records them in the run registry.
//!
//! One struct for every resource: the cluster executor's (`cpus`, `mem`, `time`,
//! `partition`, issue 14) are parsed and overridden the same way, and ignored by the local
//! executor.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::yaml::{YNode, YValue};
use super::{PosMap, SourcePos, SpecError};

/// The keys of a `resources:` block, for "unknown key" messages.
pub const RESOURCE_KEYS: [&str; 7] = [
    "devices",
    "dist_timeout_s",
    "cpus",
    "mem",
    "time",
    "partition",
    "exclusive",
];

/// What a stage asks of the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Data-parallel ranks, one process and one device (a GPU with CUDA, a CPU process
    /// without) each. 1, the default, is one process: the path of every stage before
    /// data parallelism. More than 1 only for a kind whose schema is `data_parallel`.
    #[serde(default = "one")]
    pub devices: usize,
    /// How long a rank waits in a collective (and the rendezvous) for its peers before the
    /// stage fails: the bound on detecting a dead rank. Written in seconds
    /// (`dist_timeout_s`); default [`crate::rank::DEFAULT_TIMEOUT`].
    #[serde(
        rename = "dist_timeout_s",
        with = "crate::rank::secs",
        default = "default_timeout"
    )]
    pub dist_timeout: Duration,
    /// Slurm: CPUs per rank (`--cpus-per-task`); Slurm's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Slurm: memory per node as written (`4G`, `500M`; `--mem`), checked at plan time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// Slurm: the stage's time limit as written (`M`, `H:M:S`, `D-H`, ...; `--time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Slurm: the stage's partition, instead of the executor's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Whether the stage needs the machine to itself (no other stage running beside it),
    /// as a timing measurement does. Unset: its kind's rule (`exclusive_when` in the
    /// schema: the evaluate kind while it measures latency); the graph resolves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive: Option<bool>,
}

fn one() -> usize {
    1
}

fn default_timeout() -> Duration {
    crate::rank::DEFAULT_TIMEOUT
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            devices: 1,
            dist_timeout: default_timeout(),
            cpus: None,
            mem: None,
            time: None,
            partition: None,
            exclusive: None,
        }
    }
}

impl Resources {
    /// Nothing asked beyond one process: serialised nowhere, so the job files of such
    /// stages stay what they were before resources existed.
    pub fn is_default(&self) -> bool {
        *self == Resources::default()
    }

    /// Sets one resource from a JSON value (a `--set STAGE.resources.KEY=V` flag, or a key
    /// of the block); `Err` says what is wrong with the value.
    pub(crate) fn set(&mut self, key: &str, value: &serde_json::Value) -> Result<(), String> {
        match key {
            "devices" => {
                let n = value
                    .as_u64()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("`devices` must be a whole number >= 1, got {value}"))?;
                self.devices =
                    usize::try_from(n).map_err(|_| format!("`devices` = {n} is too large"))?;
            }
            "dist_timeout_s" => {
                let s = value
                    .as_f64()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| {
                        format!("`dist_timeout_s` must be a number of seconds > 0, got {value}")
                    })?;
                self.dist_timeout = Duration::try_from_secs_f64(s)
                    .map_err(|e| format!("`dist_timeout_s` = {s}: {e}"))?;
            }
            "cpus" => {
                let n = value
                    .as_u64()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("`cpus` must be a whole number >= 1, got {value}"))?;
                self.cpus =
                    Some(u32::try_from(n).map_err(|_| format!("`cpus` = {n} is too large"))?);
            }
            "mem" | "time" | "partition" => {
                // Numbers are accepted as their text: `time: 30` is 30 minutes, as sbatch reads it.
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => return Err(format!("`{key}` must be a string, got {value}")),
                };
                let check = match key {
                    "mem" => crate::slurm::settings::StageRequest::parse(
                        1,
                        None,
                        Some(&text),
                        None,
                        None,
                    ),
                    "time" => crate::slurm::settings::StageRequest::parse(
                        1,
                        None,
                        None,
                        Some(&text),
                        None,
                    ),
                    _ => crate::slurm::settings::StageRequest::parse(
                        1,
                        None,
                        None,
                        None,
                        Some(&text),
                    ),
                };
                check.map_err(|(field, m)| format!("`{field}` = {text:?}: {m}"))?;
                match key {
                    "mem" => self.mem = Some(text),
                    "time" => self.time = Some(text),
                    _ => self.partition = Some(text),
                }
            }
            "exclusive" => {
                let b = value
                    .as_bool()
                    .ok_or_else(|| format!("`exclusive` must be true or false, got {value}"))?;
                self.exclusive = Some(b);
            }
            other => {
                return Err(format!(
                    "unknown resource `{other}` (valid: {})",
                    RESOURCE_KEYS.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// Parses the `resources:` mapping of `section` (a stage). Every problem is pushed to
/// `problems` with its position and the value left at its default, so that the rest of the
/// pipeline still plans and all problems are reported at once. `pos` records where each
/// key's value was written.
pub(crate) fn parse(
    node: &YNode,
    file: &Path,
    section: &str,
    pos: &mut PosMap,
    problems: &mut Vec<SpecError>,
) -> Resources {
    let mut r = Resources::default();
    let YValue::Map(entries) = &node.value else {
        if !matches!(node.value, YValue::Null) {
            problems.push(SpecError::WrongType {
                pos: node.pos(file),
                what: format!("`resources` of {section}"),
                expected: "a map (e.g. `{devices: 2}`)".into(),
                got: node.type_name().into(),
            });
        }
        return r;
    };
    for (k, v) in entries {
        let key = match k.key_text(file) {
            Ok(key) => key,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        if !RESOURCE_KEYS.contains(&key.as_str()) {
            problems.push(SpecError::UnknownKey {
                pos: k.pos(file),
                key,
                section: format!("`resources` of {section}"),
                valid: RESOURCE_KEYS.iter().map(|s| s.to_string()).collect(),
            });
            continue;
        }
        pos.set(std::slice::from_ref(&key), v.pos(file));
        // Integers only for `devices` and `cpus`: `2.0` or `"2"` is a mistake worth naming.
        let textual = matches!(key.as_str(), "mem" | "time" | "partition");
        let value = match (&v.value, key.as_str()) {
            (YValue::Int(_) | YValue::UInt(_), _) => v.to_json(file),
            (YValue::Float(_), "dist_timeout_s") => v.to_json(file),
            (YValue::Bool(_), "exclusive") => v.to_json(file),
            (YValue::Str(_), _) if textual => v.to_json(file),
            _ => {
                problems.push(SpecError::WrongType {
                    pos: v.pos(file),
                    what: format!("`resources.{key}` of {section}"),
                    expected: if key == "devices" || key == "cpus" {
                        "a whole number >= 1".into()
                    } else if key == "exclusive" {
                        "true or false".into()
                    } else if textual {
                        "a string (e.g. `4G`, `1:30:00`, `gpu`)".into()
                    } else {
                        "a number of seconds > 0".into()
                    },
                    got: v.type_name().into(),
                });
                continue;
            }
        };
        match value {
            Ok(value) => {
                if let Err(message) = r.set(&key, &value) {
                    problems.push(SpecError::Invalid {
                        pos: v.pos(file),
                        message: format!("{section}: {message}"),
                    });
                }
            }
            Err(e) => problems.push(e),
        }
    }
    r
}

impl Resources {
    /// What the stage asks of Slurm (the fields were checked when they were set).
    pub fn slurm_request(&self) -> crate::slurm::settings::StageRequest {
        let mut r = crate::slurm::settings::StageRequest::parse(
            u32::try_from(self.devices).unwrap_or(u32::MAX),
            self.cpus,
            self.mem.as_deref(),
            self.time.as_deref(),
            self.partition.as_deref(),
        )
        .expect("resources are checked when set");
        r.exclusive = self.exclusive == Some(true);
        r
    }
}

/// Where a stage's `devices` was written (the flag for a `--set`), else its `resources:`
/// key, else the stage's name: what a refusal of the device count points at.
pub(crate) fn devices_pos(pos: &PosMap) -> &SourcePos {
    pos.at(&["devices".to_string()])
}

/// The devices of the machine a pipeline is planned for (the head's `--device` resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    /// GPUs the stages use (none: `--device cpu`, or no GPU visible).
    pub gpus: usize,
    /// CPU cores (`std::thread::available_parallelism`): with no GPU, each rank of a
    /// data-parallel stage is a CPU process, and more ranks than cores only slow it down.
    pub cpus: usize,
}

impl Machine {
    /// This machine, with the GPUs `--device` resolved to.
    pub fn with_gpus(gpus: usize) -> Machine {
        Machine {
            gpus,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// How many devices a stage of a kind with (`gpu`) or without the accelerator can have
    /// here, and what they are, for the message.
    fn limit(&self, gpu: bool) -> (usize, String) {
        if gpu && self.gpus > 0 {
            let s = if self.gpus == 1 { "" } else { "s" };
            (self.gpus, format!("{} GPU{s}", self.gpus))
        } else {
            let s = if self.cpus == 1 { "" } else { "s" };
            (
                self.cpus,
                format!(
                    "no GPU in use and {} CPU core{s} (one rank per core)",
                    self.cpus
                ),
            )
        }
    }
}

/// Every stage asking for more devices than `machine` has, at the position of its
/// `devices` (or the `--set` flag that set it).
pub(crate) fn check_machine(
    p: &super::Pipeline,
    kinds: &crate::stage::KindRegistry,
    machine: &Machine,
) -> Vec<SpecError> {
    let mut problems = Vec::new();
    for s in &p.stages {
        let gpu = kinds.schema(&s.kind).is_some_and(|k| k.gpu);
        let (have, what) = machine.limit(gpu);
        if s.resources.devices > have {
            problems.push(SpecError::Invalid {
                pos: devices_pos(&s.resources_pos).clone(),
                message: format!(
                    "stage `{}` asks for {} devices, but this machine has {what}",
                    s.name, s.resources.devices
                ),
            });
        }
    }
    problems
}
