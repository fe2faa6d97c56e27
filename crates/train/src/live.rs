//! What a user watches while a stage trains: status lines (losses, rate, ETA) through the
//! stage's progress and its log, and TensorBoard event files.
//!
//! Nothing here reaches the stage output or its cache key: the status goes to the head and
//! the stage log, and the event files live outside the committed output (see
//! [`tensorboard_dir`]), so the output's bytes and every key downstream are the same with
//! or without them. Writing the event files is best effort: an error (a full disk) is
//! logged once and TensorBoard is switched off for the rest of the stage, training goes on.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ugc_engine::StageContext;
use ugc_engine::events::TrainStatus;

use crate::error::TrainError;
use crate::tensorboard::EventWriter;

/// Status lines a stage writes over its run when [`crate::LoopConfig::status_every`] is 0.
pub(crate) const STATUS_LINES: u64 = 20;
/// Scalar points per tag when [`crate::LoopConfig::tensorboard_every`] is 0: what
/// TensorBoard keeps of a scalar series by default (its reservoir of 1000).
const TENSORBOARD_POINTS: u64 = 1000;
/// Least time between two progress-bar refreshes of the losses.
const REFRESH_SECS: f64 = 1.0;
/// Losses shown on a progress bar (the first ones a task logs: its main ones); the
/// status lines in the log show all.
pub const BAR_LOSSES: usize = 4;

/// `every`, or `total / per_run` rounded up when `every` is 0; at least 1.
pub(crate) fn cadence(every: u64, total: u64, per_run: u64) -> u64 {
    if every > 0 {
        every
    } else {
        total.div_ceil(per_run).max(1)
    }
}

/// Where a stage's event files go: `<cache>/tensorboard/<node>/<key prefix>/` when its
/// scratch folder is the cache's `scratch/<key>/` (so `tensorboard --logdir
/// <cache>/tensorboard` shows every training stage, running or done, one run per node and
/// key), else `<scratch>/run/tensorboard/`. Not in the output: event files hold wall times,
/// so two runs of one key would commit different bytes and give every stage downstream
/// another key; not in scratch alone: it is cleared when the stage commits.
pub fn tensorboard_dir(ctx: &StageContext<'_>) -> PathBuf {
    let scratch = ctx.scratch_dir;
    match (scratch.parent(), scratch.file_name()) {
        (Some(parent), Some(key)) if parent.file_name().is_some_and(|n| n == "scratch") => {
            let root = parent.parent().unwrap_or(Path::new("."));
            let key = key.to_string_lossy();
            root.join("tensorboard")
                .join(safe_name(ctx.node))
                .join(&key[..key.len().min(12)])
        }
        _ => scratch.join("run").join("tensorboard"),
    }
}

/// A node id as a file name: the rule of the per-stage log files (`cache/logs/`).
pub fn safe_name(node: &str) -> String {
    node.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.=,".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The live signals of one run of the loop (rank 0 only).
pub(crate) struct Live<'a> {
    ctx: &'a StageContext<'a>,
    phase: String,
    total: u64,
    /// Step this process started from, and when: the rate counts only steps run here.
    start: u64,
    t0: Instant,
    status_every: u64,
    tb_every: u64,
    last_refresh: Option<Instant>,
    tb: Option<EventWriter>,
    seen: BTreeSet<OsString>,
}

impl<'a> Live<'a> {
    pub(crate) fn new(
        ctx: &'a StageContext<'a>,
        cfg: &crate::LoopConfig,
        start: u64,
        samples: &Path,
    ) -> Self {
        let seen = list_files(samples).into_iter().collect();
        let dir = tensorboard_dir(ctx);
        let tb = (|| {
            let mut w = EventWriter::create(&dir)?;
            if start > 0 {
                // What the interrupted run logged after its checkpoint is logged again.
                w.restart(start + 1)?;
            }
            w.hparams(ctx.params, ctx.node)?;
            w.flush()?;
            Ok::<_, TrainError>(w)
        })();
        let tb = match tb {
            Ok(w) => {
                tracing::info!("tensorboard: {}", w.path().display());
                Some(w)
            }
            Err(e) => {
                tracing::warn!("tensorboard: off for this stage: {e}");
                None
            }
        };
        Live {
            ctx,
            phase: cfg.phase.clone(),
            total: cfg.steps,
            start,
            t0: Instant::now(),
            status_every: cadence(cfg.status_every, cfg.steps, STATUS_LINES),
            tb_every: cadence(cfg.tensorboard_every, cfg.steps, TENSORBOARD_POINTS),
            last_refresh: None,
            tb,
            seen,
        }
    }

    /// Whether step `done` gets a status line (its losses must be read first).
    pub(crate) fn line_due(&self, done: u64) -> bool {
        done.is_multiple_of(self.status_every) || done == self.total
    }

    /// Rows just read to the host: their scalars every `tensorboard_every` steps (and the
    /// last step), then the status of the newest (a line when due, else a bar refresh at
    /// most every second).
    pub(crate) fn rows(&mut self, rows: &[(u64, Vec<(String, f64)>)]) {
        let every = self.tb_every;
        let total = self.total;
        let phase = self.phase.clone();
        self.tensorboard(|w| {
            for (step, vals) in rows {
                if step % every == 0 || *step == total {
                    w.scalars(*step, &phase, vals)?;
                }
            }
            w.flush()
        });
        let Some((done, last)) = rows.last() else {
            return;
        };
        let line = self.line_due(*done);
        let now = Instant::now();
        let refresh = self
            .last_refresh
            .is_none_or(|t| now.duration_since(t).as_secs_f64() >= REFRESH_SECS);
        if !line && !refresh {
            return;
        }
        self.last_refresh = Some(now);
        let secs = now.duration_since(self.t0).as_secs_f64();
        let (rate, eta_secs) = rate_and_eta(self.start, *done, total, secs);
        let status = TrainStatus {
            phase: self.phase.clone(),
            step: *done,
            total,
            losses: last.clone(),
            rate,
            eta_secs,
            line,
        };
        if line {
            tracing::info!("{}: {}", self.ctx.node, status.summary(usize::MAX));
        }
        self.ctx.progress.message(&status.to_message());
    }

    /// The sample images `task.sample` just wrote into `samples` (files not seen before).
    pub(crate) fn samples(&mut self, step: u64, samples: &Path) {
        let new: Vec<OsString> = list_files(samples)
            .into_iter()
            .filter(|f| !self.seen.contains(f))
            .collect();
        self.tensorboard(|w| {
            for f in &new {
                let path = samples.join(f);
                let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
                w.png(step, "samples", &bytes)?;
            }
            w.flush()
        });
        self.seen.extend(new);
    }

    fn tensorboard(&mut self, f: impl FnOnce(&mut EventWriter) -> Result<(), TrainError>) {
        if let Some(w) = &mut self.tb
            && let Err(e) = f(w)
        {
            tracing::warn!("tensorboard: off for the rest of this stage: {e}");
            self.tb = None;
        }
    }
}

/// Steps per second over the steps run in this process (`start` to `done` in `secs`), and
/// the seconds left at that rate. Counting from step 0 instead would credit a resumed
/// process with the steps of the one before it and report its start-up as slowness.
fn rate_and_eta(start: u64, done: u64, total: u64, secs: f64) -> (f64, f64) {
    let ran = done.saturating_sub(start);
    let rate = if secs > 0.0 { ran as f64 / secs } else { 0.0 };
    let eta = if rate > 0.0 {
        total.saturating_sub(done) as f64 / rate
    } else {
        f64::INFINITY
    };
    (rate, eta)
}

/// The PNG files of `dir`, sorted (none when it does not exist).
fn list_files(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
        .map(|e| e.file_name())
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cadences_default_to_a_share_of_the_run() {
        assert_eq!(cadence(0, 120, 20), 6);
        assert_eq!(cadence(0, 121, 20), 7);
        assert_eq!(cadence(0, 5, 20), 1);
        assert_eq!(cadence(7, 120, 20), 7);
        assert_eq!(
            safe_name("distill[label_ratio=0.25]"),
            "distill_label_ratio=0.25_"
        );
    }

    #[test]
    fn a_resumed_process_rates_only_its_own_steps() {
        // Resumed at 54 of 120, at step 72 after 1.92 s: 18 steps, 9.375/s, 48 left.
        let (rate, eta) = rate_and_eta(54, 72, 120, 1.92);
        assert_eq!(rate, 9.375);
        assert_eq!(eta, 48.0 / 9.375);
        // Before a step has taken measurable time the ETA is unknown, not zero.
        assert_eq!(rate_and_eta(54, 54, 120, 0.0), (0.0, f64::INFINITY));
        assert_eq!(rate_and_eta(0, 120, 120, 10.0), (12.0, 0.0));
    }
}
