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
