//! The step loop every training stage kind shares.
//!
//! A *step* is one optimiser update of each network (one batch from each data stream).
//! The loop: resume from the scratch checkpoint if any; per step, poll the cancel token
//! (on cancel: checkpoint, then [`TrainError::Cancelled`]), reseed libtorch from
//! `(seed, step)`, run the task's step, append a CSV log row (losses are read from the
//! device in batches of steps, see [`LogValue`]), checkpoint every
//! `checkpoint_every` steps, write samples every `sample_every` steps. The log and samples
//! live in `scratch/run/` while training (so a resumed run keeps the rows and images from
//! before the crash) and are copied into the stage output at the end.
//!
//! Resume is invisible in the outputs: a resumed run commits the same bytes as an
//! uninterrupted one. The log keeps every value exactly (shortest round-trip decimal), so
//! the averages computed from it after a resume equal those of an uninterrupted run; how
//! far a run had come when it resumed goes to the stage log only.

use std::path::{Path, PathBuf};

use tch::Tensor;
use ugc_engine::StageContext;

use crate::checkpoint;
use crate::dist::Dist;
use crate::error::TrainError;
use crate::live::{Live, STATUS_LINES, cadence};
use crate::log::CsvLog;
use crate::seed::step_seed;

/// What the loop needs from a concrete training task.
pub trait TrainTask {
    /// The task's own error; the loop's errors convert into it, so a stage sees one type.
    type Error: From<TrainError>;

    /// Every tensor whose value must survive a crash (weights, buffers, optimiser state),
    /// by unique name. Live tensors: a restore copies into them in place.
    fn state(&self) -> Vec<(String, Tensor)>;

    /// Moves data streams (and anything else positional) to just after `step` completed
    /// steps; called once before the first step (with 0 on a fresh start).
    fn seek(&mut self, step: u64) -> Result<(), Self::Error>;

    /// Runs step `step` (0-based); returns named scalar losses for the log, left on the
    /// device where they were computed ([`LogValue::of`]).
    fn step(&mut self, step: u64) -> Result<StepLog, Self::Error>;

    /// Writes sample images for after `step` completed steps into `dir`. A task that draws
    /// none keeps this default, and its output has no `samples/`.
    fn sample(&mut self, step: u64, dir: &Path) -> Result<(), Self::Error> {
        let _ = (step, dir);
        Ok(())
    }
}

/// One logged value of a step.
pub enum LogValue {
    /// Known on the host (a learning rate, a count).
    Host(f64),
    /// A detached scalar still on the device. The loop reads a batch of steps' values in one
    /// transfer, so a GPU step never waits for its own losses to reach the host. With
    /// ranks, it is this rank's share of the global value: the loop logs the sum over ranks
    /// divided by the world size, so a per-row mean loss is logged as it is scaled for
    /// backward (`loss * n_r * W / N`, [`crate::Dist::scale`]) and reads as the global mean.
    Device(Tensor),
}

impl LogValue {
    /// A loss for the log: detached, so the step's graph is freed when the step ends.
    pub fn of(t: &Tensor) -> Self {
        LogValue::Device(t.detach())
    }
}

impl From<f64> for LogValue {
    fn from(v: f64) -> Self {
        LogValue::Host(v)
    }
}

/// Named values a step logs, in column order.
pub type StepLog = Vec<(String, LogValue)>;

/// Steps whose logged values are read to the host together (one device synchronisation);
/// also flushed before every sample, checkpoint and cancel, and at the end.
const LOG_READ_EVERY: usize = 16;

/// Loop settings (from the stage parameters).
#[derive(Debug, Clone)]
pub struct LoopConfig {
    pub steps: u64,
    /// Checkpoint every this many steps (0 = only on cancel).
    pub checkpoint_every: u64,
    /// Samples every this many steps (0 = only at the end).
    pub sample_every: u64,
    pub seed: u64,
    /// Progress phase name, e.g. `train`.
    pub phase: String,
    /// Logged steps averaged into [`LoopOutcome::tail_mean`] (the last ones).
    pub tail: usize,
    /// The stage's ranks ([`Dist::none`]: one process).
    pub dist: Dist,
    /// A status line (losses, rate, ETA) in the stage log and on a console without progress
    /// bars every this many steps; 0: about 20 over the run.
    pub status_every: u64,
    /// Scalars to TensorBoard every this many steps; 0: about 1000 points over the run.
    pub tensorboard_every: u64,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            steps: 1,
            checkpoint_every: 0,
            sample_every: 0,
            seed: 0,
            phase: "train".into(),
            tail: 10,
            dist: Dist::none(),
            status_every: 0,
            tensorboard_every: 0,
        }
    }
}

/// What the loop did.
#[derive(Debug, Clone)]
pub struct LoopOutcome {
    /// Steps already done by an earlier, interrupted run (0 when starting fresh). For the
    /// stage log and tests only: written into an output it would make a resumed run's
    /// bytes (and every key downstream) differ from an uninterrupted run's.
    pub resumed_from: u64,
    /// Losses of the last step.
    pub last: Vec<(String, f64)>,
    /// Per-loss mean over the last `min(steps, tail)` logged steps (more stable than
    /// `last`), summed in step order, so a resumed run's equals an uninterrupted one's.
    pub tail_mean: Vec<(String, f64)>,
}

impl LoopOutcome {
    /// The tail mean of the column `name`, if the task logged one.
    pub fn tail_of(&self, name: &str) -> Option<f64> {
        self.tail_mean
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// Scratch sub-directories used by the loop.
fn ckpt_dir(scratch: &Path) -> PathBuf {
    scratch.join("ckpt")
}
fn run_dir(scratch: &Path) -> PathBuf {
    scratch.join("run")
}

/// Runs `task` for `cfg.steps` steps under `ctx` and copies `log.csv` and (when the task
/// drew any) `samples/` into `ctx.out_dir`. Rank 0 also reports the losses, rate and ETA
/// and writes TensorBoard event files (`crate::live`), outside the output.
///
/// With ranks (`cfg.dist`): rank 0 alone reads and writes the checkpoint, the log and the
/// samples; at the start it broadcasts the step to continue from and every `state()`
/// tensor, so every rank starts from the same state whatever the number of ranks that
/// wrote the checkpoint. Each step the ranks agree whether any was cancelled, so all stop
/// at the same step (rank 0 checkpoints it). A rank that dies makes the others'
/// next collective fail within the group's timeout. Other ranks return the outcome with
/// an empty `tail_mean` (they keep no log).
pub fn run_loop<T: TrainTask + ?Sized>(
    ctx: &StageContext<'_>,
    cfg: &LoopConfig,
    task: &mut T,
) -> Result<LoopOutcome, T::Error> {
    if cfg.steps == 0 {
        return Err(TrainError::param("steps", 0, "must be at least 1").into());
    }
    let dist = &cfg.dist;
    let leader = dist.is_leader();
    let ckpt = ckpt_dir(ctx.scratch_dir);
    let run = run_dir(ctx.scratch_dir);
    let samples = run.join("samples");
    let start = if leader {
        std::fs::create_dir_all(&samples).map_err(|e| TrainError::io(&samples, e))?;
        let resumed = checkpoint::resume_or_start(&ckpt, cfg.seed, &task.state());
        // No checkpoint of its own: a continuation starts from its dep's final state. (A
        // continuation's own checkpoints are all past that step, so this is its first try.)
        let resumed = resumed.and_then(|start| {
            if start > 0 {
                return Ok(start);
            }
            let from = continue_from(ctx, &run, &task.state())?;
            if let Some((dep, step)) = &from {
                let text = format!(
                    "continuing `{dep}`: from its step {step}, training steps {step}..{} only",
                    cfg.steps
                );
                // In the stage log (the worker's tracing) and beside the progress bar.
                tracing::info!("{}: {text}", ctx.node);
                ctx.progress.message(&text);
            }
            Ok(from.map_or(0, |(_, step)| step))
        });
        let resumed = resumed.and_then(|start| {
            if start > cfg.steps {
                Err(TrainError::Checkpoint {
                    path: ckpt.clone(),
                    reason: format!("is at step {start}, past `steps` = {}", cfg.steps),
                })
            } else {
                Ok(start)
            }
        });
        // The others wait for the start step: tell them (-1) when there is none.
        let code = resumed.as_ref().map_or(-1, |s| *s as i64);
        share_start(dist, code)?;
        resumed?
    } else {
        let code = share_start(dist, 0)?;
        u64::try_from(code).map_err(|_| TrainError::Checkpoint {
            path: ckpt.clone(),
            reason: "rank 0 could not resume from it (see rank 0's error)".into(),
        })?
    };
    if dist.is_distributed() {
        let state: Vec<Tensor> = task.state().into_iter().map(|(_, t)| t).collect();
        dist.broadcast(&state, 0)?;
    }
    if start > 0 && leader && !continuing(ctx) {
        ctx.progress
            .message(&format!("resuming from step {start} of {}", cfg.steps));
    }
    let log_path = run.join("log.csv");
    let mut log = if leader {
        Some(CsvLog::open(&log_path, start)?)
    } else {
        None
    };
    task.seek(start)?;
    ctx.progress.start(&cfg.phase, cfg.steps);
    ctx.progress.set(start);
    let mut live = leader.then(|| Live::new(ctx, cfg, start, &samples));
    // Every rank reads the losses at the same steps (with ranks, a read is a collective).
    let status_every = cadence(cfg.status_every, cfg.steps, STATUS_LINES);
    let mut last = Vec::new();
    let mut pending: Vec<(u64, StepLog)> = Vec::new();
    for step in start..cfg.steps {
        // Any rank's cancel stops every rank at this step (one tiny all-reduce).
        if dist.any(ctx.cancel.is_cancelled())? {
            let rows = read_pending(dist, &mut pending, log.as_mut(), &mut last)?;
            if let Some(l) = &mut live {
                l.rows(&rows);
            }
            if let Some(log) = &mut log {
                log.sync()?;
                checkpoint::save(&ckpt, step, cfg.seed, &task.state())?;
            }
            return Err(TrainError::Cancelled.into());
        }
        tch::manual_seed(step_seed(cfg.seed, step, 0) as i64);
        pending.push((step, task.step(step)?));
        let done = step + 1;
        ctx.progress.set(done);
        let sample_now = cfg.sample_every > 0 && done % cfg.sample_every == 0 && done < cfg.steps;
        let ckpt_now =
            cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0 && done < cfg.steps;
        let line_now = done % status_every == 0;
        if pending.len() >= LOG_READ_EVERY || sample_now || ckpt_now || line_now {
            // Never sample or checkpoint a state whose losses went non-finite.
            let rows = read_pending(dist, &mut pending, log.as_mut(), &mut last)?;
            if let Some(l) = &mut live {
                l.rows(&rows);
            }
        }
        if sample_now && leader {
            task.sample(done, &samples)?;
            if let Some(l) = &mut live {
                l.samples(done, &samples);
            }
        }
        if ckpt_now && let Some(log) = &mut log {
            log.sync()?;
            checkpoint::save(&ckpt, done, cfg.seed, &task.state())?;
        }
    }
    let rows = read_pending(dist, &mut pending, log.as_mut(), &mut last)?;
    if let Some(l) = &mut live {
        l.rows(&rows);
    }
    let Some(mut log) = log else {
        return Ok(LoopOutcome {
            resumed_from: start,
            last,
            tail_mean: Vec::new(),
        });
    };
    task.sample(cfg.steps, &samples)?;
    if let Some(l) = &mut live {
        l.samples(cfg.steps, &samples);
    }
    log.flush()?;
    if ctx
        .params
        .get(KEEP_STATE)
        .and_then(serde_json::Value::as_bool)
        == Some(true)
    {
        // What a continuation (`init_from`) starts from: the checkpoint format, committed.
        checkpoint::save(
            &ctx.out_dir.join(STATE_DIR),
            cfg.steps,
            cfg.seed,
            &task.state(),
        )?;
    }
    let tail_mean = log.tail_mean(cfg.tail);
    // Publish the log and samples.
    let out_log = ctx.out_dir.join("log.csv");
    std::fs::copy(&log_path, &out_log).map_err(|e| TrainError::io(&out_log, e))?;
    copy_files(&samples, &ctx.out_dir.join("samples"))?;
    Ok(LoopOutcome {
        resumed_from: start,
        last,
        tail_mean,
    })
}

/// The parameter of a training kind naming the dep whose final state it starts from (its
/// schema's `continues.from`, checked to be this name); absent or null: from step 0.
/// `KEEP_STATE` makes a stage commit its final state in [`STATE_DIR`].
pub use ugc_engine::stage::{INIT_FROM, KEEP_STATE};
/// The output folder of the final state: a checkpoint ([`checkpoint::save`]) of every
/// `state()` tensor (weights, buffers, optimiser moments and step counts) at the last step.
pub const STATE_DIR: &str = "state";

fn continuing(ctx: &StageContext<'_>) -> bool {
    ctx.params
        .get(INIT_FROM)
        .and_then(serde_json::Value::as_str)
        .is_some()
}

/// With `init_from: DEP`: restores DEP's committed final state into `live` and copies its
/// `log.csv` into `run` (its rows are this run's first ones, so the log and the averages
/// read as one run's). Returns the dep and the step to continue from; `None` without
/// `init_from`. The plan refused a dep of another kind, networks or step count; a state
/// that still does not fit is refused here, naming the file.
fn continue_from(
    ctx: &StageContext<'_>,
    run: &Path,
    live: &[(String, Tensor)],
) -> Result<Option<(String, u64)>, TrainError> {
    let Some(dep) = ctx
        .params
        .get(INIT_FROM)
        .and_then(serde_json::Value::as_str)
    else {
        return Ok(None);
    };
    let input = ctx
        .inputs
        .iter()
        .find(|i| i.name == dep)
        .ok_or_else(|| TrainError::param(INIT_FROM, dep, "is not among this stage's deps"))?;
    let dir = input.dir.join(STATE_DIR);
    let loaded = checkpoint::load(&dir)?.ok_or_else(|| TrainError::Checkpoint {
        path: dir.clone(),
        reason: format!("`{dep}` committed no final state (it needs `{KEEP_STATE}: true`)"),
    })?;
    checkpoint::restore(&loaded, live).map_err(|e| match e {
        TrainError::Checkpoint { path, reason } => TrainError::Checkpoint {
            path,
            reason: format!(
                "the final state of `{dep}` does not fit this stage's networks: {}",
                reason
                    .split_once('\n')
                    .map_or(reason.as_str(), |(_, list)| list)
            ),
        },
        other => other,
    })?;
    let src = input.dir.join("log.csv");
    let dst = run.join("log.csv");
    std::fs::copy(&src, &dst).map_err(|e| TrainError::io(&src, e))?;
    Ok(Some((dep.to_string(), loaded.record.step)))
}

/// Rank 0's start step (or -1: it could not resume) on every rank.
fn share_start(dist: &Dist, code: i64) -> Result<i64, TrainError> {
    if !dist.is_distributed() {
        return Ok(code);
    }
    let t = Tensor::from(code);
    dist.broadcast(std::slice::from_ref(&t), 0)?;
    Ok(t.int64_value(&[]))
}

/// Reads the pending steps' device values to the host in one transfer, refuses a
/// non-finite loss (naming its step), and appends the rows to the log (rank 0's `log`).
/// Logged values by completed step: (step, [(name, value)]).
type StepRows = Vec<(u64, Vec<(String, f64)>)>;

/// Returns the rows read, by completed step.
/// With ranks, the device values are summed over ranks first (one all-reduce) and divided
/// by the world size: each rank logs its shard's share ([`LogValue`]), so every rank reads
/// the global-batch value.
fn read_pending(
    dist: &Dist,
    pending: &mut Vec<(u64, StepLog)>,
    mut log: Option<&mut CsvLog>,
    last: &mut Vec<(String, f64)>,
) -> Result<StepRows, TrainError> {
    let on_device: Vec<&Tensor> = pending
        .iter()
        .flat_map(|(_, row)| row.iter())
        .filter_map(|(_, v)| match v {
            LogValue::Device(t) => Some(t),
            LogValue::Host(_) => None,
        })
        .collect();
    let mut read = Vec::new().into_iter();
    if let Some(first) = on_device.first() {
        let dev = first.device();
        let flat: Vec<Tensor> = on_device
            .iter()
            .map(|t| t.to_device(dev).to_kind(tch::Kind::Double).reshape([1]))
            .collect();
        let mut all = Tensor::cat(&flat, 0);
        if dist.is_distributed() {
            dist.all_reduce_sum(std::slice::from_ref(&all))?;
            all /= dist.world() as f64;
        }
        let all = all.to_device(tch::Device::Cpu);
        read = Vec::<f64>::try_from(&all)
            .map_err(|e| TrainError::Numeric(format!("reading logged losses: {e}")))?
            .into_iter();
    }
    let mut rows = Vec::with_capacity(pending.len());
    for (step, row) in pending.drain(..) {
        let values: Vec<(String, f64)> = row
            .into_iter()
            .map(|(n, v)| match v {
                LogValue::Host(x) => (n, x),
                LogValue::Device(_) => (n, read.next().unwrap_or(f64::NAN)),
            })
            .collect();
        if let Some((n, v)) = values.iter().find(|(_, v)| !v.is_finite()) {
            return Err(TrainError::Numeric(format!(
                "loss `{n}` is {v} at step {step}; lower `lr` or check the data"
            )));
        }
        if let Some(log) = log.as_deref_mut() {
            log.row(step + 1, &values)?;
        }
        rows.push((step + 1, values.clone()));
        *last = values;
    }
    Ok(rows)
}

/// Copies the files of `from` into `to`, creating `to` only when there is one: a task
/// that draws no samples publishes no empty folder.
fn copy_files(from: &Path, to: &Path) -> Result<(), TrainError> {
    let rd = std::fs::read_dir(from).map_err(|e| TrainError::io(from, e))?;
    let mut entries: Vec<_> = rd.flatten().filter(|e| e.path().is_file()).collect();
    if entries.is_empty() {
        return Ok(());
    }
    entries.sort_by_key(|e| e.file_name());
    std::fs::create_dir_all(to).map_err(|e| TrainError::io(to, e))?;
    for e in entries {
        let dst = to.join(e.file_name());
        std::fs::copy(e.path(), &dst).map_err(|err| TrainError::io(&dst, err))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;
    use ugc_engine::{CancelToken, DeviceKind, NullProgress};

    use super::*;

    /// Logs `step * scale` (on the device) and `step * 10` (host); `weight` goes NaN at
    /// `nan_at`.
    struct Counter {
        weight: Tensor,
        nan_at: Option<u64>,
        scale: f64,
    }

    fn counter(scale: f64) -> Counter {
        Counter {
            weight: Tensor::zeros([], (tch::Kind::Double, tch::Device::Cpu)),
            nan_at: None,
            scale,
        }
    }

    impl TrainTask for Counter {
        type Error = TrainError;
        fn state(&self) -> Vec<(String, Tensor)> {
            vec![("w".into(), self.weight.shallow_clone())]
        }
        fn seek(&mut self, _: u64) -> Result<(), TrainError> {
            Ok(())
        }
        fn step(&mut self, step: u64) -> Result<StepLog, TrainError> {
            let v = if self.nan_at == Some(step) {
                f64::NAN
            } else {
                step as f64 * self.scale
            };
            let _ = self.weight.fill_(v);
            Ok(vec![
                ("loss".into(), LogValue::of(&(&self.weight * 1.0))),
                ("host".into(), (step as f64 * 10.0).into()),
            ])
        }
    }

    fn run(task: &mut Counter, steps: u64, dir: &Path) -> Result<LoopOutcome, TrainError> {
        run_until(task, steps, dir, &NullProgress, &CancelToken::new())
    }

    /// Cancels its token once the loop reports step `at` (a simulated Ctrl-C).
    struct StopAt(u64, CancelToken);

    impl ugc_engine::Progress for StopAt {
        fn start(&self, _: &str, _: u64) {}
        fn set(&self, step: u64) {
            if step >= self.0 {
                self.1.cancel();
            }
        }
        fn message(&self, _: &str) {}
    }

    fn run_until(
        task: &mut Counter,
        steps: u64,
        dir: &Path,
        progress: &dyn ugc_engine::Progress,
        cancel: &CancelToken,
    ) -> Result<LoopOutcome, TrainError> {
        run_with(task, steps, dir, progress, cancel, &json!({}), &[])
    }

    fn run_with(
        task: &mut Counter,
        steps: u64,
        dir: &Path,
        progress: &dyn ugc_engine::Progress,
        cancel: &CancelToken,
        params: &serde_json::Value,
        inputs: &[ugc_engine::StageInput],
    ) -> Result<LoopOutcome, TrainError> {
        let (out, scratch) = (dir.join("out"), dir.join("scratch"));
        std::fs::create_dir_all(&out).unwrap();
        let env = BTreeMap::new();
        let ctx = StageContext {
            node: "n",
            kind: "train",
            params,
            inputs,
            out_dir: &out,
            scratch_dir: &scratch,
            device: DeviceKind::Cpu,
            progress,
            cancel,
            env: &env,
            rank: None,
        };
        let cfg = LoopConfig {
            steps,
            tail: 4,
            ..LoopConfig::default()
        };
        run_loop(&ctx, &cfg, task)
    }

    #[test]
    fn device_losses_are_read_in_batches_into_every_row_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut task = counter(1.0);
        // 37 steps: two full batches of LOG_READ_EVERY and a partial one at the end.
        let done = run(&mut task, 37, dir.path()).unwrap();
        let csv = std::fs::read_to_string(dir.path().join("out/log.csv")).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "step,loss,host");
        assert_eq!(lines.len(), 38);
        for (i, l) in lines[1..].iter().enumerate() {
            let f: Vec<f64> = l.split(',').map(|v| v.parse().unwrap()).collect();
            assert_eq!(f, vec![i as f64 + 1.0, i as f64, i as f64 * 10.0], "{l}");
        }
        assert_eq!(
            done.last,
            vec![("loss".into(), 36.0), ("host".into(), 360.0)]
        );
        // The tail is the configured last 4 rows: (33 + 34 + 35 + 36) / 4.
        assert_eq!(done.tail_of("loss"), Some(34.5));
        assert_eq!(done.tail_of("absent"), None);
        // A task without samples publishes no empty `samples/`.
        assert!(!dir.path().join("out/samples").exists());
    }

    #[test]
    fn a_non_finite_loss_names_its_step_even_when_read_later() {
        let dir = tempfile::tempdir().unwrap();
        let mut task = Counter {
            nan_at: Some(20),
            ..counter(1.0)
        };
        let e = run(&mut task, 40, dir.path()).unwrap_err().to_string();
        assert!(e.contains("loss `loss` is NaN at step 20"), "{e}");
    }

    #[test]
    fn a_resumed_run_logs_and_averages_exactly_what_an_uninterrupted_run_does() {
        // Values with more digits than a rounded log would keep.
        let scale = 1.0 / 3.0 + 1e-12;
        let whole = tempfile::tempdir().unwrap();
        let full = run(&mut counter(scale), 30, whole.path()).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let token = CancelToken::new();
        let e = run_until(
            &mut counter(scale),
            30,
            dir.path(),
            &StopAt(23, token.clone()),
            &token,
        )
        .unwrap_err();
        assert!(matches!(e, TrainError::Cancelled), "{e}");
        let resumed = run(&mut counter(scale), 30, dir.path()).unwrap();
        assert_eq!(resumed.resumed_from, 23);
        // The tail mean covers rows from before and after the resume, bit for bit.
        let bits = |o: &LoopOutcome| {
            o.tail_mean
                .iter()
                .map(|(n, v)| (n.clone(), v.to_bits()))
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&full), bits(&resumed));
        let log = |d: &Path| std::fs::read(d.join("out/log.csv")).unwrap();
        assert!(log(whole.path()) == log(dir.path()), "log.csv differs");
        // And every logged value reads back exactly.
        let text = String::from_utf8(log(dir.path())).unwrap();
        let row: Vec<f64> = text
            .lines()
            .nth(7)
            .unwrap()
            .split(',')
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(row[1].to_bits(), (6.0 * scale).to_bits());
    }

    #[test]
    fn a_log_missing_rows_before_the_checkpoint_is_refused_not_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let token = CancelToken::new();
        let stop = StopAt(9, token.clone());
        run_until(&mut counter(1.0), 20, dir.path(), &stop, &token).unwrap_err();
        let path = dir.path().join("scratch/run/log.csv");
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text.lines().take(6).collect();
        std::fs::write(&path, kept.join("\n")).unwrap();
        let e = run(&mut counter(1.0), 20, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("log.csv") && e.contains("5 complete rows") && e.contains("step 9"),
            "{e}"
        );
    }

    /// Records the messages a stage would put in its log.
    #[derive(Default)]
    struct Messages(std::sync::Mutex<Vec<String>>);

    impl ugc_engine::Progress for Messages {
        fn start(&self, _: &str, _: u64) {}
        fn set(&self, _: u64) {}
        fn message(&self, m: &str) {
            self.0.lock().unwrap().push(m.to_string());
        }
    }

    #[test]
    fn a_continuation_trains_only_the_steps_after_its_deps_and_logs_like_one_run() {
        let scale = 1.0 / 7.0;
        let whole = tempfile::tempdir().unwrap();
        let full = run(&mut counter(scale), 8, whole.path()).unwrap();

        let first = tempfile::tempdir().unwrap();
        let keep = json!({"keep_state": true});
        let token = CancelToken::new();
        run_with(
            &mut counter(scale),
            4,
            first.path(),
            &NullProgress,
            &token,
            &keep,
            &[],
        )
        .unwrap();
        assert!(first.path().join("out/state/latest.json").is_file());
        // Without `keep_state` nothing more is committed: the outputs stay as they were.
        assert!(!whole.path().join("out/state").exists());

        let input = ugc_engine::StageInput {
            name: "short".into(),
            node: "short".into(),
            point: BTreeMap::new(),
            kind: "train".into(),
            dir: first.path().join("out"),
        };
        let dir = tempfile::tempdir().unwrap();
        let said = Messages::default();
        // Steps seen by the task: 4..8 only (the counter logs `step * scale`).
        let mut task = counter(scale);
        let cont = json!({"init_from": "short"});
        let done = run_with(
            &mut task,
            8,
            dir.path(),
            &said,
            &token,
            &cont,
            std::slice::from_ref(&input),
        )
        .unwrap();
        assert_eq!(done.resumed_from, 4);
        let said = said.0.lock().unwrap();
        assert_eq!(
            said[0],
            "continuing `short`: from its step 4, training steps 4..8 only"
        );
        // Its status lines (one per step at 8 steps) cover steps 5..=8 only.
        let steps: Vec<u64> = said[1..]
            .iter()
            .map(|m| {
                let json = m.split_once(' ').unwrap().1;
                serde_json::from_str::<serde_json::Value>(json).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(steps, [5, 6, 7, 8]);
        let log = |d: &Path| std::fs::read(d.join("out/log.csv")).unwrap();
        assert!(log(whole.path()) == log(dir.path()), "log.csv differs");
        let bits = |o: &LoopOutcome| {
            o.tail_mean
                .iter()
                .map(|(_, v)| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&full), bits(&done));

        // A dep without its state is refused naming the folder.
        let bare = ugc_engine::StageInput {
            dir: whole.path().join("out"),
            ..input
        };
        let other = tempfile::tempdir().unwrap();
        let e = run_with(
            &mut counter(scale),
            8,
            other.path(),
            &NullProgress,
            &token,
            &cont,
            &[bare],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("out/state") && e.contains("`short` committed no final state"),
            "{e}"
        );
    }
}
