//! The interface an `evaluate` stage uses for any feature network (FID Inception, or an
//! evaluator trained inside the pipeline), plus the shared image preprocessing.
//!
//! Distances on features of a network other than the FID Inception are not FID: the
//! identity's `metric_name` says what a Fréchet distance on these features is called.

use serde::Serialize;
use tch::{Kind, Tensor};

use crate::error::{MetricsError, Result};
use crate::frechet::{DEFAULT_EPS, GaussianStats, frechet_distance};
use crate::weights::WeightsInfo;

/// Who computed the features: enters `metrics.json` next to every value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvaluatorIdentity {
    /// e.g. `pytorch-fid-inception-v3-pool3`.
    pub name: String,
    /// What a Fréchet distance on these features is reported as (`fid` only for the
    /// FID Inception network).
    pub metric_name: String,
    pub weights: Option<WeightsInfo>,
    /// Human-readable input convention (size, range, normalisation).
    pub input: String,
}

/// A network mapping images to one feature vector each.
pub trait FeatureExtractor {
    fn identity(&self) -> EvaluatorIdentity;
    fn feature_dim(&self) -> i64;
    /// `images`: `N x 3 x H x W`, float in `[0, 1]` (already quantised if the protocol says
    /// so). Returns `N x D` features on the CPU.
    fn features(&self, images: &Tensor) -> Result<Tensor>;
}

/// Runs `extractor` over `images` in chunks of `batch_size` and concatenates the features.
pub fn features_in_batches(
    extractor: &dyn FeatureExtractor,
    images: &Tensor,
    batch_size: i64,
) -> Result<Tensor> {
    if batch_size < 1 {
        return Err(MetricsError::InvalidParam(format!(
            "batch_size must be >= 1, got {batch_size}"
        )));
    }
    let n = images.size().first().copied().unwrap_or(0);
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let len = batch_size.min(n - start);
        out.push(extractor.features(&images.narrow(0, start, len))?);
        start += len;
    }
    if out.is_empty() {
        return Err(MetricsError::InvalidParam(
            "no images to extract features from".into(),
        ));
    }
    Ok(Tensor::cat(&out, 0))
}

/// Fréchet distance between the features of two image sets.
pub fn frechet_of_images(
    extractor: &dyn FeatureExtractor,
    a: &Tensor,
    b: &Tensor,
    batch_size: i64,
) -> Result<f64> {
    let fa = features_in_batches(extractor, a, batch_size)?;
    let fb = features_in_batches(extractor, b, batch_size)?;
    let sa = GaussianStats::from_features(&fa)?;
    let sb = GaussianStats::from_features(&fb)?;
    Ok(frechet_distance(&sa, &sb, DEFAULT_EPS)?.value)
}

/// How generator outputs are turned into 8-bit values before evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rounding {
    /// `floor`, as pix2pix/GAN-compression `tensor2im` (`astype(np.uint8)`) does when it
    /// saves the images that FID and mIoU are computed on.
    #[default]
    Truncate,
    /// Round to nearest (torchvision `save_image`).
    Nearest,
}

/// Maps generator outputs in `[-1, 1]` to `k / 255` in `[0, 1]`, as if saved as 8-bit PNGs.
pub fn quantize_8bit(x: &Tensor, rounding: Rounding) -> Tensor {
    let v = ((x.to_kind(Kind::Float) + 1.0) * 0.5 * 255.0).clamp(0.0, 255.0);
    let v = match rounding {
        Rounding::Truncate => v.floor(),
        Rounding::Nearest => v.round(),
    };
    v / 255.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantisation_matches_tensor2im() {
        let x = Tensor::from_slice(&[-1.0f32, -0.999, 0.0, 0.5, 1.0, 1.5]);
        let t: Vec<f32> = Vec::try_from(&(quantize_8bit(&x, Rounding::Truncate) * 255.0)).unwrap();
        // (x + 1) / 2 * 255, truncated: 0, 0.1275 -> 0, 127.5 -> 127, 191.25 -> 191, 255, clamp.
        let expect = [0.0, 0.0, 127.0, 191.0, 255.0, 255.0];
        // k / 255 and back in float32: two roundings of values <= 255.
        let within = 2.0 * 255.0 * f32::EPSILON;
        for (a, b) in t.iter().zip(expect) {
            assert!((a - b).abs() <= within, "{t:?}");
        }
        let r: Vec<f32> = Vec::try_from(&(quantize_8bit(&x, Rounding::Nearest) * 255.0)).unwrap();
        assert!((r[2] - 128.0).abs() <= within, "{r:?}");
    }
}
