//! Arguments of `ugc-pipe metrics ...` (run by the worker, which links libtorch). The verbs
//! follow the reference tools' command lines where one exists (`python -m pytorch_fid A B
//! --save-stats`), so a user's habits carry over; docs/metrics.md maps every flag.

use std::path::PathBuf;

use clap::Subcommand;

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
    /// Mean IoU of label PNGs in --pred against --gt (matching file names), as a fraction.
    Miou {
        /// Directory of predicted label PNGs.
        #[arg(long)]
        pred: PathBuf,
        /// Directory of ground-truth label PNGs with the same file names.
        #[arg(long)]
        gt: PathBuf,
        /// Number of classes (label ids 0..N-1).
        #[arg(long)]
        num_classes: usize,
        /// Label id excluded from the confusion matrix (e.g. 255).
        #[arg(long)]
        ignore: Option<u32>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}
