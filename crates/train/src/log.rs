//! `log.csv` of the step loop.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::TrainError;

/// `log.csv`: `step,<loss names...>`, every value in the shortest decimal that reads back
/// as the same `f64`. On resume the rows up to the checkpoint are kept (later ones are
/// dropped, so the log matches the restored state exactly) and must be complete: a gap
/// would change the log and the averages taken from it.
pub(crate) struct CsvLog {
    path: PathBuf,
    header: Option<Vec<String>>,
    rows: Vec<(u64, Vec<f64>)>,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl CsvLog {
    pub(crate) fn open(path: &Path, keep_up_to: u64) -> Result<Self, TrainError> {
        let mut header = None;
        let mut rows = Vec::new();
        if keep_up_to > 0 {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(TrainError::io(path, e)),
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

    fn mismatch(path: &Path, rows: usize, step: u64) -> TrainError {
        TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason: format!(
                "has {rows} complete rows but the checkpoint is at step {step}; \
                 delete the scratch directory to start over"
            ),
        }
    }

    /// Writes the header and the rows so far to a temporary file and renames it over the
    /// log, then appends from there: a crash mid-rewrite leaves the old, complete log.
    fn rewrite(&mut self) -> Result<(), TrainError> {
        let io = |e| TrainError::io(&self.path, e);
        let tmp = self.path.with_extension("csv.tmp");
        {
            let f = std::fs::File::create(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
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

    pub(crate) fn row(&mut self, step: u64, losses: &[(String, f64)]) -> Result<(), TrainError> {
        let names: Vec<String> = losses.iter().map(|(n, _)| n.clone()).collect();
        let vals: Vec<f64> = losses.iter().map(|(_, v)| *v).collect();
        match &self.header {
            None => {
                self.header = Some(names);
                self.rewrite()?;
            }
            Some(h) if *h != names => {
                return Err(TrainError::Numeric(format!(
                    "{}: loss columns changed from {h:?} to {names:?}",
                    self.path.display()
                )));
            }
            Some(_) => {}
        }
        if let Some(w) = &mut self.file {
            writeln!(w, "{step},{}", join(&vals)).map_err(|e| TrainError::io(&self.path, e))?;
        }
        self.rows.push((step, vals));
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> Result<(), TrainError> {
        if let Some(w) = &mut self.file {
            w.flush().map_err(|e| TrainError::io(&self.path, e))?;
        }
        Ok(())
    }

    /// Flushes and syncs: before a checkpoint, whose resume needs every row up to it.
    pub(crate) fn sync(&mut self) -> Result<(), TrainError> {
        self.flush()?;
        if let Some(w) = &self.file {
            w.get_ref()
                .sync_data()
                .map_err(|e| TrainError::io(&self.path, e))?;
        }
        Ok(())
    }

    pub(crate) fn tail_mean(&self, n: usize) -> Vec<(String, f64)> {
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
