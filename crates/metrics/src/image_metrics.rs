//! Full-reference image metrics: PSNR and SSIM.
//!
//! SSIM follows pytorch-msssim (and Wang et al. 2004): an 11-tap Gaussian window with
//! sigma 1.5 applied separably per channel with *valid* convolution (no padding),
//! K1 = 0.01, K2 = 0.03, population (not sample) statistics, and the mean of the SSIM map
//! over channels and positions per image. (skimage's `gaussian_weights=True` differs at the
//! borders: it reflect-pads and then crops.) Computations run in f64.

use tch::{Kind, Tensor};

use crate::error::{MetricsError, Result};

/// SSIM window parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SsimConfig {
    pub window: i64,
    pub sigma: f64,
    pub k1: f64,
    pub k2: f64,
}

impl Default for SsimConfig {
    fn default() -> Self {
        SsimConfig {
            window: 11,
            sigma: 1.5,
            k1: 0.01,
            k2: 0.03,
        }
    }
}

fn check_pair(x: &Tensor, y: &Tensor, data_range: f64) -> Result<()> {
    let (sx, sy) = (x.size(), y.size());
    if sx.len() != 4 || sx != sy {
        return Err(MetricsError::Mismatch(format!(
            "image metrics need two N x C x H x W batches of equal shape, got {sx:?} and {sy:?}"
        )));
    }
    if !(data_range.is_finite() && data_range > 0.0) {
        return Err(MetricsError::InvalidParam(format!(
            "data_range must be a positive number, got {data_range}"
        )));
    }
    Ok(())
}

/// PSNR in dB per image: `10 log10(L² / MSE)` with `L = data_range`; `+inf` for identical images.
pub fn psnr(x: &Tensor, y: &Tensor, data_range: f64) -> Result<Vec<f64>> {
    check_pair(x, y, data_range)?;
    let diff = x.to_kind(Kind::Double) - y.to_kind(Kind::Double);
    let mse = diff
        .square()
        .mean_dim([1i64, 2, 3].as_slice(), false, Kind::Double);
    let mse: Vec<f64> = Vec::<f64>::try_from(&mse)?;
    Ok(mse
        .into_iter()
        .map(|m| 10.0 * (data_range * data_range / m).log10())
        .collect())
}

/// The normalised 1-D Gaussian window.
pub fn gaussian_window(size: i64, sigma: f64) -> Vec<f64> {
    let c = (size - 1) as f64 / 2.0;
    let g: Vec<f64> = (0..size)
        .map(|i| (-((i as f64 - c).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = g.iter().sum();
    g.into_iter().map(|v| v / s).collect()
}

/// SSIM per image (mean of the SSIM map over channels and valid positions).
pub fn ssim(x: &Tensor, y: &Tensor, data_range: f64, cfg: &SsimConfig) -> Result<Vec<f64>> {
    check_pair(x, y, data_range)?;
    let s = x.size();
    let (c, h, w) = (s[1], s[2], s[3]);
    if cfg.window < 1 || cfg.window % 2 == 0 || cfg.sigma.is_nan() || cfg.sigma <= 0.0 {
        return Err(MetricsError::InvalidParam(format!(
            "SSIM window must be odd and >= 1 with sigma > 0, got window {} sigma {}",
            cfg.window, cfg.sigma
        )));
    }
    if h < cfg.window || w < cfg.window {
        return Err(MetricsError::InvalidParam(format!(
            "SSIM window {} is larger than the {h}x{w} images",
            cfg.window
        )));
    }
    let device = x.device();
    let g = Tensor::from_slice(&gaussian_window(cfg.window, cfg.sigma))
        .to_device(device)
        .to_kind(Kind::Double);
    let gh = g.view([1, 1, cfg.window, 1]).repeat([c, 1, 1, 1]);
    let gw = g.view([1, 1, 1, cfg.window]).repeat([c, 1, 1, 1]);
    let filt = |t: &Tensor| {
        t.conv2d(&gh, None::<Tensor>, [1, 1], [0, 0], [1, 1], c)
            .conv2d(&gw, None::<Tensor>, [1, 1], [0, 0], [1, 1], c)
    };
    let x = x.to_kind(Kind::Double);
    let y = y.to_device(device).to_kind(Kind::Double);
    let c1 = (cfg.k1 * data_range).powi(2);
    let c2 = (cfg.k2 * data_range).powi(2);
    let mu1 = filt(&x);
    let mu2 = filt(&y);
    let mu1_sq = mu1.square();
    let mu2_sq = mu2.square();
    let mu12 = &mu1 * &mu2;
    let s11 = filt(&(&x * &x)) - &mu1_sq;
    let s22 = filt(&(&y * &y)) - &mu2_sq;
    let s12 = filt(&(&x * &y)) - &mu12;
    let cs = (s12 * 2.0 + c2) / (s11 + s22 + c2);
    let map = (mu12 * 2.0 + c1) / (mu1_sq + mu2_sq + c1) * cs;
    let per_image = map.mean_dim([1i64, 2, 3].as_slice(), false, Kind::Double);
    Ok(Vec::<f64>::try_from(
        &per_image.to_device(tch::Device::Cpu),
    )?)
}

/// Mean of a per-image metric (the value reported for a test split).
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn identical_images() {
        tch::manual_seed(0);
        let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let s = ssim(&x, &x, 1.0, &SsimConfig::default()).unwrap();
        // Identical float64 windows: 1 up to the rounding of 121-term sums and the mean.
        let within = 4.0 * ugc_tolerance::gamma(121 + 3 * 16 * 16, ugc_tolerance::Precision::F64);
        assert!(s.iter().all(|v| (v - 1.0).abs() <= within), "{s:?}");
        assert!(psnr(&x, &x, 1.0).unwrap()[0].is_infinite());
    }

    #[test]
    fn psnr_of_constant_offset() {
        let x = Tensor::zeros([1, 1, 4, 4], (Kind::Float, Device::Cpu));
        let y = Tensor::ones([1, 1, 4, 4], (Kind::Float, Device::Cpu)) * 0.1;
        let p = psnr(&x, &y, 1.0).unwrap()[0];
        // 0.1 is not a float32: its relative error u doubles in the squared error, and
        // 10·log10 turns a relative error e into (10 / ln 10)·e dB.
        let within = 10.0 / std::f64::consts::LN_10 * 3.0 * ugc_tolerance::U_F32;
        assert!((p - 20.0).abs() <= within, "{p}");
    }

    #[test]
    fn rejects_small_or_mismatched() {
        let x = Tensor::zeros([1, 1, 8, 8], (Kind::Float, Device::Cpu));
        assert!(ssim(&x, &x, 1.0, &SsimConfig::default()).is_err());
        let y = Tensor::zeros([1, 1, 8, 9], (Kind::Float, Device::Cpu));
        assert!(psnr(&x, &y, 1.0).is_err());
        assert!(psnr(&x, &x, 0.0).is_err());
    }
}
