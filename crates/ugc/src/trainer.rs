//! The step loop every training stage of the method shares.
//!
//! A *step* is one optimiser update of each network (one batch from each data stream).
//! The loop: resume from the scratch checkpoint if any; per step, poll the cancel token
//! (on cancel: checkpoint, then [`MethodError::Cancelled`]), reseed libtorch from
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

use std::io::Write;
use std::path::{Path, PathBuf};

use tch::Tensor;
use ugc_data::{Batch, Loader};
use ugc_engine::StageContext;

use crate::checkpoint;
use crate::device::step_seed;
use crate::error::MethodError;

/// What the loop needs from a concrete training task.
pub trait TrainTask {
    /// Every tensor whose value must survive a crash (weights, buffers, optimiser state),
    /// by unique name. Live tensors: a restore copies into them in place.
    fn state(&self) -> Vec<(String, Tensor)>;

    /// Moves data streams (and anything else positional) to just after `step` completed
    /// steps; called once before the first step (with 0 on a fresh start).
    fn seek(&mut self, step: u64) -> Result<(), MethodError>;

    /// Runs step `step` (0-based); returns named scalar losses for the log, left on the
    /// device where they were computed ([`LogValue::of`]).
    fn step(&mut self, step: u64) -> Result<StepLog, MethodError>;

    /// Writes sample images for after `step` completed steps into `dir`.
    fn sample(&mut self, step: u64, dir: &Path) -> Result<(), MethodError>;
}

/// One logged value of a step.
pub enum LogValue {
    /// Known on the host (a learning rate, a count).
    Host(f64),
    /// A detached scalar still on the device. The loop reads a batch of steps' values in one
    /// transfer, so a GPU step never waits for its own losses to reach the host.
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
    /// Settings the checkpoint must match (e.g. the JSON of the resolved parameters).
    pub fingerprint: String,
    /// Progress phase name, e.g. `train`.
    pub phase: String,
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
    /// Per-loss mean over the last `min(steps, 10)` logged steps (more stable than `last`).
    pub tail_mean: Vec<(String, f64)>,
}

/// Scratch sub-directories used by the loop.
fn ckpt_dir(scratch: &Path) -> PathBuf {
    scratch.join("ckpt")
}
fn run_dir(scratch: &Path) -> PathBuf {
    scratch.join("run")
}

/// Runs `task` for `cfg.steps` steps under `ctx` and copies `log.csv` and `samples/` into
/// `ctx.out_dir`.
pub fn run_loop(
    ctx: &StageContext<'_>,
    cfg: &LoopConfig,
    task: &mut dyn TrainTask,
) -> Result<LoopOutcome, MethodError> {
    if cfg.steps == 0 {
        return Err(MethodError::param("steps", 0, "must be at least 1"));
    }
    let ckpt = ckpt_dir(ctx.scratch_dir);
    let run = run_dir(ctx.scratch_dir);
    let samples = run.join("samples");
    std::fs::create_dir_all(&samples).map_err(|e| MethodError::io(&samples, e))?;
    let start = checkpoint::resume_or_start(&ckpt, cfg.seed, &cfg.fingerprint, &task.state())?;
    if start > cfg.steps {
        return Err(MethodError::Checkpoint {
            path: ckpt,
            reason: format!("is at step {start}, past `steps` = {}", cfg.steps),
        });
    }
    if start > 0 {
        ctx.progress
            .message(&format!("resuming from step {start} of {}", cfg.steps));
    }
    let log_path = run.join("log.csv");
    let mut log = CsvLog::open(&log_path, start)?;
    task.seek(start)?;
    ctx.progress.start(&cfg.phase, cfg.steps);
    ctx.progress.set(start);
    let mut last = Vec::new();
    let mut pending: Vec<(u64, StepLog)> = Vec::new();
    for step in start..cfg.steps {
        if ctx.cancel.is_cancelled() {
            read_pending(&mut pending, &mut log, &mut last)?;
            log.sync()?;
            checkpoint::save(&ckpt, step, cfg.seed, &cfg.fingerprint, &task.state())?;
            return Err(MethodError::Cancelled);
        }
        tch::manual_seed(step_seed(cfg.seed, step, 0) as i64);
        pending.push((step, task.step(step)?));
        let done = step + 1;
        ctx.progress.set(done);
        let sample_now = cfg.sample_every > 0 && done % cfg.sample_every == 0 && done < cfg.steps;
        let ckpt_now =
            cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0 && done < cfg.steps;
        if pending.len() >= LOG_READ_EVERY || sample_now || ckpt_now {
            // Never sample or checkpoint a state whose losses went non-finite.
            read_pending(&mut pending, &mut log, &mut last)?;
        }
        if sample_now {
            task.sample(done, &samples)?;
        }
        if ckpt_now {
            log.sync()?;
            checkpoint::save(&ckpt, done, cfg.seed, &cfg.fingerprint, &task.state())?;
        }
    }
    read_pending(&mut pending, &mut log, &mut last)?;
    task.sample(cfg.steps, &samples)?;
    log.flush()?;
    let tail_mean = log.tail_mean(10);
    // Publish the log and samples.
    let out_log = ctx.out_dir.join("log.csv");
    std::fs::copy(&log_path, &out_log).map_err(|e| MethodError::io(&out_log, e))?;
    copy_dir(&samples, &ctx.out_dir.join("samples"))?;
    Ok(LoopOutcome {
        resumed_from: start,
        last,
        tail_mean,
    })
}

/// Reads the pending steps' device values to the host in one transfer, refuses a
/// non-finite loss (naming its step), and appends the rows to the log.
fn read_pending(
    pending: &mut Vec<(u64, StepLog)>,
    log: &mut CsvLog,
    last: &mut Vec<(String, f64)>,
) -> Result<(), MethodError> {
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
        let all = Tensor::cat(&flat, 0).to_device(tch::Device::Cpu);
        read = Vec::<f64>::try_from(&all)
            .map_err(|e| MethodError::Numeric(format!("reading logged losses: {e}")))?
            .into_iter();
    }
    for (step, row) in pending.drain(..) {
        let values: Vec<(String, f64)> = row
            .into_iter()
            .map(|(n, v)| match v {
                LogValue::Host(x) => (n, x),
                LogValue::Device(_) => (n, read.next().unwrap_or(f64::NAN)),
            })
            .collect();
        if let Some((n, v)) = values.iter().find(|(_, v)| !v.is_finite()) {
            return Err(MethodError::Numeric(format!(
                "loss `{n}` is {v} at step {step}; lower `lr` or check the data"
            )));
        }
        log.row(step + 1, &values)?;
        *last = values;
    }
    Ok(())
}

/// Checkpoints the task now (used by stages that finish with extra work they may want to
/// protect); the loop itself checkpoints on schedule and on cancel.
pub fn save_now(
    ctx: &StageContext<'_>,
    cfg: &LoopConfig,
    step: u64,
    task: &dyn TrainTask,
) -> Result<(), MethodError> {
    checkpoint::save(
        &ckpt_dir(ctx.scratch_dir),
        step,
        cfg.seed,
        &cfg.fingerprint,
        &task.state(),
    )
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), MethodError> {
    std::fs::create_dir_all(to).map_err(|e| MethodError::io(to, e))?;
    let rd = std::fs::read_dir(from).map_err(|e| MethodError::io(from, e))?;
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let dst = to.join(e.file_name());
        if e.path().is_file() {
            std::fs::copy(e.path(), &dst).map_err(|err| MethodError::io(&dst, err))?;
        }
    }
    Ok(())
}

/// `log.csv`: `step,<loss names...>`, every value in the shortest decimal that reads back
/// as the same `f64`. On resume the rows up to the checkpoint are kept (later ones are
/// dropped, so the log matches the restored state exactly) and must be complete: a gap
/// would change the log and the averages taken from it.
struct CsvLog {
    path: PathBuf,
    header: Option<Vec<String>>,
    rows: Vec<(u64, Vec<f64>)>,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl CsvLog {
    fn open(path: &Path, keep_up_to: u64) -> Result<Self, MethodError> {
        let mut header = None;
        let mut rows = Vec::new();
        if keep_up_to > 0 {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(MethodError::io(path, e)),
            };
            let mut lines = text.lines();
            if let Some(h) = lines.next() {
                header = Some(h.split(',').skip(1).map(str::to_string).collect::<Vec<_>>());
            }
            let width = header.as_ref().map_or(0, Vec::len);
            for l in lines {
                // Rows past the checkpoint (the last one perhaps torn by a crash) are dropped.
                if rows.len() as u64 == keep_up_to {
                    break;
                }
                let mut it = l.split(',');
                let step = it.next().and_then(|v| v.parse::<u64>().ok());
                let vals: Option<Vec<f64>> = it.map(|v| v.parse().ok()).collect();
                match (step, vals) {
                    (Some(step), Some(vals))
                        if step == rows.len() as u64 + 1 && vals.len() == width =>
                    {
                        rows.push((step, vals));
                    }
                    _ => return Err(Self::mismatch(path, rows.len(), keep_up_to)),
                }
            }
            if rows.len() as u64 != keep_up_to {
                return Err(Self::mismatch(path, rows.len(), keep_up_to));
            }
        }
        let mut log = CsvLog {
            path: path.to_path_buf(),
            header,
            rows,
            file: None,
        };
        log.rewrite()?;
        Ok(log)
    }

    fn mismatch(path: &Path, rows: usize, step: u64) -> MethodError {
        MethodError::Checkpoint {
            path: path.to_path_buf(),
            reason: format!(
                "has {rows} complete rows but the checkpoint is at step {step}; \
                 delete the scratch directory to start over"
            ),
        }
    }

    /// Writes the header and the rows so far to a temporary file and renames it over the
    /// log, then appends from there: a crash mid-rewrite leaves the old, complete log.
    fn rewrite(&mut self) -> Result<(), MethodError> {
        let io = |e| MethodError::io(&self.path, e);
        let tmp = self.path.with_extension("csv.tmp");
        {
            let f = std::fs::File::create(&tmp).map_err(|e| MethodError::io(&tmp, e))?;
            let mut w = std::io::BufWriter::new(f);
            if let Some(h) = &self.header {
                writeln!(w, "step,{}", h.join(",")).map_err(io)?;
                for (s, v) in &self.rows {
                    writeln!(w, "{s},{}", join(v)).map_err(io)?;
                }
            }
            w.into_inner()
                .map_err(|e| io(e.into_error()))?
                .sync_all()
                .map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        self.file = Some(std::io::BufWriter::new(f));
        Ok(())
    }

    fn row(&mut self, step: u64, losses: &[(String, f64)]) -> Result<(), MethodError> {
        let names: Vec<String> = losses.iter().map(|(n, _)| n.clone()).collect();
        let vals: Vec<f64> = losses.iter().map(|(_, v)| *v).collect();
        match &self.header {
            None => {
                self.header = Some(names);
                self.rewrite()?;
            }
            Some(h) if *h != names => {
                return Err(MethodError::Numeric(format!(
                    "{}: loss columns changed from {h:?} to {names:?}",
                    self.path.display()
                )));
            }
            Some(_) => {}
        }
        if let Some(w) = &mut self.file {
            writeln!(w, "{step},{}", join(&vals)).map_err(|e| MethodError::io(&self.path, e))?;
        }
        self.rows.push((step, vals));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), MethodError> {
        if let Some(w) = &mut self.file {
            w.flush().map_err(|e| MethodError::io(&self.path, e))?;
        }
        Ok(())
    }

    /// Flushes and syncs: before a checkpoint, whose resume needs every row up to it.
    fn sync(&mut self) -> Result<(), MethodError> {
        self.flush()?;
        if let Some(w) = &self.file {
            w.get_ref()
                .sync_data()
                .map_err(|e| MethodError::io(&self.path, e))?;
        }
        Ok(())
    }

    fn tail_mean(&self, n: usize) -> Vec<(String, f64)> {
        let Some(h) = &self.header else {
            return Vec::new();
        };
        let tail = &self.rows[self.rows.len().saturating_sub(n)..];
        h.iter()
            .enumerate()
            .map(|(i, name)| {
                let vals: Vec<f64> = tail.iter().filter_map(|(_, v)| v.get(i).copied()).collect();
                let m = vals.iter().sum::<f64>() / vals.len().max(1) as f64;
                (name.clone(), m)
            })
            .collect()
    }
}

/// Shortest round-trip form (`{:e}`): parsing it gives back the same `f64`, so a resumed
/// run's log rows and averages equal an uninterrupted run's.
fn join(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:e}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// An endless, positionable stream of training batches: epoch `e` of the loader, batch
/// `i` within it. Batch number `k` is always the same data (the loader's order and
/// augmentation are seeded by `(seed, epoch)`), so a resumed run sees what an
/// uninterrupted one would.
pub struct BatchStream {
    loader: Loader,
    per_epoch: u64,
    epoch: u64,
    iter: Option<ugc_data::loader::Epoch>,
    /// What the stream feeds (for error messages), e.g. `labeled`.
    name: String,
}

impl BatchStream {
    /// Fails when the loader cannot fill one batch (fewer examples than `batch_size`).
    pub fn new(loader: Loader, name: &str) -> Result<Self, MethodError> {
        let per_epoch = loader.batches_per_epoch() as u64;
        if per_epoch == 0 {
            return Err(MethodError::param(
                "batch_size",
                "(see stage params)",
                format!(
                    "the {name} set has {} examples, fewer than one batch",
                    loader.len()
                ),
            ));
        }
        Ok(BatchStream {
            loader,
            per_epoch,
            epoch: 0,
            iter: None,
            name: name.to_string(),
        })
    }

    /// Positions the stream so the next batch is batch number `k` (0-based). Batches before
    /// it in the same epoch are decoded and dropped (the loader has no random access).
    pub fn seek(&mut self, k: u64) -> Result<(), MethodError> {
        self.epoch = k / self.per_epoch;
        let mut it = self.loader.epoch(self.epoch);
        for _ in 0..(k % self.per_epoch) {
            match it.next() {
                Some(r) => {
                    r?;
                }
                None => break,
            }
        }
        self.iter = Some(it);
        Ok(())
    }

    /// The next batch, starting a new epoch when one is exhausted.
    pub fn next_batch(&mut self) -> Result<Batch, MethodError> {
        if self.iter.is_none() {
            self.iter = Some(self.loader.epoch(self.epoch));
        }
        loop {
            let it = self.iter.as_mut().ok_or_else(|| {
                MethodError::Numeric(format!("{} stream has no epoch", self.name))
            })?;
            match it.next() {
                Some(b) => return Ok(b?),
                None => {
                    self.epoch += 1;
                    self.iter = Some(self.loader.epoch(self.epoch));
                }
            }
        }
    }

    /// Batches in one epoch.
    pub fn per_epoch(&self) -> u64 {
        self.per_epoch
    }
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
        fn state(&self) -> Vec<(String, Tensor)> {
            vec![("w".into(), self.weight.shallow_clone())]
        }
        fn seek(&mut self, _: u64) -> Result<(), MethodError> {
            Ok(())
        }
        fn step(&mut self, step: u64) -> Result<StepLog, MethodError> {
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
        fn sample(&mut self, _: u64, _: &Path) -> Result<(), MethodError> {
            Ok(())
        }
    }

    fn run(task: &mut Counter, steps: u64, dir: &Path) -> Result<LoopOutcome, MethodError> {
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
    ) -> Result<LoopOutcome, MethodError> {
        let (out, scratch) = (dir.join("out"), dir.join("scratch"));
        std::fs::create_dir_all(&out).unwrap();
        let (params, env) = (json!({}), BTreeMap::new());
        let ctx = StageContext {
            node: "n",
            kind: "train",
            params: &params,
            inputs: &[],
            out_dir: &out,
            scratch_dir: &scratch,
            device: DeviceKind::Cpu,
            progress,
            cancel,
            env: &env,
        };
        let cfg = LoopConfig {
            steps,
            checkpoint_every: 0,
            sample_every: 0,
            seed: 0,
            fingerprint: "t".into(),
            phase: "train".into(),
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
        assert!(matches!(e, MethodError::Cancelled), "{e}");
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
}
