//! The UGC method as stage kinds.
//!
//! The training core (Adam, checkpoints, the step loop, batch streams) is `ugc-train`,
//! shared with the `evaluator` kind. Here, what the method's training stages add to it:
//! - [`device`]: engine device -> `tch::Device`, accelerator-only settings.
//! - [`losses`]: hinge GAN, L1, SSIM, Gram, feature L1, TV and the OMGD student loss.
//! - [`perceptual`]: [`perceptual::FeatureNet`] (VGG16 from a user file, or the
//!   discriminator's features).
//! - [`setup`]: the `split` dep, architecture maps, input encodings, loaders and evaluation
//!   batches, default discriminators, input-size checks, libtorch panic guard, a saved
//!   supernet, JSON files (for stage one and stage two alike).
//! - [`gan`]: the GAN training task (D + G step over a sub-net schedule) shared by
//!   `supernet` and `train`.
//! - [`error`]: [`MethodError`] and its mapping to the engine's `StageError`.
//!
//! Stage kinds: [`supernet::SupernetStage`], [`train::TrainStage`] (stage one and baselines);
//! `search`, `teachers`, `adf`, `distill` (stage two).

pub mod adf;
pub mod device;
pub mod distill;
pub mod error;
pub mod gan;
pub mod losses;
pub mod perceptual;
pub mod search;
pub mod setup;
pub mod supernet;
pub mod teachers;
pub mod train;

pub use error::MethodError;
