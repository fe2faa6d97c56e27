//! `ugc-pipe exp show P`: the experiments table, one row per run of a pipeline and matrix
//! point, with the run's `--set` overrides, the resolved parameters that differ between the
//! rows, the chosen metrics and the cache keys; `--diff A [B]` compares two runs.
//!
//! Nothing is planned or recomputed: every value comes from what the runs left. The run's
//! overrides from the registry (schema 6; parsed from argv for older runs), each node of
//! the run from its execution rows (a cache hit names the key it found), the node's
//! parameters from that key's cache record (`material.params`: the resolved, key-relevant
//! ones; the run's job file when no record is left), and its metrics from the registry's
//! metrics of that key, which `show` reads too. So a run that hit the cache for a node
//! has that node's metrics, and the table stays true after the pipeline file changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use ugc_engine::cache::Record;
use ugc_engine::exec::register_record;
use ugc_engine::graph::Dag;
use ugc_engine::job::Job;
use ugc_engine::registry::{ExecutionRow, Override, RunRow, RunSettings, SettingsSource};
use ugc_engine::spec::{LoadOptions, load_pipeline};

use super::names::did_you_mean;
use super::{CliError, CliResult};

/// `ugc-pipe exp ...`: comparing the runs of a pipeline.
#[derive(clap::Subcommand, Debug)]
pub enum ExpVerb {
    /// One row per run of the pipeline and matrix point: overrides, the parameters that
    /// differ between the rows, metrics, keys. `--diff A [B]` compares two runs.
    Show(ShowArgs),
}

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// The pipeline YAML file whose runs to compare.
    pub pipeline: PathBuf,
    /// Cache root (default: `cache/` of the project holding the pipeline; env UGC_PIPE_CACHE).
    #[arg(long, env = "UGC_PIPE_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// Metrics to show, comma-separated: `psnr` (of every stage that has it) or
    /// `eval.psnr` (of one stage). Default: the report's `metric` of every evaluate
    /// stage; without a report, every metric of the evaluate stages; without those, every
    /// metric recorded.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub metric: Vec<String>,
    /// Parameters to show, comma-separated: `train.lr`, or `train` for every one of a
    /// stage (any dotted prefix). Default: all that differ between the rows shown.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub param: Vec<String>,
    /// Every parameter (of `--param`), not only those that differ between the rows shown.
    #[arg(long)]
    pub all_params: bool,
    /// Only the latest N runs.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Compare run A with run B (default B: the latest run of the pipeline): the
    /// overrides, parameters, metrics (with their change) and keys that differ.
    #[arg(long, num_args = 1..=2, value_names = ["A", "B"])]
    pub diff: Vec<i64>,
    /// One JSON document.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// CSV: a header line, then one line per row.
    #[arg(long)]
    pub csv: bool,
}

pub fn exp(verb: &ExpVerb) -> CliResult {
    match verb {
        ExpVerb::Show(a) => show(a),
    }
}

/// The settings `run` records for its run (registry schema 6): its `--set` flags as
/// clap parsed them, the executor, the profile and `--executor-set` flags.
pub fn run_settings(p: &super::PipelineArgs, e: &super::ExecutorArgs) -> RunSettings {
    RunSettings {
        overrides: p.set.iter().map(|f| Override::parse(f)).collect(),
        executor: match e.executor {
            super::ExecutorKind::Local => "local",
            super::ExecutorKind::Slurm => "slurm",
        }
        .into(),
        profile: e.profile.as_ref().map(|f| f.display().to_string()),
        executor_overrides: e.executor_set.iter().map(|f| Override::parse(f)).collect(),
        settings_source: SettingsSource::Recorded,
    }
}

/// A run's flags as one would type them again, for `runs`: `  --set lr=0.1
/// --executor slurm`; nothing for a plain local run.
pub fn settings_text(s: &RunSettings) -> String {
    let mut out = String::new();
    for o in &s.overrides {
        out.push_str(&format!(
            " --set {}",
            shell_word(&format!("{}={}", o.key, o.value))
        ));
    }
    if s.executor != "local" {
        out.push_str(&format!(" --executor {}", shell_word(&s.executor)));
    }
    if let Some(p) = &s.profile {
        out.push_str(&format!(" --profile {}", shell_word(p)));
    }
    for o in &s.executor_overrides {
        out.push_str(&format!(
            " --executor-set {}",
            shell_word(&format!("{}={}", o.key, o.value))
        ));
    }
    if out.is_empty() {
        out
    } else {
        format!(" {out}")
    }
}

/// `word` quoted for a POSIX shell when it holds anything but plain characters.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,=/:+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// What one run did with one node.
#[derive(Debug, Clone)]
struct NodeRun {
    node: String,
    stage: String,
    kind: String,
    point: BTreeMap<String, Value>,
    key: String,
    /// executed, cached, failed, cancelled or skipped.
    status: String,
    /// The key's resolved parameters, flattened (`ngf`, `model.ngf`); `None` when neither
    /// its record nor its job file is left.
    params: Option<BTreeMap<String, Value>>,
    metrics: BTreeMap<String, f64>,
}

/// A run and its nodes, in the order it recorded them.
struct RunData {
    run: RunRow,
    nodes: Vec<NodeRun>,
}

/// A metric column: `stage.metric`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct MetricCol {
    stage: String,
    metric: String,
}

impl MetricCol {
    fn name(&self) -> String {
        format!("{}.{}", self.stage, self.metric)
    }
}

/// One row of the table: a run at one matrix point, with the nodes that belong to it.
struct TableRow<'a> {
    data: &'a RunData,
    point: BTreeMap<String, Value>,
    nodes: Vec<&'a NodeRun>,
    params: BTreeMap<String, Value>,
    /// Every node the pipeline has at this point ran or was found cached in this run.
    complete: bool,
}

fn show(a: &ShowArgs) -> CliResult {
    let kinds = crate::stages::schema_registry();
    let pipeline =
        load_pipeline(&a.pipeline, &kinds, &LoadOptions::default()).map_err(CliError::usage)?;
    let dag = Dag::build(&pipeline, &kinds).map_err(CliError::usage)?;
    let id = pipeline.path.display().to_string();
    let cache_dir = a
        .cache_dir
        .clone()
        .unwrap_or_else(|| super::pipeline::default_cache_dir(&pipeline.path));
    let runs = if cache_dir.join("registry.sqlite").exists() {
        load_runs(&cache_dir, &id, &dag)?
    } else {
        Vec::new()
    };
    if !a.diff.is_empty() {
        return diff(a, &id, &runs, &dag);
    }
    let runs: &[RunData] = match a.limit {
        Some(n) => &runs[runs.len().saturating_sub(n)..],
        None => &runs,
    };
    let chosen = choose_metrics(
        &a.metric,
        runs.iter().flat_map(|r| &r.nodes),
        &report_metrics(&dag),
    )?;
    let mut order: Vec<BTreeMap<String, Value>> = Vec::new();
    for (_, n) in dag.nodes() {
        if !order.contains(&n.matrix_point) {
            order.push(n.matrix_point.clone());
        }
    }
    let expected: Vec<(String, BTreeMap<String, Value>)> = dag
        .nodes()
        .map(|(_, n)| (n.id.clone(), n.matrix_point.clone()))
        .collect();
    let rows = table_rows(runs, &chosen, &order, &expected);
    check_param_names(&rows, &a.param)?;
    let param_cols = param_columns(&rows, a.all_params, &a.param);
    let point_cols: BTreeSet<String> = rows.iter().flat_map(|r| r.point.keys().cloned()).collect();
    let metric_cols: Vec<&MetricCol> = chosen
        .iter()
        .filter(|c| rows.iter().any(|r| metric_of(r, c).is_some()))
        .collect();
    let key_stages: Vec<String> =
        metric_cols
            .iter()
            .map(|c| c.stage.clone())
            .fold(Vec::new(), |mut v, s| {
                if !v.contains(&s) {
                    v.push(s);
                }
                v
            });

    if a.json {
        let out: Vec<Value> = rows
            .iter()
            .map(|r| {
                let metrics: Map<String, Value> = metric_cols
                    .iter()
                    .filter_map(|c| metric_of(r, c).map(|v| (c.name(), json!(v))))
                    .collect();
                let params: Map<String, Value> = param_cols
                    .iter()
                    .filter_map(|p| r.params.get(p).map(|v| (p.clone(), v.clone())))
                    .collect();
                let keys: Map<String, Value> = r
                    .nodes
                    .iter()
                    .map(|n| (n.stage.clone(), json!(n.key)))
                    .collect();
                let nodes: Map<String, Value> = r
                    .nodes
                    .iter()
                    .map(|n| (n.stage.clone(), json!(n.node)))
                    .collect();
                let s = &r.data.run.settings;
                json!({
                    "run": r.data.run.id,
                    "started_unix_ms": r.data.run.started_unix_ms,
                    "started": super::store::fmt_ms(r.data.run.started_unix_ms),
                    "status": row_status(r),
                    "run_status": r.data.run.status,
                    "point": r.point,
                    "overrides": s.override_map(),
                    "executor": s.executor,
                    "settings_source": s.settings_source,
                    "params": params,
                    "metrics": metrics,
                    "keys": keys,
                    "nodes": nodes,
                })
            })
            .collect();
        let doc = json!({
            "pipeline": id,
            "columns": {
                "point": point_cols,
                "params": param_cols,
                "metrics": metric_cols.iter().map(|c| c.name()).collect::<Vec<_>>(),
            },
            "rows": out,
        });
        println!("{}", serde_json::to_string(&doc).map_err(CliError::failed)?);
        return Ok(0);
    }
    if rows.is_empty() && !a.csv {
        println!(
            "no runs of {} in {} yet: `ugc-pipe run {}` records them",
            pipeline.path.display(),
            cache_dir.display(),
            a.pipeline.display()
        );
        return Ok(0);
    }

    // (name, right-aligned): the run id and the metrics are numbers.
    let mut columns: Vec<(String, bool)> = vec![
        ("run".into(), true),
        ("started".into(), false),
        ("status".into(), false),
    ];
    columns.extend(point_cols.iter().map(|v| (v.clone(), false)));
    columns.push(("overrides".into(), false));
    columns.extend(param_cols.iter().map(|p| (p.clone(), false)));
    columns.extend(metric_cols.iter().map(|c| (c.name(), true)));
    columns.extend(key_stages.iter().map(|s| (format!("{s}.key"), false)));
    let header: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
    let numeric: Vec<bool> = columns.iter().map(|(_, r)| *r).collect();
    let mut body = Vec::new();
    for r in &rows {
        let mut cells = vec![
            r.data.run.id.to_string(),
            super::store::fmt_ms(r.data.run.started_unix_ms),
            row_status(r),
        ];
        cells.extend(
            point_cols
                .iter()
                .map(|v| r.point.get(v).map(value_text).unwrap_or_default()),
        );
        cells.push(overrides_text(&r.data.run));
        cells.extend(
            param_cols
                .iter()
                .map(|p| r.params.get(p).map(value_text).unwrap_or_default()),
        );
        cells.extend(metric_cols.iter().map(|c| {
            metric_of(r, c)
                .map(|v| if a.csv { v.to_string() } else { fmt_num(v) })
                .unwrap_or_default()
        }));
        cells.extend(key_stages.iter().map(|s| {
            r.nodes
                .iter()
                .find(|n| &n.stage == s)
                .map(|n| short_key(&n.key, a.csv))
                .unwrap_or_default()
        }));
        body.push(cells);
    }
    if a.csv {
        print_csv(&header, &body);
    } else {
        print_table(&header, &body, &numeric);
    }
    Ok(0)
}

/// Every run of pipeline `id` with its nodes, oldest first. Rows of committed stages that
/// never reached the registry (a stage process killed after its commit) are recovered
/// from their records first, as `show` and `runs --run` do.
fn load_runs(cache_dir: &Path, id: &str, dag: &Dag) -> Result<Vec<RunData>, CliError> {
    let cache = super::store::open_cache(cache_dir)?;
    let registry = super::store::open_registry(&cache)?;
    let mut records: HashMap<String, Record> = HashMap::new();
    for record in cache.records().map_err(CliError::failed)? {
        if record.meta.pipeline == id
            && let Err(e) = register_record(&cache, &registry, &record)
        {
            tracing::warn!(
                "run registry: row of `{}` not recovered: {e}",
                record.meta.node
            );
        }
        records.insert(record.key.as_str().to_string(), record);
    }
    let known: HashMap<&str, (&str, &BTreeMap<String, Value>)> = dag
        .nodes()
        .map(|(_, n)| (n.id.as_str(), (n.stage.as_str(), &n.matrix_point)))
        .collect();
    let mut out = Vec::new();
    for run in registry.runs_of(id).map_err(CliError::failed)? {
        let rows = registry.executions(run.id).map_err(CliError::failed)?;
        let mut nodes: Vec<NodeRun> = Vec::new();
        for e in representative(&rows) {
            let (stage, point) = match known.get(e.node.as_str()) {
                Some((stage, point)) => (stage.to_string(), (*point).clone()),
                None => parse_node_id(&e.node),
            };
            let params = records
                .get(&e.key)
                .map(|r| r.material.params.clone())
                .or_else(|| {
                    Job::read(cache.root(), &e.key, Some(run.id))
                        .ok()
                        .map(|j| j.material.params)
                })
                .map(|p| flatten(&p));
            nodes.push(NodeRun {
                node: e.node.clone(),
                stage,
                kind: e.kind.clone(),
                point,
                key: e.key.clone(),
                status: e.status.clone(),
                params,
                metrics: BTreeMap::new(),
            });
        }
        out.push(RunData { run, nodes });
    }
    let keys: Vec<ugc_engine::cache::CacheKey> = out
        .iter()
        .flat_map(|r| &r.nodes)
        .filter_map(|n| n.key.parse().ok())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let metrics = registry.metrics_for_keys(&keys).map_err(CliError::failed)?;
    for n in out.iter_mut().flat_map(|r| r.nodes.iter_mut()) {
        // Only a node that produced (or found) its output has that output's metrics.
        if matches!(n.status.as_str(), "executed" | "cached")
            && let Some(m) = metrics.get(&n.key)
        {
            n.metrics = m.clone();
        }
    }
    Ok(out)
}

/// One execution per node of a run: its last that committed or hit the cache, else its
/// last (a failure, a cancel). A resubmitted Slurm stage has several rows.
fn representative(rows: &[ExecutionRow]) -> Vec<&ExecutionRow> {
    let mut order: Vec<&str> = Vec::new();
    let mut best: HashMap<&str, &ExecutionRow> = HashMap::new();
    for e in rows {
        let node = e.node.as_str();
        if !best.contains_key(node) {
            order.push(node);
        }
        let done = |x: &ExecutionRow| matches!(x.status.as_str(), "executed" | "cached");
        match best.get(node) {
            Some(prev) if done(prev) && !done(e) => {}
            _ => {
                best.insert(node, e);
            }
        }
    }
    order.into_iter().map(|n| best[n]).collect()
}

/// `distill[adf=true,label_ratio=0.25]` as the DAG writes ids: the stage and its matrix
/// point (for a node the pipeline no longer has). Values are read as JSON where they
/// parse (numbers, booleans, lists), else as the bare strings ids write.
fn parse_node_id(id: &str) -> (String, BTreeMap<String, Value>) {
    let Some((stage, rest)) = id.split_once('[') else {
        return (id.to_string(), BTreeMap::new());
    };
    let inner = rest.strip_suffix(']').unwrap_or(rest);
    let mut point = BTreeMap::new();
    let (mut depth, mut start) = (0i32, 0usize);
    let mut parts = Vec::new();
    for (i, c) in inner.char_indices() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    for part in parts {
        if let Some((k, v)) = part.split_once('=') {
            let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
            point.insert(k.to_string(), value);
        }
    }
    (stage.to_string(), point)
}

/// Nested parameter objects as dotted names (`model.ngf`); lists and scalars as values.
fn flatten(params: &Value) -> BTreeMap<String, Value> {
    ugc_engine::dotted::dotted_leaves(params)
        .into_iter()
        .map(|(k, v)| (k, v.clone()))
        .collect()
}

/// The primary `metric` of the pipeline's `report` stages: what its tables rank by, so
/// the default columns of `exp show` (one per evaluate stage; the report's
/// `extra_metrics` too would make the quickstart's table 35 metrics wide: `--metric`).
fn report_metrics(dag: &Dag) -> BTreeSet<String> {
    dag.nodes()
        .filter(|(_, n)| n.kind == "report")
        .filter_map(|(_, n)| n.params.get("metric").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// The metric columns to show, in stage then metric order. `asked` entries name a
/// metric (`psnr`) or a stage's metric (`eval.psnr`); one that matches nothing recorded
/// is refused with the names there are.
/// `reported`: the metrics the pipeline's reports put first ([`report_metrics`]).
fn choose_metrics<'a>(
    asked: &[String],
    nodes: impl Iterator<Item = &'a NodeRun>,
    reported: &BTreeSet<String>,
) -> Result<Vec<MetricCol>, CliError> {
    let mut all: BTreeMap<MetricCol, String> = BTreeMap::new();
    for n in nodes {
        for m in n.metrics.keys() {
            all.insert(
                MetricCol {
                    stage: n.stage.clone(),
                    metric: m.clone(),
                },
                n.kind.clone(),
            );
        }
    }
    if !asked.is_empty() {
        let mut out = BTreeSet::new();
        for want in asked.iter().map(|w| w.trim()) {
            let hits: Vec<&MetricCol> = all
                .keys()
                .filter(|c| c.metric == want || c.name() == want)
                .collect();
            if hits.is_empty() {
                let mut names: Vec<String> = all.keys().map(MetricCol::name).collect();
                names.extend(all.keys().map(|c| c.metric.clone()));
                names.sort();
                names.dedup();
                let close = did_you_mean(want, &names);
                let hint = if !close.is_empty() {
                    format!("did you mean {}?", close.join(" or "))
                } else if names.is_empty() {
                    "no run recorded any metric yet".into()
                } else {
                    format!("recorded: {}", names.join(", "))
                };
                return Err(CliError::usage(format!(
                    "--metric {want}: no run of this pipeline recorded it; {hint}"
                )));
            }
            out.extend(hits.into_iter().cloned());
        }
        return Ok(out.into_iter().collect());
    }
    let evaluated: Vec<&MetricCol> = all
        .iter()
        .filter(|(_, kind)| kind.as_str() == "evaluate")
        .map(|(c, _)| c)
        .collect();
    if evaluated.is_empty() {
        return Ok(all.into_keys().collect());
    }
    let of_report: Vec<MetricCol> = evaluated
        .iter()
        .filter(|c| reported.contains(&c.metric))
        .map(|c| (*c).clone())
        .collect();
    Ok(if of_report.is_empty() {
        evaluated.into_iter().cloned().collect()
    } else {
        of_report
    })
}

/// Whether `small` is part of `big`: every variable of `small` has the same value there.
fn within(small: &BTreeMap<String, Value>, big: &BTreeMap<String, Value>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// The rows of each run: one per matrix point of its nodes of the metric stages (the
/// points no other contains; every node when there are none), each with the nodes of that point
/// and those of no or fewer matrix variables (a shared upstream, a gathering report).
/// `order`: the matrix points in the pipeline's order (the first variable varying
/// slowest); a run's rows follow it, whatever order its nodes ran in. `expected`: the
/// pipeline's nodes now (id, point), to tell a complete point of a failed run.
fn table_rows<'a>(
    runs: &'a [RunData],
    chosen: &[MetricCol],
    order: &[BTreeMap<String, Value>],
    expected: &[(String, BTreeMap<String, Value>)],
) -> Vec<TableRow<'a>> {
    let mut rows = Vec::new();
    for data in runs {
        // A node of a metric stage defines a row even when it failed (and has none).
        let has_metric = |n: &NodeRun| chosen.iter().any(|c| c.stage == n.stage);
        let defining: Vec<&NodeRun> = if data.nodes.iter().any(has_metric) {
            data.nodes.iter().filter(|n| has_metric(n)).collect()
        } else {
            data.nodes.iter().collect()
        };
        let mut points: Vec<BTreeMap<String, Value>> = Vec::new();
        for n in &defining {
            let contained = defining
                .iter()
                .any(|m| m.point.len() > n.point.len() && within(&n.point, &m.point));
            if !contained && !points.contains(&n.point) {
                points.push(n.point.clone());
            }
        }
        if points.is_empty() {
            points.push(BTreeMap::new());
        }
        // Points the pipeline no longer has go last, in the order of their text.
        points.sort_by_cached_key(|p| {
            let rank = order.iter().position(|o| o == p).unwrap_or(usize::MAX);
            (rank, serde_json::to_string(p).unwrap_or_default())
        });
        for point in points {
            let nodes: Vec<&NodeRun> = data
                .nodes
                .iter()
                .filter(|n| within(&n.point, &point))
                .collect();
            let mut params = BTreeMap::new();
            for n in &nodes {
                for (k, v) in n.params.iter().flatten() {
                    params.insert(format!("{}.{k}", n.stage), v.clone());
                }
            }
            let complete = expected
                .iter()
                .filter(|(_, p)| within(p, &point))
                .all(|(id, _)| {
                    nodes.iter().any(|n| {
                        &n.node == id && matches!(n.status.as_str(), "executed" | "cached")
                    })
                });
            rows.push(TableRow {
                data,
                point,
                nodes,
                params,
                complete,
            });
        }
    }
    rows
}

/// Refuses a `--param` entry that names no parameter of the rows (neither a name nor a
/// dotted prefix of one), with the closest names.
fn check_param_names(rows: &[TableRow<'_>], only: &[String]) -> Result<(), CliError> {
    let names: BTreeSet<&String> = rows.iter().flat_map(|r| r.params.keys()).collect();
    for want in only.iter().map(|o| o.trim()) {
        if names.iter().any(|n| param_named(n, want)) {
            continue;
        }
        // Names and their stage prefixes, the two forms an entry can take.
        let mut candidates: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        candidates.extend(
            names
                .iter()
                .filter_map(|n| n.split_once('.').map(|(stage, _)| stage.to_string())),
        );
        candidates.sort();
        candidates.dedup();
        let close = did_you_mean(want, &candidates);
        let hint = if close.is_empty() {
            "`--all-params` lists them all".to_string()
        } else {
            format!("did you mean {}?", close.join(" or "))
        };
        return Err(CliError::usage(format!(
            "--param {want}: no parameter of that name or prefix in these runs; {hint}"
        )));
    }
    Ok(())
}

/// Whether `--param` entry `want` names parameter `name`: itself, or a dotted prefix.
fn param_named(name: &str, want: &str) -> bool {
    name == want
        || name
            .strip_prefix(want)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// The parameter columns: those whose value is not the same in every row (a row without
/// the parameter differs from one with it), or all with `all`; only those `only` names
/// (a name, or a dotted prefix of names) when it names any.
fn param_columns(rows: &[TableRow<'_>], all: bool, only: &[String]) -> Vec<String> {
    let names: BTreeSet<&String> = rows.iter().flat_map(|r| r.params.keys()).collect();
    let named = |name: &str| only.is_empty() || only.iter().any(|o| param_named(name, o.trim()));
    names
        .into_iter()
        .filter(|name| named(name))
        .filter(|name| {
            all || {
                let first = rows[0].params.get(*name);
                rows.iter().any(|r| r.params.get(*name) != first)
            }
        })
        .cloned()
        .collect()
}

fn metric_of(r: &TableRow<'_>, c: &MetricCol) -> Option<f64> {
    r.nodes
        .iter()
        .find(|n| n.stage == c.stage)
        .and_then(|n| n.metrics.get(&c.metric).copied())
}

/// A row's status: the worst end of its own nodes (`failed`, `cancelled`, `skipped`);
/// `ok` for a point of a failed or interrupted run whose every node (as the pipeline is
/// now) completed, since the failure was another point's; else the run's (`ok`,
/// `running`, `dead`, `failed`: the run stopped before this point's nodes ran).
fn row_status(r: &TableRow<'_>) -> String {
    for bad in ["failed", "cancelled", "skipped"] {
        if r.nodes.iter().any(|n| n.status == bad) {
            return bad.into();
        }
    }
    match r.data.run.status.as_str() {
        "failed" | "interrupted" | "dead" if r.complete => "ok".into(),
        other => other.into(),
    }
}

fn overrides_text(run: &RunRow) -> String {
    run.settings
        .override_map()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A parameter or matrix value for a cell: strings bare, the rest as compact JSON.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The first 12 characters of a key for people; the whole key for CSV.
fn short_key(key: &str, full: bool) -> String {
    if full {
        key.to_string()
    } else {
        key.chars().take(12).collect()
    }
}

/// A metric for people: integers bare, otherwise four decimals (scientific outside
/// 1e-3..1e4), trailing zeros dropped.
fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    if v.abs() >= 1e4 || v.abs() < 1e-3 {
        return format!("{v:.4e}");
    }
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The widest a text cell is printed (a `command` stage's `cmd` can be a paragraph);
/// `--json` and `--csv` give every value whole.
const MAX_CELL: usize = 40;

/// An aligned table: two spaces between columns, `numeric` columns right-aligned, an
/// empty cell as `-`, a cell wider than [`MAX_CELL`] cut with `…` (and a note saying so).
fn print_table(header: &[String], body: &[Vec<String>], numeric: &[bool]) {
    let mut cut_any = false;
    let body: Vec<Vec<String>> = body
        .iter()
        .map(|row| {
            row.iter()
                .map(|c| {
                    if c.chars().count() > MAX_CELL {
                        cut_any = true;
                        let head: String = c.chars().take(MAX_CELL - 1).collect();
                        format!("{head}…")
                    } else {
                        c.clone()
                    }
                })
                .collect()
        })
        .collect();
    let cell = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &body {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell(c).chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i] - c.chars().count();
                if numeric[i] {
                    format!("{}{c}", " ".repeat(pad))
                } else {
                    format!("{c}{}", " ".repeat(pad))
                }
            })
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &body {
        line(row.iter().map(|c| cell(c)).collect());
    }
    if cut_any {
        println!("(… : a value cut at {MAX_CELL} characters; --json or --csv give it whole)");
    }
}

/// RFC 4180: a field with a comma, quote or line break is quoted, quotes doubled.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn print_csv(header: &[String], body: &[Vec<String>]) {
    let line = |cells: &[String]| {
        cells
            .iter()
            .map(|c| csv_field(c))
            .collect::<Vec<_>>()
            .join(",")
    };
    println!("{}", line(header));
    for row in body {
        println!("{}", line(row));
    }
}

/// `--diff A [B]`: what differs between two runs of the pipeline, node by node.
fn diff(a: &ShowArgs, id: &str, runs: &[RunData], dag: &Dag) -> CliResult {
    let find = |run: i64| -> Result<&RunData, CliError> {
        runs.iter().find(|r| r.run.id == run).ok_or_else(|| {
            let ids: Vec<String> = runs.iter().map(|r| r.run.id.to_string()).collect();
            CliError::usage(format!(
                "--diff: no run {run} of {id}{}",
                if ids.is_empty() {
                    " (it has no runs yet)".to_string()
                } else {
                    format!(" (its runs: {})", ids.join(", "))
                }
            ))
        })
    };
    let first = find(a.diff[0])?;
    let second = match a.diff.get(1) {
        Some(&b) => find(b)?,
        None => {
            let latest = runs.last().expect("find succeeded, so there is a run");
            if latest.run.id == first.run.id {
                return Err(CliError::usage(format!(
                    "--diff {}: that is the latest run of {id}; name the run to compare it with, e.g. `--diff {} {}`",
                    first.run.id,
                    runs.len()
                        .checked_sub(2)
                        .map_or("A".to_string(), |i| runs[i].run.id.to_string()),
                    first.run.id
                )));
            }
            latest
        }
    };
    let both = [first, second];
    let chosen = choose_metrics(
        &a.metric,
        both.iter().flat_map(|r| &r.nodes),
        &report_metrics(dag),
    )?;

    // (section, name, A, B, change): every value as text for people, JSON for machines.
    let mut overrides = Vec::new();
    let (oa, ob) = (
        first.run.settings.override_map(),
        second.run.settings.override_map(),
    );
    for k in oa.keys().chain(ob.keys()).collect::<BTreeSet<_>>() {
        if oa.get(k) != ob.get(k) {
            overrides.push((k.clone(), oa.get(k).cloned(), ob.get(k).cloned()));
        }
    }
    let by_node = |r: &RunData| -> BTreeMap<String, NodeRun> {
        r.nodes
            .iter()
            .map(|n| (n.node.clone(), n.clone()))
            .collect()
    };
    let (na, nb) = (by_node(first), by_node(second));
    let node_ids: BTreeSet<&String> = na.keys().chain(nb.keys()).collect();
    let mut params = Vec::new();
    let mut metrics = Vec::new();
    let mut keys = Vec::new();
    for node in node_ids {
        let (x, y) = (na.get(node), nb.get(node));
        let empty = BTreeMap::new();
        let px = x.and_then(|n| n.params.as_ref()).unwrap_or(&empty);
        let py = y.and_then(|n| n.params.as_ref()).unwrap_or(&empty);
        for p in px.keys().chain(py.keys()).collect::<BTreeSet<_>>() {
            if px.get(p) != py.get(p) {
                params.push((
                    format!("{node}.{p}"),
                    px.get(p).cloned(),
                    py.get(p).cloned(),
                ));
            }
        }
        let stage = x.or(y).map(|n| n.stage.clone()).unwrap_or_default();
        for c in chosen.iter().filter(|c| c.stage == stage) {
            let mx = x.and_then(|n| n.metrics.get(&c.metric)).copied();
            let my = y.and_then(|n| n.metrics.get(&c.metric)).copied();
            if mx != my {
                metrics.push((format!("{node}.{}", c.metric), mx, my));
            }
        }
        let (kx, ky) = (x.map(|n| n.key.clone()), y.map(|n| n.key.clone()));
        if kx != ky {
            keys.push((node.clone(), kx, ky));
        }
    }
    let change = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => Some(y - x),
        _ => None,
    };
    let pct = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) if x != 0.0 => Some((y - x) / x.abs() * 100.0),
        _ => None,
    };
    let (ra, rb) = (first.run.id, second.run.id);

    if a.json {
        let doc = json!({
            "pipeline": id,
            "a": {"run": ra, "started": super::store::fmt_ms(first.run.started_unix_ms),
                  "status": first.run.status},
            "b": {"run": rb, "started": super::store::fmt_ms(second.run.started_unix_ms),
                  "status": second.run.status},
            "overrides": overrides.iter().map(|(k, x, y)| json!({"key": k, "a": x, "b": y}))
                .collect::<Vec<_>>(),
            "params": params.iter().map(|(k, x, y)| json!({"param": k, "a": x, "b": y}))
                .collect::<Vec<_>>(),
            "metrics": metrics.iter().map(|(k, x, y)| json!({"metric": k, "a": x, "b": y,
                    "change": change(*x, *y), "change_pct": pct(*x, *y)}))
                .collect::<Vec<_>>(),
            "keys": keys.iter().map(|(k, x, y)| json!({"node": k, "a": x, "b": y}))
                .collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string(&doc).map_err(CliError::failed)?);
        return Ok(0);
    }
    let opt = |v: Option<String>| v.unwrap_or_default();
    let mut body: Vec<Vec<String>> = Vec::new();
    for (k, x, y) in &overrides {
        body.push(vec![
            "override".into(),
            k.clone(),
            opt(x.clone()),
            opt(y.clone()),
            String::new(),
        ]);
    }
    for (k, x, y) in &params {
        body.push(vec![
            "param".into(),
            k.clone(),
            opt(x.as_ref().map(value_text)),
            opt(y.as_ref().map(value_text)),
            String::new(),
        ]);
    }
    for (k, x, y) in &metrics {
        let num = |v: Option<f64>| opt(v.map(|v| if a.csv { v.to_string() } else { fmt_num(v) }));
        let delta = match (change(*x, *y), pct(*x, *y)) {
            (Some(d), _) if a.csv => d.to_string(),
            (Some(d), Some(p)) => format!(
                "{}{} ({:+.1}%)",
                if d >= 0.0 { "+" } else { "" },
                fmt_num(d),
                p
            ),
            (Some(d), None) => format!("{}{}", if d >= 0.0 { "+" } else { "" }, fmt_num(d)),
            (None, _) => String::new(),
        };
        body.push(vec!["metric".into(), k.clone(), num(*x), num(*y), delta]);
    }
    for (k, x, y) in &keys {
        let key = |v: &Option<String>| opt(v.as_deref().map(|k| short_key(k, a.csv)));
        body.push(vec!["key".into(), k.clone(), key(x), key(y), String::new()]);
    }
    let header: Vec<String> = vec![
        "what".into(),
        "name".into(),
        format!("run {ra}"),
        format!("run {rb}"),
        "change".into(),
    ];
    if a.csv {
        print_csv(&header, &body);
    } else if body.is_empty() {
        println!("runs {ra} and {rb} of {id}: no overrides, parameters, metrics or keys differ");
    } else {
        println!(
            "run {ra} ({}) vs run {rb} ({})",
            first.run.status, second.run.status
        );
        print_table(&header, &body, &[false, false, false, false, true]);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_read_back_as_stage_and_point() {
        let (stage, point) = parse_node_id("distill[adf=true,label_ratio=0.25,name=a b,w=[1,2]]");
        assert_eq!(stage, "distill");
        assert_eq!(
            point,
            BTreeMap::from([
                ("adf".to_string(), json!(true)),
                ("label_ratio".to_string(), json!(0.25)),
                ("name".to_string(), json!("a b")),
                ("w".to_string(), json!([1, 2])),
            ])
        );
        assert_eq!(
            parse_node_id("split"),
            ("split".to_string(), BTreeMap::new())
        );
    }

    fn node(stage: &str, kind: &str, metrics: &[(&str, f64)]) -> NodeRun {
        NodeRun {
            node: stage.into(),
            stage: stage.into(),
            kind: kind.into(),
            point: BTreeMap::new(),
            key: "k".repeat(64),
            status: "executed".into(),
            params: None,
            metrics: metrics.iter().map(|(m, v)| (m.to_string(), *v)).collect(),
        }
    }

    fn names(cols: &[MetricCol]) -> Vec<String> {
        cols.iter().map(MetricCol::name).collect()
    }

    #[test]
    fn default_metrics_are_the_evaluations_the_report_compares() {
        let nodes = [
            node("supernet", "supernet", &[("loss_g", 1.0)]),
            node(
                "eval_ugc",
                "evaluate",
                &[("miou", 0.5), ("psnr", 20.0), ("fid", 9.0)],
            ),
            node("eval_student", "evaluate", &[("miou", 0.4), ("psnr", 19.0)]),
            node("report", "report", &[("tables", 3.0)]),
        ];
        let reported = BTreeSet::from(["miou".to_string(), "fid".to_string()]);
        let chosen = choose_metrics(&[], nodes.iter(), &reported).unwrap();
        assert_eq!(
            names(&chosen),
            ["eval_student.miou", "eval_ugc.fid", "eval_ugc.miou"]
        );
        // No report (or none of its metrics recorded): every metric of the evaluations.
        let chosen = choose_metrics(&[], nodes.iter(), &BTreeSet::new()).unwrap();
        assert_eq!(
            names(&chosen),
            [
                "eval_student.miou",
                "eval_student.psnr",
                "eval_ugc.fid",
                "eval_ugc.miou",
                "eval_ugc.psnr"
            ]
        );
        // No evaluation at all: whatever was recorded.
        let chosen = choose_metrics(&[], nodes[..1].iter(), &reported).unwrap();
        assert_eq!(names(&chosen), ["supernet.loss_g"]);
        // Asked for: by name (every stage), by stage and name, in stage order.
        let asked = ["psnr".to_string(), "report.tables".to_string()];
        let chosen = choose_metrics(&asked, nodes.iter(), &reported).unwrap();
        assert_eq!(
            names(&chosen),
            ["eval_student.psnr", "eval_ugc.psnr", "report.tables"]
        );
        let err = choose_metrics(&["moiu".into()], nodes.iter(), &reported).unwrap_err();
        assert_eq!(err.code, crate::cli::EXIT_USAGE);
        assert!(
            err.message.contains("did you mean `miou`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn nested_params_flatten_to_dotted_names() {
        let flat = flatten(&json!({"lr": 0.1, "model": {"ngf": 8, "opts": {}}, "w": [1]}));
        assert_eq!(
            flat,
            BTreeMap::from([
                ("lr".to_string(), json!(0.1)),
                ("model.ngf".to_string(), json!(8)),
                ("model.opts".to_string(), json!({})),
                ("w".to_string(), json!([1])),
            ])
        );
    }

    #[test]
    fn numbers_and_csv_fields_are_written_readably_and_safely() {
        assert_eq!(fmt_num(31.0), "31");
        assert_eq!(fmt_num(31.25), "31.25");
        assert_eq!(fmt_num(0.123456), "0.1235");
        assert_eq!(fmt_num(12345.5), "1.2346e4");
        assert_eq!(fmt_num(0.0001), "1.0000e-4");
        assert_eq!(csv_field("a=1 b=2"), "a=1 b=2");
        assert_eq!(csv_field("[1, 2]"), "\"[1, 2]\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn runs_shows_the_flags_as_one_would_type_them() {
        let o = |k: &str, v: &str| Override {
            key: k.into(),
            value: v.into(),
        };
        let s = RunSettings {
            overrides: vec![o("train.lr", "0.1"), o("model.w", "[1, 2]"), o("t", "it's")],
            executor: "slurm".into(),
            profile: Some("site.yaml".into()),
            executor_overrides: vec![o("partition", "gpu")],
            settings_source: SettingsSource::Recorded,
        };
        assert_eq!(
            settings_text(&s),
            "  --set train.lr=0.1 --set 'model.w=[1, 2]' --set 't=it'\\''s' --executor slurm \
             --profile site.yaml --executor-set partition=gpu"
        );
        let local = RunSettings {
            executor: "local".into(),
            ..RunSettings::default()
        };
        assert_eq!(settings_text(&local), "");
    }
}
