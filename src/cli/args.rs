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
    /// GauGAN upsampling schedule (SPADE's --num_upsampling_layers): more | normal | most.
    #[arg(long, alias = "num_upsampling_layers")]
    pub upsampling: Option<String>,
    /// Output channels (--output_nc).
    #[arg(long, alias = "output_nc")]
    pub output_nc: Option<i64>,
    /// Input channels (--input_nc); label-map families derive it from --label-nc.
    #[arg(long, alias = "input_nc")]
    pub input_nc: Option<i64>,
    /// Normalisation of the pix2pix families (--norm): instance | batch | none. Convs have
    /// biases only with instance norm, as in the official code.
    #[arg(long)]
    pub norm: Option<String>,
    /// Dropout in the ResNet / UNet blocks: pix2pix trained without --no_dropout, and
    /// gan-compression's resnet teachers (with --dropout-rate 0). Moves the ResNet block's
    /// second conv to conv_block.6.
    #[arg(long)]
    pub dropout: bool,
    /// Dropout probability with --dropout (default 0.5; gan-compression's --dropout_rate).
    #[arg(long, alias = "dropout_rate", requires = "dropout")]
    pub dropout_rate: Option<f64>,
    /// Label classes of a label-map family (--label_nc); the input is then label_nc one-hot
    /// channels (+1 with --contain-dontcare-label) (+1 instance-edge channel unless
    /// --no-instance).
    #[arg(long, alias = "label_nc")]
    pub label_nc: Option<i64>,
    /// SPADE's --contain_dontcare_label: label 255 gets its own channel (needs --label-nc).
    #[arg(long, alias = "contain_dontcare_label", requires = "label_nc")]
    pub contain_dontcare_label: bool,
    /// The official --no_instance: no instance-edge channel (needs --label-nc).
    #[arg(long, alias = "no_instance", requires = "label_nc")]
    pub no_instance: bool,
    /// GauGAN's --norm_G: spectralspadesyncbatch3x3 (default) | spectralspadebatch3x3 |
    /// spectralspadeinstance3x3 | spadesyncbatch3x3 | spadebatch3x3 | spadeinstance3x3.
    #[arg(long, alias = "norm_G")]
    pub norm_g: Option<String>,
    /// A sub-net in config-string form (docs/config-strings.md); default: the full model.
    #[arg(long)]
    pub config: Option<String>,
}

/// `-j/--jobs`: a positive count. Zero stages at a time cannot run a pipeline, so it is
/// refused as a usage error naming the value instead of being taken silently.
pub fn parse_jobs(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("0 stages at a time would run nothing; give 1 or more".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{s}` is not a positive whole number ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_jobs;

    #[test]
    fn jobs_must_be_positive() {
        assert_eq!(parse_jobs("3"), Ok(3));
        assert!(parse_jobs("0").unwrap_err().contains("0 stages"));
        assert!(parse_jobs("-1").unwrap_err().contains("`-1`"));
        assert!(parse_jobs("two").unwrap_err().contains("`two`"));
    }
}
