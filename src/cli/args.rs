//! Arguments of the verbs the worker runs (model, metrics, synth), defined here so the
//! head validates them and prints their help without loading libtorch.

use clap::Args;

/// The architecture options shared by the model verbs. Unset fields take the family's
/// official defaults (DESIGN.md section 3).
#[derive(Args, Debug, Clone)]
pub struct ArchArgs {
    /// pix2pix-resnet | mobile-resnet | pix2pix-unet | pix2pixhd | gaugan
    #[arg(long)]
    pub arch: String,
    /// Base width of the generator.
    #[arg(long)]
    pub ngf: Option<i64>,
    /// Residual blocks (resnet families, pix2pixhd) or G_middle blocks (gaugan).
    #[arg(long)]
    pub n_blocks: Option<i64>,
    /// UNet levels (8 for 256x256).
    #[arg(long)]
    pub num_downs: Option<i64>,
    /// Downsamplings of the pix2pixhd global generator.
    #[arg(long)]
    pub n_downsample: Option<i64>,
    /// GauGAN upsampling schedule: more | normal.
    #[arg(long)]
    pub upsampling: Option<String>,
    /// Output channels.
    #[arg(long)]
    pub output_nc: Option<i64>,
    /// A sub-net in config-string form (docs/config-strings.md); default: the full model.
    #[arg(long)]
    pub config: Option<String>,
}
