//! Pipeline YAML -> validated [`Pipeline`], with file:line:column in every error.
//!
//! Loading checks the structure (known keys, known kinds, known parameters, deps, cycles),
//! applies `--set` overrides, and then expands the DAG once ([`crate::graph::Dag::build`]) so
//! that reference, type, enum and required-parameter errors surface at load time for every
//! matrix point, not halfway through a run.

mod error;
mod overrides;
pub(crate) mod refs;
pub(crate) mod resolve;
pub mod resources;
pub mod suggest;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
mod yaml;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::stage::KindRegistry;

pub use error::{SourcePos, SpecError};
pub use resources::{Machine, Resources};
use yaml::{YNode, YValue};

/// Most matrix points accepted: each one is resolved when the DAG is built, so a matrix of
/// many long lists would otherwise hang the loader.
pub const MAX_MATRIX_POINTS: usize = 10_000;

/// Most matrix variables accepted. Lists of one value keep the point count at 1, so the
/// point limit alone does not bound them, and each point carries every variable.
pub const MAX_MATRIX_VARS: usize = 1_000;

/// How to load a pipeline: `--set` overrides and the limits that refuse pathological input.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `a.b=v` assignments (`--set`), applied in order.
    pub overrides: Vec<String>,
    /// Largest accepted file, in bytes (default 4 MiB).
    pub max_bytes: usize,
    /// Deepest accepted nesting of lists/maps (default 64).
    pub max_depth: usize,
    /// Most YAML nodes accepted, aliases expanded (default 200 000).
    pub max_nodes: usize,
    /// The machine the pipeline is to run on: a stage asking for more devices than it has
    /// is refused with the other problems. `None` (planning elsewhere, drawing the DAG)
    /// skips that check.
    pub machine: Option<Machine>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            overrides: Vec::new(),
            max_bytes: 4 * 1024 * 1024,
            max_depth: 64,
            max_nodes: 200_000,
            machine: None,
        }
    }
}

/// Where each value inside a parameter tree was written, keyed by its path of keys (list
/// items by index). Lookups fall back to the nearest written ancestor, then to `root`.
#[derive(Debug, Clone, PartialEq)]
pub struct PosMap {
    pub root: SourcePos,
    map: BTreeMap<Vec<String>, SourcePos>,
}

impl PosMap {
    pub fn new(root: SourcePos) -> Self {
        PosMap {
            root,
            map: BTreeMap::new(),
        }
    }

    /// Records `pos` for `path`, replacing what was under it (an override rewrites a subtree).
    pub fn set(&mut self, path: &[String], pos: SourcePos) {
        self.map.retain(|k, _| !k.starts_with(path));
        self.map.insert(path.to_vec(), pos);
    }

    /// The position of `path`, or of its nearest recorded ancestor.
    pub fn at(&self, path: &[String]) -> &SourcePos {
        (0..=path.len())
            .rev()
            .find_map(|n| self.map.get(&path[..n]))
            .unwrap_or(&self.root)
    }

    fn record(&mut self, node: &YNode, file: &Path, path: &mut Vec<String>) {
        self.map.insert(path.clone(), node.pos(file));
        match &node.value {
            YValue::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(i.to_string());
                    self.record(item, file, path);
                    path.pop();
                }
            }
            YValue::Map(entries) => {
                for (k, v) in entries {
                    path.push(k.key_text(file).unwrap_or_default());
                    self.record(v, file, path);
                    path.pop();
                }
            }
            _ => {}
        }
    }
}

/// A loaded, validated pipeline. Stage params are kept as written (overrides applied);
/// defaults, references and matrix values are resolved per node by the DAG.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The pipeline file, absolute.
    pub path: PathBuf,
    /// Its folder: relative paths in params are resolved against it.
    pub dir: PathBuf,
    pub params: Map<String, Value>,
    /// Matrix variables in file order, each with its values (non-empty).
    pub matrix: Vec<(String, Vec<Value>)>,
    /// Stages in file order.
    pub stages: Vec<StageSpec>,
    /// Where each top-level param was written.
    pub param_pos: PosMap,
    /// Where each matrix variable was written (same order as `matrix`).
    pub matrix_pos: Vec<SourcePos>,
}

/// One stage as written in the pipeline.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub name: String,
    pub kind: String,
    pub deps: Vec<String>,
    /// The `params` mapping as written (a JSON object), `--set` overrides applied.
    pub params: Value,
    /// Position of the stage's name.
    pub pos: SourcePos,
    pub doc: String,
    /// Where each value of `params` was written.
    pub param_pos: PosMap,
    /// Position of each `deps` entry.
    pub dep_pos: Vec<SourcePos>,
    /// `gather: true`: one node that depends on every matrix instance of its deps (a report
    /// over the whole matrix), instead of one node per instance.
    pub gather: bool,
    /// The `resources:` block, `--set STAGE.resources.KEY=V` applied; defaults when absent.
    pub resources: Resources,
    /// Where each resource was written (by key); its root is the `resources:` key, else
    /// the stage's name.
    pub resources_pos: PosMap,
}

impl Pipeline {
    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// Reads and validates the pipeline at `path`.
pub fn load_pipeline(
    path: &Path,
    kinds: &KindRegistry,
    opts: &LoadOptions,
) -> Result<Pipeline, SpecError> {
    let io = |source| SpecError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > opts.max_bytes as u64 {
        return Err(SpecError::TooLarge {
            path: path.to_path_buf(),
            size,
            max: opts.max_bytes,
        });
    }
    // Read at most one byte past the limit, in case the file grew since `metadata`.
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(opts.max_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let text = String::from_utf8(bytes).map_err(|e| SpecError::Invalid {
        pos: SourcePos::new(path, 1, 1),
        message: format!("file is not UTF-8: {e}"),
    })?;
    load_pipeline_str(&text, path, kinds, opts)
}

/// Validates pipeline `text` as if read from `path` (used for positions and to resolve
/// relative paths; the file itself is not read).
pub fn load_pipeline_str(
    text: &str,
    path: &Path,
    kinds: &KindRegistry,
    opts: &LoadOptions,
) -> Result<Pipeline, SpecError> {
    if text.len() > opts.max_bytes {
        return Err(SpecError::TooLarge {
            path: path.to_path_buf(),
            size: text.len() as u64,
            max: opts.max_bytes,
        });
    }
    let abs = absolute(path).map_err(|source| SpecError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let dir = abs.parent().map(Path::to_path_buf).unwrap_or_default();
    // Positions name the file as the user gave it, which is what they can click on.
    let file = path;
    let root = yaml::parse(
        text,
        file,
        yaml::Limits {
            max_depth: opts.max_depth,
            max_nodes: opts.max_nodes,
        },
    )?;
    // Problems that leave the pipeline plannable (an unknown parameter, a bad `--set`) are
    // collected and reported together with the planner's: every problem at once.
    let mut problems = Vec::new();
    let mut p = parse_pipeline(&root, file, abs, dir, kinds, opts.max_depth, &mut problems)?;
    check_cycles(&p)?;
    for flag in &opts.overrides {
        if let Err(e) = overrides::apply(&mut p, flag, kinds, opts.max_depth) {
            match e {
                SpecError::Override { .. } | SpecError::Several(_) => problems.push(e),
                other => return Err(other),
            }
        }
    }
    if let Err(e) = crate::graph::Dag::build(&p, kinds) {
        problems.push(e);
    }
    if let Some(machine) = &opts.machine {
        problems.extend(resources::check_machine(&p, kinds, machine));
    }
    if problems.is_empty() {
        Ok(p)
    } else {
        Err(SpecError::several(problems))
    }
}

/// `path` made absolute against the current directory, `.`/`..` folded lexically
/// (nothing resolved through symlinks): what `Pipeline::path` is, and so a pipeline's id
/// in the run registry.
pub fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    Ok(resolve::normalize(&joined))
}

fn entries<'a>(
    node: &'a YNode,
    file: &Path,
    what: &str,
) -> Result<&'a [(YNode, YNode)], SpecError> {
    match &node.value {
        YValue::Map(e) => Ok(e),
        _ => Err(SpecError::WrongType {
            pos: node.pos(file),
            what: what.to_string(),
            expected: "a map".into(),
            got: node.type_name().into(),
        }),
    }
}

fn string_of(node: &YNode, file: &Path, what: &str) -> Result<String, SpecError> {
    node.as_str()
        .map(str::to_string)
        .ok_or_else(|| SpecError::WrongType {
            pos: node.pos(file),
            what: what.to_string(),
            expected: "a string".into(),
            got: node.type_name().into(),
        })
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn parse_pipeline(
    root: &YNode,
    file: &Path,
    path: PathBuf,
    dir: PathBuf,
    kinds: &KindRegistry,
    max_depth: usize,
    problems: &mut Vec<SpecError>,
) -> Result<Pipeline, SpecError> {
    let top = entries(root, file, "pipeline file")?;
    let (mut params_node, mut matrix_node, mut stages_node) = (None, None, None);
    let mut seen = HashMap::new();
    for (k, v) in top {
        let key = k.key_text(file)?;
        if let Some(first) = seen.insert(key.clone(), k.pos(file)) {
            return Err(SpecError::Invalid {
                pos: k.pos(file),
                message: format!("duplicate key `{key}` (first at {first})"),
            });
        }
        match key.as_str() {
            "params" => params_node = Some((k, v)),
            "matrix" => matrix_node = Some(v),
            "stages" => stages_node = Some(v),
            // The cluster executor's settings: read (with positions) by
            // `slurm::settings::SlurmSettings::apply_pipeline`, never part of a cache key.
            "executor" => {}
            _ => {
                return Err(SpecError::UnknownKey {
                    pos: k.pos(file),
                    key,
                    section: "the pipeline".into(),
                    valid: strings(&["params", "matrix", "stages", "executor"]),
                });
            }
        }
    }

    let mut param_pos = PosMap::new(root.pos(file));
    let params = match params_node {
        None => Map::new(),
        Some((k, v)) if matches!(v.value, YValue::Null) => {
            param_pos.root = k.pos(file);
            Map::new()
        }
        Some((k, v)) => {
            entries(v, file, "`params`")?;
            param_pos.root = k.pos(file);
            param_pos.record(v, file, &mut Vec::new());
            reject_refs_in_params(v, file)?;
            match v.to_json(file)? {
                Value::Object(m) => m,
                _ => unreachable!("checked to be a map above"),
            }
        }
    };

    let (matrix, matrix_pos) = match matrix_node {
        None => (Vec::new(), Vec::new()),
        Some(v) if matches!(v.value, YValue::Null) => (Vec::new(), Vec::new()),
        Some(v) => parse_matrix(v, file, max_depth)?,
    };

    let stages_node = stages_node.ok_or_else(|| SpecError::MissingKey {
        pos: root.pos(file),
        key: "stages".into(),
        section: "the pipeline".into(),
    })?;
    let mut stages: Vec<StageSpec> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (k, v) in entries(stages_node, file, "`stages`")? {
        let name = k.key_text(file)?;
        if let Some(&first) = by_name.get(&name) {
            return Err(SpecError::DuplicateStage {
                pos: k.pos(file),
                name,
                first: stages[first].pos.clone(),
            });
        }
        by_name.insert(name.clone(), stages.len());
        stages.push(parse_stage(name, k, v, file, kinds, problems)?);
    }
    if stages.is_empty() {
        return Err(SpecError::Invalid {
            pos: stages_node.pos(file),
            message: "`stages` is empty".into(),
        });
    }
    let mut unknown_deps = Vec::new();
    for s in &stages {
        for (dep, pos) in s.deps.iter().zip(&s.dep_pos) {
            if !by_name.contains_key(dep) {
                unknown_deps.push(SpecError::UnknownDep {
                    pos: pos.clone(),
                    stage: s.name.clone(),
                    dep: dep.clone(),
                    known: stages.iter().map(|t| t.name.clone()).collect(),
                });
            }
        }
    }
    if !unknown_deps.is_empty() {
        // The DAG cannot be built without its deps: report them with what else was found.
        unknown_deps.append(problems);
        return Err(SpecError::several(unknown_deps));
    }
    Ok(Pipeline {
        path,
        dir,
        params,
        matrix,
        stages,
        param_pos,
        matrix_pos,
    })
}

/// Top-level params are plain values: expanding references there too would need an
/// evaluation order, so a `${` in them is refused instead of being kept as literal text.
fn reject_refs_in_params(node: &YNode, file: &Path) -> Result<(), SpecError> {
    match &node.value {
        YValue::Str(s) => {
            let pieces = refs::parse_template(s).map_err(|m| SpecError::Invalid {
                pos: node.pos(file),
                message: m,
            })?;
            if pieces.iter().any(|p| matches!(p, refs::Piece::Ref(_))) {
                return Err(SpecError::Invalid {
                    pos: node.pos(file),
                    message: format!(
                        "`{s}`: references are expanded in stage params only, not in `params:` \
                         (write `$${{` for a literal `${{`)"
                    ),
                });
            }
            Ok(())
        }
        YValue::Seq(items) => items
            .iter()
            .try_for_each(|i| reject_refs_in_params(i, file)),
        YValue::Map(e) => e
            .iter()
            .try_for_each(|(_, v)| reject_refs_in_params(v, file)),
        _ => Ok(()),
    }
}

type MatrixParts = (Vec<(String, Vec<Value>)>, Vec<SourcePos>);

/// Refuses a matrix of more than [`MAX_MATRIX_VARS`] variables or [`MAX_MATRIX_POINTS`]
/// points from the counts alone, before any value is converted or compared (both checks
/// compare pairs), so that a huge matrix is refused at once.
fn check_matrix_size(written: &[(YNode, YNode)], file: &Path) -> Result<(), SpecError> {
    if let Some((k, _)) = written.get(MAX_MATRIX_VARS) {
        return Err(SpecError::Limit {
            pos: k.pos(file),
            message: format!(
                "the matrix has {} variables, more than the limit of {MAX_MATRIX_VARS}",
                written.len()
            ),
        });
    }
    let points = written
        .iter()
        .filter_map(|(_, v)| match &v.value {
            YValue::Seq(items) => Some(items.len()),
            _ => None,
        })
        .fold(1usize, usize::saturating_mul);
    match written.first() {
        Some((k, _)) if points > MAX_MATRIX_POINTS => Err(SpecError::Limit {
            pos: k.pos(file),
            message: format!(
                "the matrix has {points} points, more than the limit of {MAX_MATRIX_POINTS}"
            ),
        }),
        _ => Ok(()),
    }
}

fn parse_matrix(node: &YNode, file: &Path, max_depth: usize) -> Result<MatrixParts, SpecError> {
    let written = entries(node, file, "`matrix`")?;
    check_matrix_size(written, file)?;
    let mut matrix: Vec<(String, Vec<Value>)> = Vec::new();
    let mut positions = Vec::new();
    for (k, v) in written {
        let var = k.key_text(file)?;
        if var.is_empty() || var.split('.').any(str::is_empty) {
            return Err(SpecError::Invalid {
                pos: k.pos(file),
                message: format!("matrix variable `{var}` is not a dotted param path"),
            });
        }
        // Each segment is a level of params nesting once the point's value is written.
        let depth = var.split('.').count();
        if depth > max_depth {
            return Err(SpecError::Limit {
                pos: k.pos(file),
                message: format!(
                    "matrix variable `{}` has {depth} segments, deeper than {max_depth} levels",
                    abbreviate(&var)
                ),
            });
        }
        if let Some((other, _)) = matrix.iter().find(|(o, _)| refs::paths_overlap(o, &var)) {
            return Err(SpecError::Invalid {
                pos: k.pos(file),
                message: format!("matrix variable `{var}` overlaps `{other}`"),
            });
        }
        let YValue::Seq(items) = &v.value else {
            return Err(SpecError::WrongType {
                pos: v.pos(file),
                what: format!("matrix variable `{var}`"),
                expected: "a list of values".into(),
                got: v.type_name().into(),
            });
        };
        if items.is_empty() {
            return Err(SpecError::Invalid {
                pos: v.pos(file),
                message: format!("matrix variable `{var}` has an empty list of values"),
            });
        }
        // Two values are the same point when they key alike: compared by their canonical
        // JSON in a hash set (comparing every pair was quadratic in the list's length).
        let mut seen = HashSet::with_capacity(items.len());
        let mut values: Vec<Value> = Vec::with_capacity(items.len());
        for item in items {
            let value = item.to_json(file)?;
            let mut canonical = String::new();
            crate::cache::write_canonical(&value, &mut canonical);
            if !seen.insert(canonical) {
                return Err(SpecError::Invalid {
                    pos: item.pos(file),
                    message: format!("matrix variable `{var}` lists `{value}` twice"),
                });
            }
            values.push(value);
        }
        matrix.push((var, values));
        positions.push(k.pos(file));
    }
    Ok((matrix, positions))
}

/// `s` cut to its first 40 characters, for messages about names that can be megabytes long.
pub(crate) fn abbreviate(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn valid_stage_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn parse_stage(
    name: String,
    key: &YNode,
    node: &YNode,
    file: &Path,
    kinds: &KindRegistry,
    problems: &mut Vec<SpecError>,
) -> Result<StageSpec, SpecError> {
    let pos = key.pos(file);
    if !valid_stage_name(&name) {
        return Err(SpecError::Invalid {
            pos,
            message: format!("stage name `{name}` must match [a-z0-9_-]+"),
        });
    }
    let section = format!("stage `{name}`");
    let mut kind_node = None;
    let mut deps = Vec::new();
    let mut dep_pos = Vec::new();
    let mut params = Value::Object(Map::new());
    let mut param_pos = PosMap::new(pos.clone());
    let mut doc = String::new();
    let mut gather = false;
    let mut params_node = None;
    let mut resources = Resources::default();
    let mut resources_pos = PosMap::new(pos.clone());
    let mut seen = HashMap::new();
    for (k, v) in entries(node, file, &section)? {
        let key = k.key_text(file)?;
        if let Some(first) = seen.insert(key.clone(), k.pos(file)) {
            return Err(SpecError::Invalid {
                pos: k.pos(file),
                message: format!("duplicate key `{key}` in {section} (first at {first})"),
            });
        }
        match key.as_str() {
            "kind" => kind_node = Some(v),
            "doc" => doc = string_of(v, file, &format!("`doc` of {section}"))?,
            "gather" => {
                let YValue::Bool(b) = &v.value else {
                    return Err(SpecError::WrongType {
                        pos: v.pos(file),
                        what: format!("`gather` of {section}"),
                        expected: "true or false".into(),
                        got: v.type_name().into(),
                    });
                };
                gather = *b;
            }
            "deps" => {
                let YValue::Seq(items) = &v.value else {
                    return Err(SpecError::WrongType {
                        pos: v.pos(file),
                        what: format!("`deps` of {section}"),
                        expected: "a list of stage names".into(),
                        got: v.type_name().into(),
                    });
                };
                // A set, not `deps.contains`: a stage may list thousands of deps.
                let mut listed = HashSet::with_capacity(items.len());
                for item in items {
                    let dep = string_of(item, file, &format!("`deps` entry of {section}"))?;
                    if !listed.insert(dep.clone()) {
                        return Err(SpecError::Invalid {
                            pos: item.pos(file),
                            message: format!("{section} lists dep `{dep}` twice"),
                        });
                    }
                    deps.push(dep);
                    dep_pos.push(item.pos(file));
                }
            }
            "params" => {
                if !matches!(v.value, YValue::Null) {
                    entries(v, file, &format!("`params` of {section}"))?;
                    param_pos.root = k.pos(file);
                    param_pos.record(v, file, &mut Vec::new());
                    params = v.to_json(file)?;
                    params_node = Some(v);
                }
            }
            "resources" => {
                resources_pos.root = k.pos(file);
                resources = resources::parse(v, file, &section, &mut resources_pos, problems);
            }
            _ => {
                return Err(SpecError::UnknownKey {
                    pos: k.pos(file),
                    key,
                    section,
                    valid: strings(&["kind", "deps", "params", "resources", "doc", "gather"]),
                });
            }
        }
    }
    let kind_node = kind_node.ok_or_else(|| SpecError::MissingKey {
        pos: pos.clone(),
        key: "kind".into(),
        section: section.clone(),
    })?;
    let kind = string_of(kind_node, file, &format!("`kind` of {section}"))?;
    let schema = kinds.schema(&kind).ok_or_else(|| SpecError::UnknownKind {
        pos: kind_node.pos(file),
        kind: kind.clone(),
        known: kinds.names().map(str::to_string).collect(),
    })?;
    if let Some(YValue::Map(written)) = params_node.map(|n| &n.value) {
        for (k, _) in written {
            let param = k.key_text(file)?;
            if !schema.params.contains_key(&param) {
                // Reported (at the key), then dropped so that the rest still plans.
                problems.push(SpecError::UnknownParam {
                    pos: k.pos(file),
                    stage: name.clone(),
                    param: param.clone(),
                    valid: schema.params.keys().cloned().collect(),
                });
                if let Some(m) = params.as_object_mut() {
                    m.remove(&param);
                }
            }
        }
    }
    Ok(StageSpec {
        name,
        kind,
        deps,
        params,
        pos,
        doc,
        param_pos,
        dep_pos,
        gather,
        resources,
        resources_pos,
    })
}

/// Refuses a dependency cycle, naming every stage on it in data-flow order
/// (`a -> b` means `b` depends on `a`), starting from the one written first.
///
/// Iterative (Kahn's algorithm, then a walk through what is left) so that a long chain of
/// stages cannot overflow the stack.
fn check_cycles(p: &Pipeline) -> Result<(), SpecError> {
    let n = p.stages.len();
    let index: HashMap<&str, usize> = p
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let deps: Vec<Vec<usize>> = p
        .stages
        .iter()
        .map(|s| s.deps.iter().map(|d| index[d.as_str()]).collect())
        .collect();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            users[d].push(i);
        }
    }
    let mut indeg: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut ready: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    while let Some(i) = ready.pop() {
        for &u in &users[i] {
            indeg[u] -= 1;
            if indeg[u] == 0 {
                ready.push(u);
            }
        }
    }
    let Some(start) = (0..n).find(|&i| indeg[i] > 0) else {
        return Ok(());
    };
    // Every stage left over has a dep that is left over too: walking those deps must
    // come back to a stage already seen, and the walk from there is the cycle.
    let mut seen_at: HashMap<usize, usize> = HashMap::new();
    let mut walk = Vec::new();
    let mut cur = start;
    while !seen_at.contains_key(&cur) {
        seen_at.insert(cur, walk.len());
        walk.push(cur);
        cur = *deps[cur]
            .iter()
            .find(|&&d| indeg[d] > 0)
            .expect("a stage left by Kahn's algorithm has a dep left too");
    }
    let mut cycle = walk.split_off(seen_at[&cur]);
    // The walk runs dependent -> dep; data flows the other way.
    cycle.reverse();
    let first = (0..cycle.len()).min_by_key(|&k| cycle[k]).unwrap_or(0);
    cycle.rotate_left(first);
    let mut names: Vec<String> = cycle.iter().map(|&s| p.stages[s].name.clone()).collect();
    names.push(names[0].clone());
    Err(SpecError::Cycle {
        pos: p.stages[cycle[0]].pos.clone(),
        stages: names,
    })
}
