//! Planning: for each node of the DAG, its cache key (when its inputs are known), whether
//! the cache holds it, and why it must run. Shared by `run`, `run --dry-run`, `status` and
//! `explain`, so all four always agree.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::graph::NodeIndex;
use serde::Serialize;

use crate::cache::{
    Cache, CacheError, CacheKey, KEY_SCHEMA_VERSION, KeyChange, KeyMaterial, Record,
};
use crate::graph::{Dag, Node};
use crate::registry::{Registry, RegistryError};
use crate::stage::KindRegistry;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("stage `{node}`: unknown kind `{kind}`")]
    UnknownKind { node: String, kind: String },
    #[error("stage `{node}`: input `{param}` = {path}: {source}")]
    ExternalInput {
        node: String,
        param: String,
        path: String,
        #[source]
        source: Box<CacheError>,
    },
}

/// Why a node has to run.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RunReason {
    /// Never run under this pipeline and node id.
    New,
    /// Its key differs from the last run of this node: these components changed.
    Changed { changes: Vec<String> },
    /// Same key as last time, but the cached output is gone (gc, verify, corruption).
    OutputMissing,
    /// `--force`.
    Forced,
    /// An upstream stage runs first; the key is known only once its output is. `changes`
    /// lists what changed in the node's *own* key components (kind version, params,
    /// external inputs, environment) since its last run, so that `status` names the reason
    /// a stage would re-run even when its upstream re-runs too (empty: nothing of its own).
    Upstream {
        upstream: Vec<String>,
        changes: Vec<String>,
    },
    /// An external input (a dataset, a weights file) does not exist yet: `run` will
    /// refuse this stage until it does.
    MissingInput { param: String, path: String },
}

impl std::fmt::Display for RunReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunReason::New => write!(f, "new"),
            RunReason::Changed { changes } => write!(f, "changed: {}", changes.join("; ")),
            RunReason::OutputMissing => write!(f, "output missing from the cache"),
            RunReason::Forced => write!(f, "forced"),
            RunReason::Upstream { upstream, changes } => {
                write!(f, "upstream runs first: {}", upstream.join(", "))?;
                if !changes.is_empty() {
                    write!(f, "; own changes: {}", changes.join("; "))?;
                }
                Ok(())
            }
            RunReason::MissingInput { param, path } => {
                write!(f, "input `{param}` = {path} does not exist yet")
            }
        }
    }
}

/// The planned state of one node.
#[derive(Debug, Clone)]
pub enum NodeState {
    /// Its key is known and the cache holds it.
    Cached { key: CacheKey, record: Box<Record> },
    /// Its key is known and it must run.
    Run {
        key: CacheKey,
        material: Box<KeyMaterial>,
        reason: RunReason,
    },
    /// Some upstream stage must run before its key can be known.
    Blocked { reason: RunReason },
}

impl NodeState {
    pub fn will_run(&self) -> bool {
        !matches!(self, NodeState::Cached { .. })
    }
    pub fn key(&self) -> Option<&CacheKey> {
        match self {
            NodeState::Cached { key, .. } | NodeState::Run { key, .. } => Some(key),
            NodeState::Blocked { .. } => None,
        }
    }
}

/// Computes keys: the environment fingerprint is fixed per invocation.
pub struct KeyBuilder<'a> {
    pub cache: &'a Cache,
    pub kinds: &'a KindRegistry,
    /// ugc-pipe version, libtorch version, determinism flags ... (same for every node).
    pub env: BTreeMap<String, String>,
    /// Resolved device kind (`cpu`/`cuda`), added for stages that run on the accelerator.
    pub device_kind: String,
}

impl KeyBuilder<'_> {
    /// The key material of `node`, given the committed records of its deps.
    pub fn material(
        &self,
        dag: &Dag,
        idx: NodeIndex,
        dep_records: &[&Record],
    ) -> Result<KeyMaterial, PlanError> {
        let mut material = self.own_material(dag, idx)?;
        let deps = dag.deps(idx);
        for (&dep, rec) in deps.iter().zip(dep_records) {
            let d = dag.node(dep);
            // By stage name, so a key does not depend on how a matrix names its points
            // (two pipelines share every stage they compute alike). Only a gathering stage,
            // which has several instances of one dep, tells them apart by node id.
            let instances = deps
                .iter()
                .filter(|&&o| dag.node(o).stage == d.stage)
                .count();
            let name = if instances > 1 {
                d.id.clone()
            } else {
                d.stage.clone()
            };
            material.upstream.insert(name, rec.tree_digest.clone());
        }
        Ok(material)
    }

    /// Everything of `node`'s key material that does not depend on its deps' outputs
    /// (`upstream` is left empty): known even while an upstream stage still has to run.
    pub fn own_material(&self, dag: &Dag, idx: NodeIndex) -> Result<KeyMaterial, PlanError> {
        let node = dag.node(idx);
        let schema = self
            .kinds
            .schema(&node.kind)
            .ok_or_else(|| PlanError::UnknownKind {
                node: node.id.clone(),
                kind: node.kind.clone(),
            })?;
        let mut external = BTreeMap::new();
        for (param, path) in &node.external_inputs {
            let digest =
                self.cache
                    .digest_path(path)
                    .map_err(|source| PlanError::ExternalInput {
                        node: node.id.clone(),
                        param: param.clone(),
                        path: path.display().to_string(),
                        source: Box::new(source),
                    })?;
            let mut name = param.clone();
            let mut i = 0;
            while external.contains_key(&name) {
                i += 1;
                name = format!("{param}[{i}]");
            }
            external.insert(name, digest);
        }
        let mut env = self.env.clone();
        if node.gpu {
            env.insert("device".into(), self.device_kind.clone());
        }
        Ok(KeyMaterial {
            key_schema: KEY_SCHEMA_VERSION,
            kind: node.kind.clone(),
            kind_version: schema.version,
            params: node.key_params.clone(),
            upstream: BTreeMap::new(),
            external,
            env,
        })
    }
}

/// Human-readable key changes, for `status`, `explain` and `--dry-run`.
pub fn describe_changes(changes: &[KeyChange]) -> Vec<String> {
    changes.iter().map(|c| c.to_string()).collect()
}

/// The whole plan: a state per node, in topological order.
pub struct Plan {
    pub order: Vec<NodeIndex>,
    pub states: BTreeMap<NodeIndex, NodeState>,
}

/// Plans `dag` against the cache. `forced` holds node indices that must run regardless.
pub fn plan(
    dag: &Dag,
    keys: &KeyBuilder<'_>,
    registry: Option<&Registry>,
    pipeline: &str,
    forced: &BTreeSet<NodeIndex>,
) -> Result<Plan, PlanError> {
    let order = dag.topo_order();
    let mut states: BTreeMap<NodeIndex, NodeState> = BTreeMap::new();
    for &idx in &order {
        let deps = dag.deps(idx);
        let mut records = Vec::new();
        let mut running = Vec::new();
        for d in &deps {
            match &states[d] {
                NodeState::Cached { record, .. } => records.push(record.as_ref()),
                _ => running.push(dag.node(*d).id.clone()),
            }
        }
        let state = if !running.is_empty() {
            let changes = own_changes(dag, idx, keys, registry, pipeline)?;
            NodeState::Blocked {
                reason: RunReason::Upstream {
                    upstream: running,
                    changes,
                },
            }
        } else {
            let material = match keys.material(dag, idx, &records) {
                Ok(m) => m,
                // Planning (dry-run, status) of a pipeline whose data is not there yet.
                Err(PlanError::ExternalInput { param, path, .. })
                    if !std::path::Path::new(&path).exists() =>
                {
                    states.insert(
                        idx,
                        NodeState::Blocked {
                            reason: RunReason::MissingInput { param, path },
                        },
                    );
                    continue;
                }
                Err(e) => return Err(e),
            };
            let key = material.key();
            let cached = keys.cache.lookup(&key)?;
            match cached {
                Some(record) if !forced.contains(&idx) => NodeState::Cached {
                    key,
                    record: Box::new(record),
                },
                _ => {
                    let reason = if forced.contains(&idx) {
                        RunReason::Forced
                    } else {
                        why_run(dag.node(idx), &key, &material, registry, pipeline)?
                    };
                    NodeState::Run {
                        key,
                        material: Box::new(material),
                        reason,
                    }
                }
            }
        };
        states.insert(idx, state);
    }
    Ok(Plan { order, states })
}

/// For a node whose deps must run first: what changed in its own key components since its
/// last run under this pipeline (its deps' outputs are not known yet, so they are taken as
/// they were). Empty when it never ran or an external input cannot be read yet.
fn own_changes(
    dag: &Dag,
    idx: NodeIndex,
    keys: &KeyBuilder<'_>,
    registry: Option<&Registry>,
    pipeline: &str,
) -> Result<Vec<String>, PlanError> {
    let Some(registry) = registry else {
        return Ok(Vec::new());
    };
    let Some((_, old)) = registry.last_node_key(pipeline, &dag.node(idx).id)? else {
        return Ok(Vec::new());
    };
    let mut material = match keys.own_material(dag, idx) {
        Ok(m) => m,
        Err(PlanError::ExternalInput { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    material.upstream = old.upstream.clone();
    Ok(describe_changes(&material.diff(&old)))
}

/// Compares a node's key with the one it had last time under this pipeline.
pub fn why_run(
    node: &Node,
    key: &CacheKey,
    material: &KeyMaterial,
    registry: Option<&Registry>,
    pipeline: &str,
) -> Result<RunReason, PlanError> {
    let Some(registry) = registry else {
        return Ok(RunReason::New);
    };
    Ok(match registry.last_node_key(pipeline, &node.id)? {
        None => RunReason::New,
        Some((old_key, _)) if &old_key == key => RunReason::OutputMissing,
        Some((_, old)) => RunReason::Changed {
            changes: describe_changes(&material.diff(&old)),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testutil::{kinds, load};

    /// Resources change where a stage runs, never what it computes: same key.
    #[test]
    fn resources_are_not_in_the_cache_key() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let kinds = kinds();
        let keys = KeyBuilder {
            cache: &cache,
            kinds: &kinds,
            env: BTreeMap::new(),
            device_kind: "cpu".into(),
        };
        let key = |resources: &str| {
            let text =
                format!("stages:\n  fit:\n    kind: dp\n{resources}    params: {{lr: 0.5}}\n");
            let dag = Dag::build(&load(&text).unwrap(), &kinds).unwrap();
            let idx = dag.find("fit")[0];
            assert_eq!(
                dag.node(idx).resources.devices,
                if resources.is_empty() { 1 } else { 2 }
            );
            keys.own_material(&dag, idx).unwrap().key()
        };
        let one = key("");
        assert_eq!(one, key("    resources: {devices: 2, dist_timeout_s: 9}\n"));
    }
}
