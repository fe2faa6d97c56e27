//! Positionable batches, so a resumed run sees exactly the data an uninterrupted one does.

use ugc_data::{Batch, Loader};

use crate::error::TrainError;

/// An endless, positionable stream of training batches: epoch `e` of the loader, batch
/// `i` within it. Batch number `k` is always the same data (the loader's order and
/// augmentation are seeded by `(seed, epoch)`), so a resumed run sees what an
/// uninterrupted one would.
pub struct BatchStream {
    loader: Loader,
    per_epoch: u64,
    epoch: u64,
    /// Batches of the current epoch already yielded.
    pos: u64,
    iter: Option<ugc_data::loader::Epoch>,
    /// What the stream feeds (for error messages), e.g. `labeled`.
    name: String,
}

impl BatchStream {
    /// Fails when the loader cannot fill one batch (fewer examples than `batch_size`).
    pub fn new(loader: Loader, name: &str) -> Result<Self, TrainError> {
        let per_epoch = loader.batches_per_epoch() as u64;
        if per_epoch == 0 {
            return Err(TrainError::param(
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
            pos: 0,
            iter: None,
            name: name.to_string(),
        })
    }

    /// Positions the stream so the next batch is batch number `k` (0-based). Batches before
    /// it in the same epoch are decoded and dropped (the loader has no random access).
    pub fn seek(&mut self, k: u64) -> Result<(), TrainError> {
        self.epoch = k / self.per_epoch;
        self.pos = k % self.per_epoch;
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
    pub fn next_batch(&mut self) -> Result<Batch, TrainError> {
        Ok(self.next_shard()?.0)
    }

    /// The next batch (this rank's rows when the loader is sharded) and the number of rows
    /// of the global batch it is part of (for [`crate::Dist::scale`]).
    pub fn next_shard(&mut self) -> Result<(Batch, usize), TrainError> {
        if self.iter.is_none() {
            self.iter = Some(self.loader.epoch(self.epoch));
        }
        loop {
            let it = self
                .iter
                .as_mut()
                .ok_or_else(|| TrainError::Numeric(format!("{} stream has no epoch", self.name)))?;
            match it.next() {
                Some(b) => {
                    let rows = self.loader.global_rows(self.pos as usize);
                    self.pos += 1;
                    return Ok((b?, rows));
                }
                None => {
                    self.epoch += 1;
                    self.pos = 0;
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

impl BatchStream {
    /// The loader behind the stream (its example count, for records).
    pub fn loader(&self) -> &Loader {
        &self.loader
    }
}
