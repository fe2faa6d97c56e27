//! What the user sees while a pipeline runs: one progress bar per running stage (driven
//! through tracing spans by `tracing-indicatif`, log lines kept above the bars) on a
//! terminal; plain log lines when not a terminal; JSON lines with `--json`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;

use indicatif::ProgressStyle;
use tracing::Span;
use tracing_indicatif::IndicatifLayer;
use tracing_indicatif::span_ext::IndicatifSpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use ugc_engine::cache::CacheKey;
use ugc_engine::events::StageEvent;
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

/// Progress bars (when `bars`) and log lines.
pub struct TermUi {
    bars: bool,
    spans: BTreeMap<String, Span>,
}

impl TermUi {
    pub fn new(bars: bool) -> Self {
        Self {
            bars,
            spans: BTreeMap::new(),
        }
    }
}

fn bar_style(node: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{spinner}} {node:<28} {{wide_bar}} {{pos}}/{{len}} {{per_sec}} eta {{eta}} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl RunUi for TermUi {
    fn stage_started(&mut self, node: &str, reason: &RunReason, log_file: &Path) {
        tracing::info!("▶ {node} ({reason}); log: {}", log_file.display());
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
                if let Some(s) = span {
                    s.pb_set_length(*total);
                    s.pb_set_position(0);
                    s.pb_reset_eta();
                    s.pb_set_message(phase);
                }
            }
            StageEvent::Step { step } => {
                if let Some(s) = span {
                    s.pb_set_position(*step);
                }
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
        match outcome {
            NodeOutcome::Executed => tracing::info!("✔ {node} executed in {secs:.1}s"),
            NodeOutcome::Cached => tracing::info!("✔ {node} cached"),
            NodeOutcome::Failed => {
                tracing::error!("✘ {node} failed: {}", error.unwrap_or("see its log"))
            }
            NodeOutcome::Cancelled => tracing::warn!("■ {node} cancelled after {secs:.1}s"),
            NodeOutcome::Skipped => tracing::warn!("- {node} skipped (an upstream stage failed)"),
        }
    }

    fn note(&mut self, msg: &str) {
        tracing::warn!("{msg}");
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
        if let StageEvent::Message { text } = ev {
            emit(serde_json::json!({"event": "message", "node": node, "text": text}));
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
