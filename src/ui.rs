//! What the user sees while a pipeline runs: one progress bar per running stage (driven
//! through tracing spans by `tracing-indicatif`, log lines kept above the bars) and an
//! overall bar (stages done of all, ETA) on a terminal; plain log lines when not a
//! terminal (a training stage's status line every N steps, the overall line as stages
//! end); JSON lines with `--json`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use indicatif::ProgressStyle;
use tracing::Span;
use tracing_indicatif::IndicatifLayer;
use tracing_indicatif::span_ext::IndicatifSpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use ugc_engine::cache::CacheKey;
use ugc_engine::events::{StageEvent, TrainStatus, short_duration};
use ugc_engine::executor::{NodeOutcome, RunUi};
use ugc_engine::plan::RunReason;

/// Sets up logging. Returns whether progress bars are shown.
/// `RUST_LOG` wins over `-v`; the default shows info and above.
pub fn init_logging(verbose: u8, json: bool) -> bool {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let bars = !json && std::io::stderr().is_terminal();
    if bars {
        let layer = IndicatifLayer::new().with_max_progress_bars(16, None);
        let fmt = tracing_subscriber::fmt::layer()
            .with_target(false)
            .without_time()
            .with_writer(layer.get_stderr_writer());
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .with(layer)
            .try_init();
    } else {
        let fmt = tracing_subscriber::fmt::layer()
            .with_target(false)
            .without_time()
            .with_ansi(false)
            .with_writer(std::io::stderr);
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init();
    }
    bars
}

/// Losses a stage's progress bar shows (the first ones its task logs: the main ones); its
/// status lines show all.
const BAR_LOSSES: usize = 4;

/// Progress bars (when `bars`) and log lines.
pub struct TermUi {
    bars: bool,
    spans: BTreeMap<String, Span>,
    /// Stages of the pipeline (every node, cached ones included), when known.
    total: Option<usize>,
    finished: usize,
    running: BTreeMap<String, Live>,
    overall: Option<Span>,
}

/// What the UI knows of a running stage.
#[derive(Default)]
struct Live {
    /// A phase started and its first step was not seen yet: that step may be a resume's.
    fresh_phase: bool,
    /// The stage's latest status and when it came (its ETA counts down from there).
    status: Option<(TrainStatus, Instant)>,
}

impl TermUi {
    pub fn new(bars: bool) -> Self {
        Self {
            bars,
            spans: BTreeMap::new(),
            total: None,
            finished: 0,
            running: BTreeMap::new(),
            overall: None,
        }
    }

    /// The number of stages of the run, for the overall line.
    pub fn with_stages(mut self, total: usize) -> Self {
        self.total = Some(total);
        self
    }

    /// `stages 3/7 done · 1 running, eta 41s · 3 waiting`: the ETA is the longest of the
    /// running stages' own estimates (they run side by side); stages not started yet have
    /// none, so they are counted, not guessed.
    fn overall_text(&self) -> Option<String> {
        let total = self.total?;
        let mut s = format!("stages {}/{total} done", self.finished);
        if !self.running.is_empty() {
            let now = Instant::now();
            let etas: Vec<f64> = self
                .running
                .values()
                .filter_map(|l| l.status.as_ref())
                .map(|(st, at)| (st.eta_secs - now.duration_since(*at).as_secs_f64()).max(0.0))
                .collect();
            s.push_str(&format!(" · {} running", self.running.len()));
            if etas.len() == self.running.len() {
                let eta = etas.iter().copied().fold(0.0, f64::max);
                s.push_str(&format!(", eta {}", short_duration(eta)));
            }
        }
        let waiting = total.saturating_sub(self.finished + self.running.len());
        if waiting > 0 {
            s.push_str(&format!(" · {waiting} waiting"));
        }
        Some(s)
    }

    fn update_overall(&mut self) {
        if !self.bars {
            return;
        }
        let (Some(total), Some(text)) = (self.total, self.overall_text()) else {
            return;
        };
        let span = self.overall.get_or_insert_with(|| {
            let span = tracing::info_span!("overall");
            span.pb_set_style(
                &ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            span.pb_set_length(total as u64);
            span.pb_start();
            span
        });
        span.pb_set_position(self.finished as u64);
        span.pb_set_message(&text);
    }
}

fn bar_style(node: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{spinner}} {node:<28} {{wide_bar}} {{pos}}/{{len}} {{per_sec}} eta {{eta}} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// A training stage's bar once its status comes: step, losses, and the stage's own rate
/// and ETA (measured over the steps of its process) instead of the bar's.
fn status_style(node: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!("{{spinner}} {node:<28} {{bar:24}} {{msg}}"))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl RunUi for TermUi {
    fn stage_started(&mut self, node: &str, reason: &RunReason, log_file: &Path) {
        tracing::info!("▶ {node} ({reason}); log: {}", log_file.display());
        self.running.insert(node.to_string(), Live::default());
        self.update_overall();
        if self.bars {
            let span = tracing::info_span!("stage", node = %node);
            span.pb_set_style(&bar_style(node));
            span.pb_start();
            self.spans.insert(node.to_string(), span);
        }
    }

    fn stage_event(&mut self, node: &str, ev: &StageEvent) {
        let span = self.spans.get(node);
        match ev {
            StageEvent::Start { phase, total } => {
                if let Some(l) = self.running.get_mut(node) {
                    l.fresh_phase = true;
                    l.status = None;
                }
                if let Some(s) = span {
                    s.pb_set_style(&bar_style(node));
                    s.pb_set_length(*total);
                    s.pb_set_position(0);
                    s.pb_reset_eta();
                    s.pb_set_message(phase);
                }
            }
            StageEvent::Step { step } => {
                let fresh = self
                    .running
                    .get_mut(node)
                    .is_some_and(|l| std::mem::take(&mut l.fresh_phase));
                if let Some(s) = span {
                    s.pb_set_position(*step);
                    if fresh {
                        // A resumed phase starts past 0: its rate counts from here.
                        s.pb_reset_eta();
                    }
                }
            }
            StageEvent::Status(st) => {
                let first = self
                    .running
                    .get_mut(node)
                    .map(|l| l.status.replace((st.clone(), Instant::now())).is_none());
                if let Some(s) = span {
                    if first == Some(true) {
                        s.pb_set_style(&status_style(node));
                    }
                    s.pb_set_length(st.total);
                    s.pb_set_position(st.step);
                    s.pb_set_message(&st.summary(BAR_LOSSES));
                } else if st.line {
                    let overall = self.overall_text().map(|o| format!(" [{o}]"));
                    tracing::info!(
                        "  {node}: {}{}",
                        st.summary(usize::MAX),
                        overall.unwrap_or_default()
                    );
                }
                self.update_overall();
            }
            StageEvent::Message { text } => {
                tracing::info!("  {node}: {text}");
            }
            StageEvent::Waiting { holder } => {
                tracing::info!("  {node}: waiting for the lock held by {holder}");
            }
            StageEvent::Done { .. } => {}
        }
    }

    fn stage_finished(
        &mut self,
        node: &str,
        outcome: &NodeOutcome,
        _key: Option<&CacheKey>,
        secs: f64,
        error: Option<&str>,
    ) {
        self.spans.remove(node);
        self.running.remove(node);
        self.finished += 1;
        match outcome {
            NodeOutcome::Executed => tracing::info!("✔ {node} executed in {secs:.1}s"),
            NodeOutcome::Cached => tracing::info!("✔ {node} cached"),
            NodeOutcome::Failed => {
                tracing::error!("✘ {node} failed: {}", error.unwrap_or("see its log"))
            }
            NodeOutcome::Cancelled => tracing::warn!("■ {node} cancelled after {secs:.1}s"),
            NodeOutcome::Skipped => tracing::warn!("- {node} skipped (an upstream stage failed)"),
        }
        if self.bars {
            self.update_overall();
            if self.total.is_some_and(|t| self.finished >= t) {
                self.overall = None;
            }
        } else if *outcome != NodeOutcome::Cached
            && let Some(text) = self.overall_text()
        {
            tracing::info!("  {text}");
        }
    }

    fn note(&mut self, msg: &str) {
        tracing::warn!("{msg}");
    }

    fn info(&mut self, msg: &str) {
        tracing::info!("{msg}");
    }
}

/// `--json`: one JSON object per line on stdout.
pub struct JsonUi;

fn emit(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

impl RunUi for JsonUi {
    fn stage_started(&mut self, node: &str, reason: &RunReason, log_file: &Path) {
        emit(serde_json::json!({"event": "started", "node": node,
            "why": reason.to_string(), "log": log_file}));
    }
    fn stage_event(&mut self, node: &str, ev: &StageEvent) {
        match ev {
            StageEvent::Message { text } => {
                emit(serde_json::json!({"event": "message", "node": node, "text": text}));
            }
            // The every-N-steps lines, not the bar refreshes between them.
            StageEvent::Status(st) if st.line => {
                let losses: serde_json::Map<String, serde_json::Value> = st
                    .losses
                    .iter()
                    .map(|(n, v)| (n.clone(), serde_json::json!(v)))
                    .collect();
                emit(
                    serde_json::json!({"event": "status", "node": node, "phase": st.phase,
                    "step": st.step, "total": st.total, "losses": losses, "rate": st.rate,
                    "eta_secs": st.eta_secs.is_finite().then_some(st.eta_secs)}),
                );
            }
            _ => {}
        }
    }
    fn stage_finished(
        &mut self,
        node: &str,
        outcome: &NodeOutcome,
        key: Option<&CacheKey>,
        secs: f64,
        error: Option<&str>,
    ) {
        emit(
            serde_json::json!({"event": "finished", "node": node, "outcome": outcome,
            "key": key.map(|k| k.to_string()), "secs": secs, "error": error}),
        );
    }
    fn note(&mut self, msg: &str) {
        emit(serde_json::json!({"event": "note", "text": msg}));
    }
}
