//! The UGC method as stage kinds.
//!
//! Training core shared by every training stage of the method (`supernet`, `train`, and the
//! distillation stages):
//! - [`device`]: engine device -> `tch::Device`, accelerator-only settings.
//! - [`losses`]: hinge GAN, L1, SSIM, Gram, feature L1, TV and the OMGD student loss.
//! - [`perceptual`]: [`perceptual::FeatureNet`] (VGG16 from a user file, or the
//!   discriminator's features).
//! - [`optim`]: Adam over plain tensors, so its state checkpoints exactly.
//! - [`checkpoint`]: atomic checkpoints of named tensors in the stage's scratch directory.
//! - [`trainer`]: the step loop (progress, cancel, checkpoint, CSV log, samples, resume)
//!   and [`trainer::BatchStream`] (positionable batches for exact resume).
//! - [`setup`]: the `split` dep, architecture maps, input encodings, loaders, default
//!   discriminators, input-size checks, libtorch panic guard.
//! - [`gan`]: the GAN training task (D + G step over a sub-net schedule) shared by
//!   `supernet` and `train`.
//! - [`error`]: [`MethodError`] and its mapping to the engine's `StageError`.
//!
//! Stage kinds: [`supernet::SupernetStage`], [`train::TrainStage`] (stage one and baselines);
//! `search`, `teachers`, `adf`, `distill` (stage two).

pub mod adf;
pub mod checkpoint;
pub mod device;
pub mod distill;
pub mod error;
pub mod gan;
pub mod losses;
pub mod optim;
pub mod perceptual;
pub mod search;
pub mod setup;
pub mod supernet;
pub mod teachers;
pub mod train;
pub mod trainer;

pub use error::MethodError;
