//! ugc-metrics: evaluation metrics for compressed image-to-image GANs.
//!
//! * [`frechet`] / [`kid`]: distances between feature sets (FID's formula, KID);
//! * [`inception`]: pytorch-fid's FID Inception-v3 loading user weights by name;
//! * [`miou`] + [`cityscapes`] + [`drn`]: segmentation-based evaluation (confusion-matrix
//!   mIoU, the Cityscapes label table, DRN-D-105);
//! * [`resize`]: Pillow-exact bicubic resize (the DRN evaluation protocol);
//! * [`image_metrics`]: PSNR and SSIM; [`latency`]: warm-up + median timing;
//! * [`features`]: the [`features::FeatureExtractor`] trait an `evaluate` stage drives.
//!
//! Every pretrained network loads from a user-supplied weights file through
//! [`weights::load_weights`] (safetensors or a `.pth` as torch.save wrote it); nothing is downloaded or silently replaced.

pub mod cityscapes;
pub mod cityscapes_tree;
pub mod drn;
pub mod error;
pub mod features;
pub mod folder;
pub mod folders;
pub mod frechet;
pub mod image_metrics;
pub mod inception;
pub mod kid;
pub mod latency;
pub mod lpips;
pub mod miou;
pub mod npy;
pub mod npz;
pub mod resize;
pub mod weights;

pub use error::{MetricsError, Result};
pub use features::{EvaluatorIdentity, FeatureExtractor};
pub use frechet::{GaussianStats, frechet_distance, frechet_from_npy};
pub use miou::{ConfusionMatrix, MiouReport, miou_from_dirs};
