//! ugc-train: the one training core of every training stage kind (`supernet`, `distill`,
//! `train` in ugc-method, `evaluator` in ugc-eval).
//!
//! - [`optim`]: [`Adam`] over plain tensors with bias correction and [`LrSchedule`]; its
//!   moments and step count are named tensors saved with the weights, so a resume is
//!   bit-identical on the CPU.
//! - [`checkpoint`]: the one checkpoint format, atomic, in the stage's scratch directory
//!   (one per cache key, so the key is the checkpoint's fingerprint).
//! - [`run`]: [`TrainTask`] and [`run_loop`]: resume, per-step cancel polling
//!   (checkpoint, then cancelled), reseeding, progress, an exact `log.csv`, samples,
//!   periodic checkpoints, batched reads of logged device values.
//! - [`live`]: what a user watches: status lines (losses, rate, ETA) and TensorBoard event
//!   files ([`tensorboard`], written by hand), outside the committed output.
//! - [`stream`]: [`BatchStream`], batches positionable for an exact resume.
//! - [`dist`]: [`Dist`], the process group of a data-parallel stage (or none) and the
//!   arithmetic of sharded global batches.
//! - [`error`]: the typed [`TrainError`].
//! - [`testing`]: a test body run as several rank processes.

pub mod checkpoint;
pub mod dist;
pub mod error;
pub mod live;
mod log;
pub mod optim;
pub mod run;
mod seed;
pub mod stream;
pub mod tensorboard;
pub mod testing;

pub use dist::Dist;
pub use error::TrainError;
pub use optim::{Adam, AdamConfig, AdamUpdate, LrSchedule, trainable};
pub use run::{LogValue, LoopConfig, LoopOutcome, StepLog, TrainTask, run_loop};
pub use seed::step_seed;
pub use stream::BatchStream;
