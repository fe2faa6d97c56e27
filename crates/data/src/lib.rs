//! Data layer of ugc-pipe: dataset readers, the validated label-ratio split, built-in
//! synthetic tasks and a multi-threaded loader producing `tch` batches.
//!
//! - [`dataset`]: aligned (pix2pix), Cityscapes and plain-folder readers.
//! - [`validate`]: decode-and-check every file before anything trains.
//! - [`split`] + [`manifest`]: deterministic split; unlabeled targets withheld by type.
//! - [`synth`]: `labels2photo` and `edges2photo` generators.
//! - [`loader`]: worker threads, pix2pix augmentation, prefetch, batches on a device.
//! - [`stages`]: the `synth` and `split` stage kinds.

pub mod augment;
pub mod classes;
pub mod dataset;
pub mod error;
pub mod image_io;
pub mod loader;
pub mod manifest;
pub mod rng;
pub mod split;
pub mod stages;
pub mod synth;
pub mod validate;

pub use classes::{ClassInfo, ClassTable};
pub use dataset::{DatasetIndex, DatasetSpec, Direction, Format, read_dataset};
pub use error::{DataError, FileProblem};
pub use loader::{Batch, InputEncoding, Loader, LoaderConfig, Subset};
pub use manifest::{LabeledPair, SplitManifest, UnlabeledInput};
pub use split::{SplitParams, split_dataset};
pub use stages::{SplitStage, SynthStage};
pub use synth::{SynthConfig, SynthReport, SynthTask, synth_to_dir, synth_with};
