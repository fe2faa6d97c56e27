//! Pipeline spec + matrix -> DAG of stage instances (nodes), deduplicated by id.
//!
//! A stage appears once per combination of the matrix variables it depends on: the ones
//! its own params reference, plus those any ancestor depends on. A stage that reads no
//! swept value (directly or through its inputs) is one node shared by every matrix point,
//! which is what lets an ablation reuse everything upstream of the swept value.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value;

use crate::spec::refs::{collect_refs, paths_overlap};
use crate::spec::resolve::{ResolveBudget, merged, point_params, resolve_stage};
use crate::spec::{Pipeline, Resources, SourcePos, SpecError};
use crate::stage::KindRegistry;

/// One stage at one (relevant part of a) matrix point.
#[derive(Debug, Clone)]
pub struct Node {
    /// `split`, or `distill[adf=true,label_ratio=0.25]`: the stage name plus only the matrix
    /// variables the node depends on, sorted by name.
    pub id: String,
    pub stage: String,
    pub kind: String,
    /// Resolved JSON object: defaults merged, references substituted, paths absolute.
    pub params: Value,
    /// `params` without the kind's `not_in_key` and `external_inputs` paths.
    pub key_params: Value,
    /// (dotted param path, absolute path); a list param gives `path.0`, `path.1`, ...
    pub external_inputs: Vec<(String, PathBuf)>,
    /// The matrix variables in the id, with their values.
    pub matrix_point: BTreeMap<String, Value>,
    pub gpu: bool,
    /// The stage's `resources:` (not in the key: they change where it runs, not what).
    pub resources: Resources,
    pub pos: SourcePos,
}

/// The expanded pipeline: nodes and `dep -> dependent` edges.
#[derive(Debug, Clone)]
pub struct Dag {
    graph: DiGraph<Node, ()>,
    /// Each node's dependencies in its stage's `deps` order (petgraph keeps no edge order).
    deps: Vec<Vec<NodeIndex>>,
}

/// A matrix value as written in an id: strings bare, everything else as compact JSON.
fn id_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn node_id(stage: &str, point: &BTreeMap<String, Value>) -> String {
    if point.is_empty() {
        return stage.to_string();
    }
    let vars: Vec<String> = point
        .iter()
        .map(|(k, v)| format!("{k}={}", id_value(v)))
        .collect();
    format!("{stage}[{}]", vars.join(","))
}

/// Every combination of matrix values, the first variable varying slowest.
fn matrix_points(matrix: &[(String, Vec<Value>)]) -> Vec<Vec<(String, Value)>> {
    let mut points: Vec<Vec<(String, Value)>> = vec![Vec::new()];
    for (var, values) in matrix {
        points = points
            .into_iter()
            .flat_map(|pt| {
                values.iter().map(move |v| {
                    let mut next = pt.clone();
                    next.push((var.clone(), v.clone()));
                    next
                })
            })
            .collect();
    }
    points
}

impl Dag {
    /// Expands the matrix and resolves every node. Errors carry the position of the value
    /// at fault (a reference, a wrongly typed value, a missing parameter).
    pub fn build(p: &Pipeline, kinds: &KindRegistry) -> Result<Dag, SpecError> {
        let index: HashMap<&str, usize> = p
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let order = stage_order(p, &index)?;

        // Which matrix variables each stage depends on, directly or through ancestors.
        // Every problem of the pipeline is collected, not the first: see SpecError::several.
        let mut problems = Vec::new();
        // Stages whose parameters cannot even be merged: no node, and no further problems.
        let mut failed = vec![false; p.stages.len()];
        let mut vars: Vec<BTreeSet<String>> = vec![BTreeSet::new(); p.stages.len()];
        for &i in &order {
            let s = &p.stages[i];
            let Some(schema) = kinds.schema(&s.kind) else {
                problems.push(SpecError::UnknownKind {
                    pos: s.pos.clone(),
                    kind: s.kind.clone(),
                    known: kinds.names().map(str::to_string).collect(),
                });
                failed[i] = true;
                continue;
            };
            for needed in &schema.deps.required {
                let has = s
                    .deps
                    .iter()
                    .any(|d| p.stages[index[d.as_str()]].kind == *needed);
                if !has {
                    problems.push(SpecError::Invalid {
                        pos: s.pos.clone(),
                        message: format!(
                            "stage `{}` (kind {}) needs a `{needed}` stage among its deps \
                             (deps: {})",
                            s.name,
                            s.kind,
                            if s.deps.is_empty() {
                                "none".to_string()
                            } else {
                                s.deps.join(", ")
                            }
                        ),
                    });
                }
            }
            if s.resources.devices > 1 && schema.data_parallel.is_none() {
                problems.push(SpecError::Invalid {
                    pos: crate::spec::resources::devices_pos(&s.resources_pos).clone(),
                    message: format!(
                        "stage `{}` asks for {} devices, but kind {} runs as one process \
                         (data-parallel kinds: {})",
                        s.name,
                        s.resources.devices,
                        s.kind,
                        data_parallel_kinds(kinds)
                    ),
                });
            }
            let merged = match merged(s, schema) {
                Ok(m) => m,
                Err(e) => {
                    problems.push(e);
                    failed[i] = true;
                    continue;
                }
            };
            let mut names = Vec::new();
            collect_refs(&Value::Object(merged), &mut names);
            let mut own: BTreeSet<String> = p
                .matrix
                .iter()
                .filter(|(var, _)| names.iter().any(|r| paths_overlap(r, var)))
                .map(|(var, _)| var.clone())
                .collect();
            // A gathering stage is one node over all instances of its deps: it does not
            // inherit their matrix variables.
            if !s.gather {
                for d in &s.deps {
                    own.extend(vars[index[d.as_str()]].iter().cloned());
                }
            }
            vars[i] = own;
        }

        let mut graph = DiGraph::new();
        let mut deps: Vec<Vec<NodeIndex>> = Vec::new();
        let mut by_id: HashMap<String, NodeIndex> = HashMap::new();
        let mut edges: HashSet<(NodeIndex, NodeIndex)> = HashSet::new();
        let mut budget = ResolveBudget::new();
        for point in matrix_points(&p.matrix) {
            let params = point_params(p, &point);
            let mut at_point: Vec<Option<NodeIndex>> = vec![None; p.stages.len()];
            for &i in &order {
                if failed[i] {
                    continue;
                }
                let s = &p.stages[i];
                let matrix_point: BTreeMap<String, Value> = point
                    .iter()
                    .filter(|(var, _)| vars[i].contains(var))
                    .cloned()
                    .collect();
                let id = node_id(&s.name, &matrix_point);
                let n = match by_id.get(&id) {
                    Some(&n) => n,
                    None => {
                        let schema = kinds.schema(&s.kind).expect("checked above");
                        let r = match resolve_stage(p, s, schema, kinds, &params, &mut budget) {
                            Ok(r) => r,
                            // A spent budget ends expansion; other problems are collected.
                            Err(e @ SpecError::Limit { .. }) => return Err(e),
                            Err(e) => {
                                problems.push(e);
                                continue;
                            }
                        };
                        problems.extend(check_batches(s, schema, &r.params));
                        let mut resources = s.resources.clone();
                        // The kind's rule, recorded only when it asks (the job files of
                        // other stages stay as they were).
                        if resources.exclusive.is_none() && schema.exclusive_for(&r.params) {
                            resources.exclusive = Some(true);
                        }
                        let n = graph.add_node(Node {
                            id: id.clone(),
                            stage: s.name.clone(),
                            kind: s.kind.clone(),
                            params: r.params,
                            key_params: r.key_params,
                            external_inputs: r.external_inputs,
                            matrix_point,
                            gpu: schema.gpu,
                            resources,
                            pos: s.pos.clone(),
                        });
                        deps.push(Vec::new());
                        by_id.insert(id, n);
                        n
                    }
                };
                at_point[i] = Some(n);
                for d in &s.deps {
                    // A dep that failed to resolve has no node; its problem is reported.
                    let Some(dn) = at_point[index[d.as_str()]] else {
                        continue;
                    };
                    if edges.insert((dn, n)) {
                        graph.add_edge(dn, n, ());
                        deps[n.index()].push(dn);
                    }
                }
            }
        }
        let dag = Dag { graph, deps };
        problems.extend(dag.check_continuations(p, kinds));
        if !problems.is_empty() {
            return Err(SpecError::several(problems));
        }
        Ok(dag)
    }

    /// Every node that starts from a dep's final state (`init_from`, [`ContinueSchema`]):
    /// the dep must be among its stage's `deps`, of the same kind, keep its state, have
    /// the same networks (`same`) and fewer `steps`. Each problem names the stage, the
    /// parameter and its value, at the value's position.
    fn check_continuations(&self, p: &Pipeline, kinds: &KindRegistry) -> Vec<SpecError> {
        let mut problems = Vec::new();
        for (idx, node) in self.nodes() {
            let Some(c) = kinds.schema(&node.kind).and_then(|k| k.continues.as_ref()) else {
                continue;
            };
            let Some(from) = node.params.get(&c.from).and_then(Value::as_str) else {
                continue;
            };
            let Some(stage) = p.stage(&node.stage) else {
                continue;
            };
            let pos = stage.param_pos.at(std::slice::from_ref(&c.from)).clone();
            let what = format!("stage `{}` parameter `{}` = `{from}`", node.stage, c.from);
            let mut refuse = |message: String| {
                problems.push(SpecError::Invalid {
                    pos: pos.clone(),
                    message: format!("{what}: {message}"),
                })
            };
            let Some(dep) = self
                .deps(idx)
                .into_iter()
                .find(|&d| self.node(d).stage == from)
            else {
                refuse(format!(
                    "names no dep of the stage (deps: {}){}",
                    stage.deps.join(", "),
                    crate::spec::suggest::did_you_mean(from, &stage.deps)
                ));
                continue;
            };
            let d = self.node(dep);
            if d.kind != node.kind {
                refuse(format!(
                    "`{from}` is a {} stage; a {} stage continues only a {} stage",
                    d.kind, node.kind, node.kind
                ));
                continue;
            }
            if d.params.get(&c.keep) != Some(&Value::Bool(true)) {
                refuse(format!(
                    "`{from}` does not keep its final state: set `{}: true` on it (its \
                     output then holds the weights, optimiser state and step; it runs once \
                     more)",
                    c.keep
                ));
            }
            let differ: Vec<&str> = c
                .same
                .iter()
                .filter(|n| node.params.get(*n) != d.params.get(*n))
                .map(String::as_str)
                .collect();
            if !differ.is_empty() {
                refuse(format!(
                    "`{from}` trains other networks: {} differ{} (its state would not fit)",
                    differ
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if differ.len() == 1 { "s" } else { "" }
                ));
            }
            let steps = |n: &Node| n.params.get(&c.steps).and_then(Value::as_u64);
            if let (Some(mine), Some(theirs)) = (steps(node), steps(d))
                && mine <= theirs
            {
                refuse(format!(
                    "`{}` = {mine} must be greater than `{from}`'s {theirs} (it continues \
                     from step {theirs})",
                    c.steps
                ));
            }
        }
        problems
    }

    /// Nodes so that every dependency comes before its dependents; among ready nodes the
    /// one created first (file order, then matrix order) goes first, so the order is stable.
    pub fn topo_order(&self) -> Vec<NodeIndex> {
        let mut indeg: Vec<usize> = self.deps.iter().map(Vec::len).collect();
        let mut ready: BinaryHeap<Reverse<NodeIndex>> = self
            .graph
            .node_indices()
            .filter(|n| indeg[n.index()] == 0)
            .map(Reverse)
            .collect();
        let mut out = Vec::with_capacity(self.len());
        while let Some(Reverse(n)) = ready.pop() {
            out.push(n);
            for m in self.graph.neighbors_directed(n, Direction::Outgoing) {
                indeg[m.index()] -= 1;
                if indeg[m.index()] == 0 {
                    ready.push(Reverse(m));
                }
            }
        }
        out
    }

    pub fn node(&self, i: NodeIndex) -> &Node {
        &self.graph[i]
    }

    /// All nodes, in creation order.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeIndex, &Node)> {
        self.graph.node_indices().map(|i| (i, &self.graph[i]))
    }

    /// Direct dependencies, in the stage's `deps` order.
    pub fn deps(&self, i: NodeIndex) -> Vec<NodeIndex> {
        self.deps[i.index()].clone()
    }

    /// Direct dependents, in creation order.
    pub fn dependents(&self, i: NodeIndex) -> Vec<NodeIndex> {
        let mut v: Vec<NodeIndex> = self
            .graph
            .neighbors_directed(i, Direction::Outgoing)
            .collect();
        v.sort();
        v
    }

    /// The node with exactly this id, else every instance of the stage with this name.
    pub fn find(&self, stage_or_id: &str) -> Vec<NodeIndex> {
        let exact: Vec<NodeIndex> = self
            .graph
            .node_indices()
            .filter(|&i| self.graph[i].id == stage_or_id)
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        self.graph
            .node_indices()
            .filter(|&i| self.graph[i].stage == stage_or_id)
            .collect()
    }

    /// Everything downstream of `i` (not `i` itself), in creation order.
    pub fn descendants(&self, i: NodeIndex) -> Vec<NodeIndex> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![i];
        while let Some(n) = stack.pop() {
            for m in self.graph.neighbors_directed(n, Direction::Outgoing) {
                if seen.insert(m) {
                    stack.push(m);
                }
            }
        }
        seen.into_iter().collect()
    }

    /// `targets` and everything upstream of them: what running the targets needs.
    pub fn with_ancestors(&self, targets: &BTreeSet<NodeIndex>) -> BTreeSet<NodeIndex> {
        let mut seen = targets.clone();
        let mut stack: Vec<NodeIndex> = targets.iter().copied().collect();
        while let Some(n) = stack.pop() {
            for &d in &self.deps[n.index()] {
                if seen.insert(d) {
                    stack.push(d);
                }
            }
        }
        seen
    }

    /// The DAG of the nodes in `keep` only, in their creation order, with the edges
    /// between them (`run P TARGET...`). `keep` must be closed under dependencies (see
    /// [`Dag::with_ancestors`]) so that every kept node has all of its deps, in their order,
    /// and plans to the same key as in the whole DAG. Indices are renumbered.
    ///
    /// # Panics
    /// If a kept node's dependency is not kept (a caller bug).
    pub fn restricted(&self, keep: &BTreeSet<NodeIndex>) -> Dag {
        let mut graph = DiGraph::new();
        let mut new_of: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        for &old in keep {
            new_of.insert(old, graph.add_node(self.graph[old].clone()));
        }
        let mut deps = Vec::with_capacity(keep.len());
        for &old in keep {
            let n = new_of[&old];
            let mine: Vec<NodeIndex> = self.deps[old.index()]
                .iter()
                .map(|d| {
                    *new_of
                        .get(d)
                        .expect("restricted(): keep must hold every dependency of its nodes")
                })
                .collect();
            for &d in &mine {
                graph.add_edge(d, n, ());
            }
            deps.push(mine);
        }
        Dag { graph, deps }
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// Graphviz text: one box per node (id and kind), one arrow per dependency.
    pub fn to_dot(&self) -> String {
        let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = String::from("digraph pipeline {\n  rankdir=LR;\n  node [shape=box];\n");
        for i in self.topo_order() {
            let n = &self.graph[i];
            let _ = writeln!(
                out,
                "  \"{}\" [label=\"{}\\n({})\"];",
                q(&n.id),
                q(&n.id),
                q(&n.kind)
            );
        }
        for i in self.topo_order() {
            for d in &self.deps[i.index()] {
                let _ = writeln!(
                    out,
                    "  \"{}\" -> \"{}\";",
                    q(&self.graph[*d].id),
                    q(&self.graph[i].id)
                );
            }
        }
        out.push_str("}\n");
        out
    }

    /// Mermaid flowchart text; nodes are `n<index>` with the id and kind as label.
    pub fn to_mermaid(&self) -> String {
        let q = |s: &str| s.replace('"', "#quot;");
        let mut out = String::from("flowchart LR\n");
        for i in self.topo_order() {
            let n = &self.graph[i];
            let _ = writeln!(out, "  n{}[\"{} ({})\"]", i.index(), q(&n.id), q(&n.kind));
        }
        for i in self.topo_order() {
            for d in &self.deps[i.index()] {
                let _ = writeln!(out, "  n{} --> n{}", d.index(), i.index());
            }
        }
        out
    }
}

/// The kinds that can run as several ranks, for the refusal of `devices` on another.
fn data_parallel_kinds(kinds: &KindRegistry) -> String {
    let dp: Vec<&str> = kinds
        .names()
        .filter(|k| kinds.schema(k).is_some_and(|s| s.data_parallel.is_some()))
        .collect();
    if dp.is_empty() {
        "none".into()
    } else {
        dp.join(", ")
    }
}

/// Each rank of a data-parallel stage needs at least one example of every batch: every
/// batch-size parameter of the kind (resolved, at this matrix point) must be at least the
/// number of devices. Points at the batch parameter, or at the stage when it is a default.
fn check_batches(
    s: &crate::spec::StageSpec,
    schema: &crate::stage::KindSchema,
    params: &Value,
) -> Vec<SpecError> {
    let devices = s.resources.devices;
    let Some(dp) = schema.data_parallel.as_ref().filter(|_| devices > 1) else {
        return Vec::new();
    };
    dp.batch_params
        .iter()
        .filter_map(|name| {
            let batch = params.get(name)?.as_u64()?;
            (batch < devices as u64).then(|| SpecError::Invalid {
                pos: s.param_pos.at(std::slice::from_ref(name)).clone(),
                message: format!(
                    "stage `{}`: `{name}` = {batch} is smaller than its {devices} devices \
                     (the batch is global and split over the ranks: each needs at least one \
                     example)",
                    s.name
                ),
            })
        })
        .collect()
}

/// Stages ordered so that deps come first (file order among the ready ones). A cycle is
/// reported by the loader with every stage named; here it is only a safety net.
fn stage_order(p: &Pipeline, index: &HashMap<&str, usize>) -> Result<Vec<usize>, SpecError> {
    let mut indeg = vec![0usize; p.stages.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); p.stages.len()];
    for (i, s) in p.stages.iter().enumerate() {
        for (d, pos) in s
            .deps
            .iter()
            .zip(s.dep_pos.iter().chain(std::iter::repeat(&s.pos)))
        {
            let j = *index.get(d.as_str()).ok_or_else(|| SpecError::UnknownDep {
                pos: pos.clone(),
                stage: s.name.clone(),
                dep: d.clone(),
                known: p.stages.iter().map(|t| t.name.clone()).collect(),
            })?;
            indeg[i] += 1;
            users[j].push(i);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..p.stages.len())
        .filter(|&i| indeg[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(p.stages.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &u in &users[i] {
            indeg[u] -= 1;
            if indeg[u] == 0 {
                ready.push(Reverse(u));
            }
        }
    }
    if order.len() < p.stages.len() {
        let stuck: Vec<String> = (0..p.stages.len())
            .filter(|i| indeg[*i] > 0)
            .map(|i| p.stages[i].name.clone())
            .collect();
        let first = (0..p.stages.len()).find(|i| indeg[*i] > 0).unwrap_or(0);
        return Err(SpecError::Cycle {
            pos: p.stages[first].pos.clone(),
            stages: stuck,
        });
    }
    Ok(order)
}

#[cfg(test)]
mod tests;
