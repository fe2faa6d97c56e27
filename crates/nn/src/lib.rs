//! ugc-nn: the networks UGC compresses, as weight-sharing supernets (tch).
//!
//! # Contract (shared by every family; read this before adding one)
//! - [`arch`]: [`Arch`] (CLI names) and [`ArchConfig`] (what to build, serde, per-family
//!   defaults from DESIGN §3). Weights never live in configs.
//! - [`subnet`]: [`SubnetConfig`] (`w=..;d=..` strings, `docs/config-strings.md`) and
//!   [`SearchSpace`] (`largest`, `smallest`, `sample`, `check`/`contains`).
//! - [`elastic`]: first-k-channel conv / transposed conv / norm layers; widths are forward
//!   arguments, never hidden state. [`Mode`] selects train / eval / BN-calibration behaviour.
//! - [`cost`]: [`Cost`] and torchprofile-convention counting helpers.
//! - [`generator`]: the object-safe [`Generator`] trait, [`build_generator`],
//!   [`search_space`], [`profile`] and [`recalibrate_bn`].
//! - [`disc`]: [`Discriminator`] trait, [`DiscConfig`], [`build_discriminator`].
//!
//! Tensors are created under an `nn::Path` with the official PyTorch state-dict names, so an
//! official checkpoint loads by name, as safetensors or as the `.pth` that `torch.save`
//! wrote ([`pth`]; told apart by content).

pub mod arch;
pub mod cost;
pub mod disc;
pub mod elastic;
pub mod error;
pub mod export;
pub mod gaugan;
pub mod generator;
pub mod infer;
pub mod multiscale;
pub mod patchgan;
pub mod pix2pixhd;
pub mod pth;
pub mod resnet;
pub mod spade;
pub mod subnet;
pub mod unet;

pub use arch::{Arch, ArchConfig, ArchError, NormG, NormKind, SpaceSpec, Upsampling};
pub use cost::Cost;
pub use disc::{DiscArch, DiscConfig, Discriminator, build_discriminator};
pub use elastic::Mode;
pub use error::NnError;
pub use generator::{
    Generator, ProfileReport, build_generator, parse_input_shape, profile, profile_report,
    recalibrate_bn, search_space,
};
pub use subnet::{BlockChoice, SearchSpace, SubnetConfig, WidthChoice};
