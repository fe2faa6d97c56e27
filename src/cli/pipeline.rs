//! Verbs that read a pipeline: run, status, dag, explain, show.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ugc_engine::KindRegistry;
use ugc_engine::cache::Cache;
use ugc_engine::exec::register_record;
use ugc_engine::executor::{NodeOutcome, RunOptions, run_dag};
use ugc_engine::graph::Dag;
use ugc_engine::plan::{KeyBuilder, NodeState, RunReason, describe_changes, plan};
use ugc_engine::registry::Registry;
use ugc_engine::spec::{LoadOptions, Machine, Pipeline, load_pipeline, suggest};

use super::{CliError, CliResult, DagFormat, EXIT_FAILED, EXIT_INTERRUPTED, PipelineArgs};
use crate::runtime::{fingerprint, resolve_device};

/// A loaded pipeline with everything the verbs need.
struct Session {
    pipeline: Pipeline,
    dag: Dag,
    kinds: KindRegistry,
    cache: Cache,
    registry: Registry,
    device_kind: String,
    gpus: Vec<usize>,
}

impl Session {
    fn id(&self) -> String {
        self.pipeline.path.display().to_string()
    }
    fn keys(&self) -> KeyBuilder<'_> {
        KeyBuilder {
            cache: &self.cache,
            kinds: &self.kinds,
            env: fingerprint(),
            device_kind: self.device_kind.clone(),
        }
    }
}

/// `cache/` next to `pipelines/` when the pipeline lives in a `pipelines/` folder,
/// else next to the pipeline file.
pub fn default_cache_dir(pipeline: &Path) -> PathBuf {
    let dir = pipeline
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let root = if dir.file_name().is_some_and(|n| n == "pipelines") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    root.join("cache")
}

/// Loads the pipeline of `p`. `for_run`: it is about to run here (`run`, `run --dry-run`),
/// so a stage asking for more devices than this machine has is refused with the other
/// problems; the verbs that only report (`status`, `explain`, `show`) plan it anywhere.
fn open(p: &PipelineArgs, for_run: bool) -> Result<Session, CliError> {
    open_on(p, for_run, false)
}

/// [`open`]; `on_slurm`: the stages run on a cluster's nodes, so this machine's devices
/// do not bound them (Slurm refuses what no node has), and `--device cuda` needs no GPU
/// on the head.
fn open_on(p: &PipelineArgs, for_run: bool, on_slurm: bool) -> Result<Session, CliError> {
    let kinds = crate::stages::schema_registry();
    let (device_kind, gpus) = if on_slurm && p.device == crate::runtime::DeviceChoice::Cuda {
        ("cuda".to_string(), Vec::new())
    } else {
        resolve_device(p.device).map_err(CliError::usage)?
    };
    let opts = LoadOptions {
        overrides: p.set.clone(),
        machine: (for_run && !on_slurm).then(|| Machine::with_gpus(gpus.len())),
        ..LoadOptions::default()
    };
    let pipeline = load_pipeline(&p.pipeline, &kinds, &opts).map_err(CliError::usage)?;
    let dag = Dag::build(&pipeline, &kinds).map_err(CliError::usage)?;
    let cache_dir = p
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_cache_dir(&pipeline.path));
    let cache = Cache::open(&cache_dir)
        .map_err(|e| CliError::failed(format!("cache {}: {e}", cache_dir.display())))?;
    let registry = Registry::open(&cache.root().join("registry.sqlite"))
        .map_err(|e| CliError::failed(format!("run registry: {e}")))?;
    Ok(Session {
        pipeline,
        dag,
        kinds,
        cache,
        registry,
        device_kind,
        gpus,
    })
}

/// The refusal of a name that is no stage or node of the pipeline, with the closest
/// names (else the stage names): `what` says where it was written (`--force x`).
fn unknown_node(s: &Session, what: &str, name: &str) -> CliError {
    let mut names: Vec<String> = s
        .dag
        .nodes()
        .flat_map(|(_, n)| [n.stage.clone(), n.id.clone()])
        .collect();
    names.sort();
    names.dedup();
    let mut hint = suggest::did_you_mean(name, &names);
    if hint.is_empty() {
        let stages: Vec<&str> = s.pipeline.stages.iter().map(|t| t.name.as_str()).collect();
        hint = format!(" (its stages: {})", stages.join(", "));
    }
    CliError::usage(format!(
        "{what}: no stage or node `{name}` in {}{hint}",
        s.pipeline.path.display()
    ))
}

/// The nodes `--force` names (every node of a stage name), all checked before anything
/// runs: an unknown name is exit 2 with the closest names.
fn forced_nodes(
    s: &Session,
    force: &[String],
) -> Result<BTreeSet<petgraph::graph::NodeIndex>, CliError> {
    let mut out = BTreeSet::new();
    for f in force {
        let found = s.dag.find(f);
        if found.is_empty() {
            return Err(unknown_node(s, &format!("--force {f}"), f));
        }
        out.extend(found);
    }
    Ok(out)
}

/// `run P TARGET...`: keeps the targets (a stage name: all its nodes; or a node id) and
/// their ancestors only, so that the plan, the execution and the summary cover just what
/// the targets need (`dvc repro STAGE`). Every target is checked first (exit 2 with
/// "did you mean"); no target keeps the whole DAG.
fn select_targets(s: &mut Session, targets: &[String]) -> Result<(), CliError> {
    if targets.is_empty() {
        return Ok(());
    }
    let mut chosen = BTreeSet::new();
    let mut unknown = Vec::new();
    for t in targets {
        let found = s.dag.find(t);
        if found.is_empty() {
            unknown.push(unknown_node(s, &format!("target `{t}`"), t).message);
        }
        chosen.extend(found);
    }
    if !unknown.is_empty() {
        return Err(CliError::usage(unknown.join("\n")));
    }
    s.dag = s.dag.restricted(&s.dag.with_ancestors(&chosen));
    Ok(())
}

/// The Slurm executor's settings: the pipeline's `executor:` block, then the profile,
/// then `--executor-set`; every problem (with its position or flag) at once, exit 2.
fn slurm_settings(
    pipeline: &Path,
    e: &super::ExecutorArgs,
) -> Result<ugc_engine::slurm::settings::SlurmSettings, CliError> {
    let mut settings = ugc_engine::slurm::settings::SlurmSettings::default();
    let text = std::fs::read_to_string(pipeline)
        .map_err(|err| CliError::usage(format!("{}: {err}", pipeline.display())))?;
    let mut problems = Vec::new();
    if let Err(err) = settings.apply_pipeline(&text, pipeline) {
        problems.push(err.to_string());
    }
    if let Some(profile) = &e.profile
        && let Err(err) = settings.apply_profile_file(profile)
    {
        problems.push(err.to_string());
    }
    if let Err(err) = settings.apply_overrides(&e.executor_set, "--executor-set") {
        problems.push(err.to_string());
    }
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(CliError::usage(format!(
            "bad executor settings:\n{}",
            problems.join("\n")
        )))
    }
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    p: &PipelineArgs,
    targets: &[String],
    executor: &super::ExecutorArgs,
    dry_run: bool,
    force: &[String],
    keep_going: bool,
    jobs: Option<usize>,
    json: bool,
    bars: bool,
) -> CliResult {
    let on_slurm = executor.executor == super::ExecutorKind::Slurm;
    if !on_slurm && (executor.profile.is_some() || !executor.executor_set.is_empty()) {
        return Err(CliError::usage(
            "--profile and --executor-set configure `--executor slurm`",
        ));
    }
    let mut s = open_on(p, true, on_slurm)?;
    // Checked before anything runs, also for `--dry-run`.
    let settings = on_slurm
        .then(|| slurm_settings(&s.pipeline.path, executor))
        .transpose()?;
    // `--force` names are checked against the whole pipeline, then must lie among the
    // targets' nodes (forcing a node that will not run is a mistake worth saying).
    let force_ids: BTreeSet<String> = forced_nodes(&s, force)?
        .into_iter()
        .map(|i| s.dag.node(i).id.clone())
        .collect();
    select_targets(&mut s, targets)?;
    let forced: BTreeSet<petgraph::graph::NodeIndex> = s
        .dag
        .nodes()
        .filter(|(_, n)| force_ids.contains(&n.id))
        .map(|(i, _)| i)
        .collect();
    if let Some(f) = force.iter().find(|f| s.dag.find(f).is_empty()) {
        return Err(CliError::usage(format!(
            "--force {f}: not among the nodes the targets ({}) need",
            targets.join(", ")
        )));
    }
    if dry_run {
        return print_plan(&s, &forced, json);
    }
    check_external_inputs(&s)?;
    let argv: Vec<String> = std::env::args().collect();
    let run_id = s
        .registry
        .begin_run_with(&s.id(), &argv, &super::exp::run_settings(p, executor))
        .map_err(|e| CliError::failed(format!("run registry: {e}")))?;
    let worker = super::forward::worker_path()?;
    let mut stage_env = std::collections::BTreeMap::new();
    stage_env.insert(
        "UGC_PIPELINE_DIR".to_string(),
        s.pipeline.dir.display().to_string(),
    );
    let opts = RunOptions {
        jobs: jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        keep_going,
        forced,
        gpus: s.gpus.clone(),
        exec_command: vec![worker.display().to_string(), "exec".into()],
        pipeline: s.id(),
        run_id: Some(run_id),
        stage_env,
        cancel_grace_secs: ugc_engine::executor::CANCEL_GRACE_SECS,
        slurm: settings.map(|settings| ugc_engine::executor::SlurmRun {
            settings,
            commands: ugc_engine::slurm::queue::Commands::default(),
            worker: worker.clone(),
            gpus: s.device_kind == "cuda",
        }),
    };
    let keys = s.keys();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("tokio runtime: {e}")))?;
    let result = rt.block_on(async {
        if json {
            run_dag(
                &s.dag,
                &s.cache,
                &s.registry,
                &keys,
                &opts,
                &mut crate::ui::JsonUi,
            )
            .await
        } else {
            let mut ui = crate::ui::TermUi::new(bars).with_stages(s.dag.len());
            run_dag(&s.dag, &s.cache, &s.registry, &keys, &opts, &mut ui).await
        }
    });
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = s.registry.end_run(run_id, "failed");
            return Err(CliError::failed(e));
        }
    };
    let status = if summary.interrupted {
        "interrupted"
    } else if summary.ok() {
        "ok"
    } else {
        "failed"
    };
    let _ = s.registry.end_run(run_id, status);
    let (ex, ca, fa, sk) = (
        summary.count(NodeOutcome::Executed),
        summary.count(NodeOutcome::Cached),
        summary.count(NodeOutcome::Failed),
        summary.count(NodeOutcome::Skipped),
    );
    let outputs = run_outputs(&s, &summary.outcomes);
    if json {
        println!(
            "{}",
            serde_json::json!({"event": "summary", "run_id": run_id, "status": status,
                "executed": ex, "cached": ca, "failed": fa, "skipped": sk,
                "cancelled": summary.count(NodeOutcome::Cancelled),
                "secs": summary.secs, "errors": summary.errors, "outputs": outputs})
        );
    } else {
        tracing::info!(
            "run {run_id} {status}: {ex} executed, {ca} cached, {fa} failed, {sk} skipped in {:.2}s",
            summary.secs
        );
        for o in &outputs {
            tracing::info!(
                "{} ({}): {}",
                o["node"].as_str().unwrap_or(""),
                o["kind"].as_str().unwrap_or(""),
                o["output"].as_str().unwrap_or("")
            );
        }
    }
    Ok(if summary.interrupted {
        EXIT_INTERRUPTED
    } else if summary.ok() {
        0
    } else {
        EXIT_FAILED
    })
}

/// Where a run's results are, for its last lines: the output folders of the nodes it
/// covered (`outcomes`) that are of kind `report` or `export`, or when it covered none of
/// those, of its sinks (covered nodes no covered node depends on); only those committed,
/// so a failed run lists what it did finish. The plan is made again to find their records
/// (a stage may have been computed by this run).
fn run_outputs(s: &Session, outcomes: &BTreeMap<String, NodeOutcome>) -> Vec<serde_json::Value> {
    let plan = match plan_of(s, &BTreeSet::new()) {
        Ok(plan) => plan,
        Err(e) => {
            tracing::warn!("where the outputs are: {}", e.message);
            return Vec::new();
        }
    };
    result_nodes(&s.dag, &plan.order, |id| outcomes.contains_key(id))
        .into_iter()
        .filter_map(|i| {
            let NodeState::Cached { record, .. } = &plan.states[&i] else {
                return None;
            };
            let dir = s.cache.output_dir(record).ok()?;
            let node = s.dag.node(i);
            Some(serde_json::json!({"node": node.id, "kind": node.kind,
                "output": shown_path(&dir)}))
        })
        .collect()
}

/// The nodes whose outputs are a run's results, in `order`: among the nodes the run
/// covered, those of kind `report` or `export`; if none, the covered nodes that no covered
/// node depends on.
fn result_nodes(
    dag: &Dag,
    order: &[petgraph::graph::NodeIndex],
    covered: impl Fn(&str) -> bool,
) -> Vec<petgraph::graph::NodeIndex> {
    let covered: Vec<_> = order
        .iter()
        .copied()
        .filter(|i| covered(&dag.node(*i).id))
        .collect();
    let results: Vec<_> = covered
        .iter()
        .copied()
        .filter(|i| matches!(dag.node(*i).kind.as_str(), "report" | "export"))
        .collect();
    if !results.is_empty() {
        return results;
    }
    covered
        .iter()
        .copied()
        .filter(|i| dag.dependents(*i).iter().all(|d| !covered.contains(d)))
        .collect()
}

/// Refuses to start when a dataset or weights file a stage names is missing: better now
/// than after hours of upstream training.
/// Every external input (dataset, weights file) of the pipeline that does not exist, one
/// entry per file: where each stage names it, what it is and how to get it.
fn missing_external_inputs(s: &Session) -> Vec<String> {
    struct Missing {
        uses: Vec<String>,
        what: String,
        how: Option<String>,
    }
    let one_line = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut by_path: BTreeMap<PathBuf, Missing> = BTreeMap::new();
    for (_, node) in s.dag.nodes() {
        for (param, path) in &node.external_inputs {
            if path.exists() {
                continue;
            }
            let segs: Vec<String> = param.split('.').map(str::to_string).collect();
            let pos = s
                .pipeline
                .stage(&node.stage)
                .map_or(node.pos.clone(), |st| st.param_pos.at(&segs).clone());
            let ps = s
                .kinds
                .schema(&node.kind)
                .and_then(|k| k.params.get(&segs[0]));
            let entry = by_path.entry(path.clone()).or_insert_with(|| Missing {
                uses: Vec::new(),
                // The first sentence says what it is; the doc has the rest.
                what: ps.map_or(String::new(), |ps| {
                    let doc = one_line(&ps.doc);
                    doc.split_inclusive(". ")
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string()
                }),
                how: ps.and_then(|ps| ps.how_to_get.as_deref().map(one_line)),
            });
            let usage = format!("{pos} (stage `{}`, `{param}`)", node.stage);
            if !entry.uses.contains(&usage) {
                entry.uses.push(usage);
            }
        }
    }
    by_path
        .into_iter()
        .map(|(path, m)| {
            let mut text = format!("{} does not exist", path.display());
            text.push_str(&format!("\n      named at: {}", m.uses.join(", ")));
            if !m.what.is_empty() {
                text.push_str(&format!("\n      what: {}", m.what));
            }
            if let Some(how) = m.how {
                text.push_str(&format!("\n      how to get it: {how}"));
            }
            text
        })
        .collect()
}

/// The refusal of a pipeline whose external inputs are missing: all of them at once.
fn missing_inputs_error(missing: &[String]) -> CliError {
    CliError::usage(format!(
        "the plan cannot run: {} external input(s) missing:\n  {}",
        missing.len(),
        missing.join("\n  ")
    ))
}

fn check_external_inputs(s: &Session) -> Result<(), CliError> {
    let missing = missing_external_inputs(s);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing_inputs_error(&missing))
    }
}

fn plan_of(
    s: &Session,
    forced: &BTreeSet<petgraph::graph::NodeIndex>,
) -> Result<ugc_engine::plan::Plan, CliError> {
    plan(&s.dag, &s.keys(), Some(&s.registry), &s.id(), forced).map_err(CliError::failed)
}

fn print_plan(s: &Session, forced: &BTreeSet<petgraph::graph::NodeIndex>, json: bool) -> CliResult {
    let plan = plan_of(s, forced)?;
    let mut rows = Vec::new();
    for idx in &plan.order {
        let node = s.dag.node(*idx);
        let st = &plan.states[idx];
        let (action, why) = match st {
            NodeState::Cached { .. } => ("cached", String::new()),
            NodeState::Run { reason, .. } => ("run", reason.to_string()),
            NodeState::Blocked { reason } => ("run", reason.to_string()),
        };
        rows.push(
            serde_json::json!({"node": node.id, "kind": node.kind, "action": action,
            "why": why, "key": st.key().map(|k| k.to_string())}),
        );
    }
    let missing = missing_external_inputs(s);
    if json {
        println!(
            "{}",
            serde_json::json!({"plan": rows, "runnable": missing.is_empty(), "missing_inputs": missing})
        );
    } else {
        let n_run = rows.iter().filter(|r| r["action"] == "run").count();
        if missing.is_empty() {
            println!("plan: {n_run} to run, {} cached", rows.len() - n_run);
        } else {
            println!(
                "plan: cannot run ({} external input(s) missing); {n_run} would run, {} cached",
                missing.len(),
                rows.len() - n_run
            );
        }
        for r in &rows {
            let why = r["why"].as_str().unwrap_or("");
            println!(
                "  {:<7} {:<40} {}",
                r["action"].as_str().unwrap_or(""),
                r["node"].as_str().unwrap_or(""),
                why
            );
        }
    }
    if missing.is_empty() {
        Ok(0)
    } else {
        Err(missing_inputs_error(&missing))
    }
}

pub fn status(p: &PipelineArgs, json: bool) -> CliResult {
    let s = open(p, false)?;
    let plan = plan_of(&s, &BTreeSet::new())?;
    let mut rows = Vec::new();
    let mut slurm_text = Vec::new();
    for idx in &plan.order {
        let node = s.dag.node(*idx);
        let (state, why, cause) = node_status(&s, &plan, *idx)?;
        // `why` is for people; `cause` is the same reason as structured data.
        let mut row = serde_json::json!({"node": node.id, "kind": node.kind, "status": state,
            "why": why, "cause": cause});
        // Its latest Slurm job, for a node that ran as one (`--executor slurm`).
        if let Some(j) = super::store::last_slurm_job(&s.registry, &s.id(), &node.id)? {
            row["slurm"] = super::store::slurm_json(&j);
            slurm_text.push(Some(super::store::describe_slurm_job(&j)));
        } else {
            slurm_text.push(None);
        }
        rows.push(row);
    }
    if json {
        let missing = missing_external_inputs(&s);
        println!(
            "{}",
            serde_json::json!({"stages": rows, "runnable": missing.is_empty(), "missing_inputs": missing})
        );
    } else {
        for (r, slurm) in rows.iter().zip(&slurm_text) {
            println!(
                "{:<8} {:<40} {}{}",
                r["status"].as_str().unwrap_or(""),
                r["node"].as_str().unwrap_or(""),
                r["why"].as_str().unwrap_or(""),
                slurm
                    .as_ref()
                    .map(|t| format!("  [slurm {t}]"))
                    .unwrap_or_default()
            );
        }
        // Status reports; it does not refuse. The list says what `run` would refuse.
        let missing = missing_external_inputs(&s);
        if !missing.is_empty() {
            println!(
                "cannot run: {} external input(s) missing:\n  {}",
                missing.len(),
                missing.join("\n  ")
            );
        }
    }
    Ok(0)
}

/// A node's status as `status` gives it: `cached`, `missing` (never run) or `stale`, with
/// why for people and the same reason as data (`cause`).
fn node_status<'p>(
    s: &Session,
    plan: &'p ugc_engine::plan::Plan,
    idx: petgraph::graph::NodeIndex,
) -> Result<(&'static str, String, Option<&'p RunReason>), CliError> {
    Ok(match &plan.states[&idx] {
        NodeState::Cached { .. } => ("cached", String::new(), None),
        NodeState::Run { reason, .. } => match reason {
            RunReason::New => ("missing", "never run".to_string(), None),
            r => ("stale", r.to_string(), Some(r)),
        },
        NodeState::Blocked { reason } => {
            let last = s
                .registry
                .last_node_key(&s.id(), &s.dag.node(idx).id)
                .map_err(CliError::failed)?;
            if last.is_some() {
                ("stale", reason.to_string(), Some(reason))
            } else {
                ("missing", "never run".to_string(), None)
            }
        }
    })
}

/// `path` as people use it from here: relative to the current directory when it lies
/// under it (short, and the same on every machine for a project's own cache), else
/// absolute.
fn shown_path(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(cwd) = std::env::current_dir() else {
        return abs;
    };
    match abs.strip_prefix(&cwd) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.to_path_buf(),
        Ok(_) => PathBuf::from("."),
        Err(_) => abs,
    }
}

pub fn dag(p: &PipelineArgs, format: DagFormat) -> CliResult {
    let kinds = crate::stages::schema_registry();
    let opts = LoadOptions {
        overrides: p.set.clone(),
        ..LoadOptions::default()
    };
    let pipeline = load_pipeline(&p.pipeline, &kinds, &opts).map_err(CliError::usage)?;
    let dag = Dag::build(&pipeline, &kinds).map_err(CliError::usage)?;
    match format {
        DagFormat::Dot => print!("{}", dag.to_dot()),
        DagFormat::Mermaid => print!("{}", dag.to_mermaid()),
    }
    Ok(0)
}

pub fn explain(p: &PipelineArgs, stage: &str) -> CliResult {
    let s = open(p, false)?;
    let targets = s.dag.find(stage);
    if targets.is_empty() {
        return Err(unknown_node(&s, "explain", stage));
    }
    let plan = plan_of(&s, &BTreeSet::new())?;
    for idx in targets {
        let node = s.dag.node(idx);
        let last = s
            .registry
            .last_node_key(&s.id(), &node.id)
            .map_err(CliError::failed)?;
        println!("{}:", node.id);
        match (&plan.states[&idx], last) {
            (NodeState::Cached { key, .. }, _) => {
                println!("  cached (key {key}); nothing changed")
            }
            (NodeState::Run { material, key, .. }, Some((old_key, old))) => {
                if &old_key == key {
                    println!(
                        "  key {key} unchanged since the last run, but its output is no longer in the cache"
                    );
                } else {
                    println!("  key {old_key} -> {key}; changed:");
                    for c in describe_changes(&material.diff(&old)) {
                        println!("    - {c}");
                    }
                }
            }
            (NodeState::Run { key, .. }, None) => {
                println!("  never run under this pipeline (key would be {key})")
            }
            (NodeState::Blocked { reason }, _) => println!("  {reason}"),
        }
    }
    Ok(0)
}

pub fn show(p: &PipelineArgs, json: bool) -> CliResult {
    let s = open(p, false)?;
    let plan = plan_of(&s, &BTreeSet::new())?;
    let mut keys = Vec::new();
    for st in plan.states.values() {
        if let NodeState::Cached { key, record } = st {
            // Its stage process may have died between the commit and its registry write.
            if let Err(e) = register_record(&s.cache, &s.registry, record) {
                tracing::warn!(
                    "run registry: row of `{}` not recovered: {e}",
                    record.meta.node
                );
            }
            keys.push(key.clone());
        }
    }
    let metrics = s
        .registry
        .metrics_for_keys(&keys)
        .map_err(CliError::failed)?;
    // `rows`: the nodes with metrics (what scripts of `show --json` read); `nodes`: every
    // node, with its status and, once computed, its output folder.
    let mut rows = Vec::new();
    let mut nodes = Vec::new();
    for idx in &plan.order {
        let node = s.dag.node(*idx);
        let out = match &plan.states[idx] {
            NodeState::Cached { record, .. } => s.cache.output_dir(record).ok(),
            _ => None,
        };
        let (status, why, _) = node_status(&s, &plan, *idx)?;
        nodes.push(serde_json::json!({"node": node.id, "stage": node.stage,
            "kind": node.kind, "point": node.matrix_point, "status": status, "why": why,
            "key": plan.states[idx].key().map(|k| k.to_string()),
            "output": out.as_deref().map(shown_path)}));
        let Some(key) = plan.states[idx].key() else {
            continue;
        };
        let Some(m) = metrics.get(key.as_str()) else {
            continue;
        };
        rows.push(serde_json::json!({"node": node.id, "stage": node.stage,
            "point": node.matrix_point, "metrics": m, "output": out}));
    }
    if json {
        println!("{}", serde_json::json!({"rows": rows, "nodes": nodes}));
        return Ok(0);
    }
    print_node_outputs(&nodes);
    if nodes.iter().all(|n| n["status"] != "cached") {
        println!(
            "\nnothing computed yet: run the pipeline first (`ugc-pipe run {}`)",
            p.pipeline.display()
        );
    } else if !rows.is_empty() {
        print_metric_tables(&rows, &s);
    }
    Ok(0)
}

/// One line per node in plan order: its output folder, or its status and why when it is
/// not computed.
fn print_node_outputs(nodes: &[serde_json::Value]) {
    let width = nodes
        .iter()
        .map(|n| n["node"].as_str().unwrap_or("").chars().count())
        .max()
        .unwrap_or(0)
        .max("node".len());
    println!("{:<width$}  {:<7}  output", "node", "status");
    for n in nodes {
        let status = n["status"].as_str().unwrap_or("");
        let last = match n["output"].as_str() {
            Some(out) => out.to_string(),
            None => format!("({})", n["why"].as_str().unwrap_or("")),
        };
        println!(
            "{:<width$}  {status:<7}  {last}",
            n["node"].as_str().unwrap_or("")
        );
    }
}

/// `ugc-pipe path P NODE`: the node's output folder, absolute, alone on stdout (for
/// `cd $(ugc-pipe path P report)`). A node not computed yet is exit 1, saying why.
pub fn path(p: &PipelineArgs, name: &str) -> CliResult {
    let s = open(p, false)?;
    let id = super::names::one_node(&s.dag, name, &s.pipeline.path)?;
    let idx = s.dag.find(&id)[0];
    let plan = plan_of(&s, &BTreeSet::new())?;
    let NodeState::Cached { record, .. } = &plan.states[&idx] else {
        let (status, why, _) = node_status(&s, &plan, idx)?;
        return Err(CliError::failed(format!(
            "`{id}` is not computed yet ({status}: {why}); `ugc-pipe run {}` computes it",
            p.pipeline.display()
        )));
    };
    let dir = s
        .cache
        .output_dir(record)
        .map_err(|e| CliError::failed(format!("output of `{id}`: {e}")))?;
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    println!("{}", dir.display());
    Ok(0)
}

/// One markdown table per stage kind (kinds report different metrics), nodes in plan order.
fn print_metric_tables(rows: &[serde_json::Value], s: &Session) {
    let mut kinds: Vec<String> = Vec::new();
    for r in rows {
        let kind = node_kind(s, r["node"].as_str().unwrap_or(""));
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    for kind in kinds {
        let group: Vec<&serde_json::Value> = rows
            .iter()
            .filter(|r| node_kind(s, r["node"].as_str().unwrap_or("")) == kind)
            .collect();
        let mut names = BTreeSet::new();
        for r in &group {
            if let Some(m) = r["metrics"].as_object() {
                names.extend(m.keys().cloned());
            }
        }
        println!("\n{kind}\n");
        let header: Vec<&str> = names.iter().map(String::as_str).collect();
        println!("| node | {} |", header.join(" | "));
        println!("|---|{}", "---|".repeat(names.len()));
        for r in &group {
            let cells: Vec<String> = names
                .iter()
                .map(|n| r["metrics"][n].as_f64().map(fmt_metric).unwrap_or_default())
                .collect();
            println!(
                "| {} | {} |",
                r["node"].as_str().unwrap_or(""),
                cells.join(" | ")
            );
        }
    }
}

fn node_kind(s: &Session, id: &str) -> String {
    s.dag
        .find(id)
        .first()
        .map(|&i| s.dag.node(i).kind.clone())
        .unwrap_or_default()
}

/// Integers as integers, large and small numbers readable.
fn fmt_metric(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 1e4 || v.abs() < 1e-3 {
        format!("{v:.4e}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quickstart's DAG: a whole run's results are its report (and exports); a run of
    /// part of it (`run P TARGET`), its own sinks.
    #[test]
    fn a_runs_results_are_its_reports_and_exports_else_its_sinks() {
        let kinds = crate::stages::schema_registry();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/quickstart.yaml");
        let pipeline = load_pipeline(&path, &kinds, &LoadOptions::default()).unwrap();
        let dag = Dag::build(&pipeline, &kinds).unwrap();
        let order = dag.topo_order();
        let all = result_nodes(&dag, &order, |_| true);
        assert!(!all.is_empty());
        for i in &all {
            assert!(
                matches!(dag.node(*i).kind.as_str(), "report" | "export"),
                "{}",
                dag.node(*i).id
            );
        }
        // The ancestors of the first report: they include no report or export, so the
        // results are their sinks: the report's direct deps among them.
        let report = all[0];
        let mut part = BTreeSet::new();
        part.insert(report);
        let mut part = dag.with_ancestors(&part);
        part.remove(&report);
        let ids: BTreeSet<String> = part.iter().map(|i| dag.node(*i).id.clone()).collect();
        let sinks = result_nodes(&dag, &order, |id| ids.contains(id));
        assert!(!sinks.is_empty());
        for i in &sinks {
            assert!(part.contains(i));
            assert!(
                dag.dependents(*i).iter().all(|d| !part.contains(d)),
                "{} has a dependent in the part",
                dag.node(*i).id
            );
        }
        assert!(sinks.iter().all(|i| dag.dependents(*i).contains(&report)));
    }
}
