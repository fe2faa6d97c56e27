//! Arguments of `ugc-pipe metrics ...` (run by the worker, which links libtorch). The verbs
//! follow the reference tools' command lines where one exists (`python -m pytorch_fid A B
//! --save-stats`), so a user's habits carry over; docs/metrics.md maps every flag.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::runtime::DeviceChoice;

/// Options shared by the metrics that run a network over image folders.
#[derive(Args, Debug, Clone)]
pub struct NetArgs {
    /// Images per forward pass (pytorch-fid's default is 50).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..))]
    pub batch_size: i64,
    /// Where to run: CUDA when a GPU is visible (auto), or cpu / cuda.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// No progress bar on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Machine-readable output (one JSON object on stdout).
    #[arg(long)]
    pub json: bool,
}

/// Which LPIPS backbone the weights are for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LpipsNet {
    Alex,
    Vgg,
}

#[derive(Subcommand, Debug)]
pub enum MetricsVerb {
    /// Fréchet distance between two N x D feature arrays (.npy); prints {"value": ...} with --json.
    Frechet {
        a: PathBuf,
        b: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// FID between two image folders (or pytorch-fid .npz statistics files) with pytorch-fid's
    /// Inception-v3 and conventions; --save-stats DIR OUT.npz writes DIR's statistics instead.
    Fid {
        /// Two image folders or .npz statistics (mu, sigma); with --save-stats: DIR OUT.npz.
        #[arg(num_args = 2, required = true, value_names = ["A", "B"])]
        paths: Vec<PathBuf>,
        /// pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth, or safetensors).
        #[arg(long)]
        weights: PathBuf,
        /// Feature layer: 64, 192, 768 or 2048 (pool3, the FID of the papers).
        #[arg(long, default_value_t = 2048, value_parser = parse_dims)]
        dims: i64,
        /// Write the statistics of the folder A to the .npz file B (which must not exist).
        #[arg(long)]
        save_stats: bool,
        #[command(flatten)]
        net: NetArgs,
    },
    /// KID between two image folders on pytorch-fid's Inception pool3 features (clean-fid's
    /// `kernel_distance`: unbiased MMD², cubic kernel, subsets of min(N_A, N_B, subset size)).
    Kid {
        a: PathBuf,
        b: PathBuf,
        /// pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth, or safetensors).
        #[arg(long)]
        weights: PathBuf,
        /// Number of random subsets.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
        subsets: u64,
        /// Largest subset size (the subsets hold min(N_A, N_B, this) images).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(2..))]
        subset_size: u64,
        /// Seed of the subset draws.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Mean PSNR (dB, 8-bit data range 255) over images paired by file name in A and B.
    Psnr {
        a: PathBuf,
        b: PathBuf,
        /// Machine-readable output (adds the per-image values).
        #[arg(long)]
        json: bool,
        /// No progress bar on stderr.
        #[arg(long)]
        quiet: bool,
    },
    /// Mean SSIM over images paired by file name in A and B (Gaussian window 11, sigma 1.5,
    /// population statistics, data range 255: skimage with gaussian_weights=True).
    Ssim {
        a: PathBuf,
        b: PathBuf,
        /// Machine-readable output (adds the per-image values).
        #[arg(long)]
        json: bool,
        /// No progress bar on stderr.
        #[arg(long)]
        quiet: bool,
    },
    /// Mean LPIPS over images paired by file name in A and B, with the `lpips` package's
    /// weights (the backbone and lin0..lin4, e.g. a state dict of lpips.LPIPS(net=...)).
    Lpips {
        a: PathBuf,
        b: PathBuf,
        /// Weights file (.pth as torch.save wrote it, or safetensors).
        #[arg(long)]
        weights: PathBuf,
        /// Backbone of the weights: alex (the package's default) or vgg.
        #[arg(long, value_enum, default_value = "alex")]
        net: LpipsNet,
        /// torchvision's alexnet/vgg16 state dict, when --weights holds only lin0..lin4
        /// (as the package's own weights/v0.1/alex.pth does).
        #[arg(long)]
        backbone: Option<PathBuf>,
        #[command(flatten)]
        common: NetArgs,
    },
    /// Mean IoU. Label PNGs: --pred DIR --gt DIR --num-classes N (matching file names).
    /// Cityscapes label ids (*_labelIds.png, city folders): add --label-ids. Generated
    /// Cityscapes images: --drn WEIGHTS --images DIR --gt GTFINE_DIR.
    Miou {
        /// Directory of predicted label PNGs.
        #[arg(long, conflicts_with = "images")]
        pred: Option<PathBuf>,
        /// Ground truth: label PNGs with the same names, or a Cityscapes gtFine tree.
        #[arg(long)]
        gt: PathBuf,
        /// Number of classes (label ids 0..N-1); 19 with --label-ids or --drn.
        #[arg(long)]
        num_classes: Option<usize>,
        /// Label id excluded from the confusion matrix (e.g. 255).
        #[arg(long)]
        ignore: Option<u32>,
        /// --pred and --gt hold Cityscapes label ids (mapped to the 19 train ids as
        /// cityscapesScripts does), matched by their city_sequence_frame id.
        #[arg(long)]
        label_ids: bool,
        /// Generated Cityscapes images to segment with the DRN (matched to --gt by
        /// city_sequence_frame in their names).
        #[arg(long, requires = "drn")]
        images: Option<PathBuf>,
        /// DRN-D-105 weights (drn_d_105 as GAN Compression's DRNSeg saves them).
        #[arg(long, requires = "images")]
        drn: Option<PathBuf>,
        /// Images per DRN forward pass.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..))]
        batch_size: i64,
        /// Where to run the DRN.
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
        /// No progress bar on stderr.
        #[arg(long)]
        quiet: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// `--dims`: the four feature layers pytorch-fid offers.
fn parse_dims(s: &str) -> Result<i64, String> {
    match s.trim() {
        "64" => Ok(64),
        "192" => Ok(192),
        "768" => Ok(768),
        "2048" => Ok(2048),
        _ => Err(format!(
            "`{s}` is not a pytorch-fid feature layer; give 64, 192, 768 or 2048"
        )),
    }
}
