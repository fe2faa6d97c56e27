//! Fréchet distance between Gaussians fitted to two feature sets (the FID formula).
//!
//! The reference (pytorch-fid) computes `Tr sqrtm(S1 S2)` with `scipy.linalg.sqrtm`, retries
//! with `eps * I` added to both covariances when the square root is not finite, and drops a
//! negligible imaginary part. We compute the same trace through symmetric eigendecompositions,
//! which is stable for the rank-deficient covariances of small samples:
//! `S1 S2` is similar to `M = S1^½ S2 S1^½` (symmetric PSD), so `Tr sqrtm(S1 S2) = Σ √λ(M)`.
//! Tiny negative eigenvalues of `M` are rounding noise (scipy's tiny imaginary part); they are
//! clamped to zero, and a significant negative one is an error as in the reference.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{MetricsError, Result};
use crate::npy::read_npy;

/// pytorch-fid's default diagonal offset for the near-singular fallback.
pub const DEFAULT_EPS: f64 = 1e-6;

/// Mean and covariance (ddof = 1, as `np.cov(rowvar=False)`) of a feature set, in f64 on CPU.
#[derive(Debug)]
pub struct GaussianStats {
    /// `[D]`
    pub mu: Tensor,
    /// `[D, D]`
    pub sigma: Tensor,
    /// Number of feature vectors the statistics were estimated from.
    pub n: usize,
}

impl GaussianStats {
    /// Fits the statistics of an `N x D` feature matrix (any float kind, any device).
    pub fn from_features(features: &Tensor) -> Result<Self> {
        let size = features.size();
        let [n, d] = size.as_slice() else {
            return Err(MetricsError::InvalidParam(format!(
                "features must be an N x D matrix, got shape {size:?}"
            )));
        };
        if *n < 2 || *d < 1 {
            return Err(MetricsError::InvalidParam(format!(
                "need at least 2 feature vectors of dimension >= 1 for a covariance, got {n} x {d}"
            )));
        }
        let x = features.to_device(Device::Cpu).to_kind(Kind::Double);
        if !bool::try_from(x.isfinite().all())? {
            return Err(MetricsError::Numerical(
                "features contain NaN or infinite values".into(),
            ));
        }
        let mu = x.mean_dim(0, false, Kind::Double);
        let xc = &x - mu.unsqueeze(0);
        let sigma = xc.transpose(0, 1).matmul(&xc) / ((*n - 1) as f64);
        Ok(GaussianStats {
            mu,
            sigma,
            n: *n as usize,
        })
    }

    /// Builds statistics from a precomputed mean `[D]` and covariance `[D, D]`.
    pub fn new(mu: Tensor, sigma: Tensor, n: usize) -> Result<Self> {
        let d = mu.size();
        let s = sigma.size();
        if d.len() != 1 || s != [d[0], d[0]] {
            return Err(MetricsError::Mismatch(format!(
                "mean of shape {d:?} needs a square covariance of the same size, got {s:?}"
            )));
        }
        Ok(GaussianStats {
            mu: mu.to_device(Device::Cpu).to_kind(Kind::Double),
            sigma: sigma.to_device(Device::Cpu).to_kind(Kind::Double),
            n,
        })
    }

    /// Feature dimension D.
    pub fn dim(&self) -> i64 {
        self.mu.size()[0]
    }
}

/// The value and how it was obtained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrechetResult {
    pub value: f64,
    /// True when the first attempt was not finite and `eps * I` was added to both
    /// covariances (the reference's fallback for a near-singular product).
    pub offset_applied: bool,
}

/// `||mu1 - mu2||^2 + Tr S1 + Tr S2 - 2 Tr sqrtm(S1 S2)`, with the reference's fallback.
pub fn frechet_distance(s1: &GaussianStats, s2: &GaussianStats, eps: f64) -> Result<FrechetResult> {
    if s1.dim() != s2.dim() {
        return Err(MetricsError::Mismatch(format!(
            "feature dimensions differ: {} vs {}",
            s1.dim(),
            s2.dim()
        )));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(MetricsError::InvalidParam(format!(
            "eps must be a finite non-negative number, got {eps}"
        )));
    }
    let first = frechet_with_offset(s1, s2, 0.0)?;
    if first.is_finite() {
        return Ok(FrechetResult {
            value: first,
            offset_applied: false,
        });
    }
    let second = frechet_with_offset(s1, s2, eps)?;
    if !second.is_finite() {
        return Err(MetricsError::Numerical(format!(
            "Fréchet distance is not finite even with {eps} added to the covariance diagonals"
        )));
    }
    Ok(FrechetResult {
        value: second,
        offset_applied: true,
    })
}

/// The distance with `offset * I` added to both covariances (0 for the plain formula).
/// Returns a non-finite value (not an error) when the eigensolver breaks down, so the
/// caller can apply the fallback.
pub fn frechet_with_offset(s1: &GaussianStats, s2: &GaussianStats, offset: f64) -> Result<f64> {
    let d = s1.dim();
    let diff = &s1.mu - &s2.mu;
    let diff_sq = f64::try_from(diff.dot(&diff))?;
    let eye = Tensor::eye(d, (Kind::Double, Device::Cpu)) * offset;
    let a = &s1.sigma + &eye;
    let b = &s2.sigma + &eye;
    let tr_a = f64::try_from(a.trace())?;
    let tr_b = f64::try_from(b.trace())?;
    let tr_covmean = trace_sqrt_product(&a, &b)?;
    Ok(diff_sq + tr_a + tr_b - 2.0 * tr_covmean)
}

/// `Tr sqrtm(A B)` for symmetric PSD `A`, `B` (NaN when the eigensolver fails).
pub fn trace_sqrt_product(a: &Tensor, b: &Tensor) -> Result<f64> {
    let sym = |m: &Tensor| (m + m.transpose(0, 1)) * 0.5;
    let a = sym(a);
    let b = sym(b);
    if !bool::try_from(a.isfinite().all())? || !bool::try_from(b.isfinite().all())? {
        return Ok(f64::NAN);
    }
    let (w, v) = match a.f_linalg_eigh("L") {
        Ok(x) => x,
        Err(_) => return Ok(f64::NAN),
    };
    let root_a = v
        .matmul(&Tensor::diag_embed(&w.clamp_min(0.0).sqrt(), 0, -2, -1))
        .matmul(&v.transpose(0, 1));
    let m = sym(&root_a.matmul(&b).matmul(&root_a));
    let ev = match m.f_linalg_eigvalsh("L") {
        Ok(x) => x,
        Err(_) => return Ok(f64::NAN),
    };
    let ev: Vec<f64> = Vec::<f64>::try_from(&ev)?;
    let max = ev.iter().cloned().fold(0.0f64, f64::max);
    let min = ev.iter().cloned().fold(f64::INFINITY, f64::min);
    // The reference refuses an imaginary part above 1e-3 on the diagonal; here the
    // imaginary part of sqrt(λ) for λ < 0. Rounding noise scales with the largest eigenvalue.
    if min < 0.0 && (-min).sqrt() > 1e-3 && -min > 1e-10 * max {
        return Err(MetricsError::Numerical(format!(
            "covariance product has a significant negative eigenvalue {min:e} \
             (imaginary component {:e})",
            (-min).sqrt()
        )));
    }
    Ok(ev.iter().map(|&x| x.max(0.0).sqrt()).sum())
}

/// Reads an `N x D` `.npy` feature file into an f64 tensor.
pub fn read_features(path: &Path) -> Result<Tensor> {
    let arr = read_npy(path)?;
    let (n, d) = arr.dims2(path)?;
    if arr.data.iter().any(|x| !x.is_finite()) {
        return Err(MetricsError::Npy {
            path: path.to_path_buf(),
            reason: "contains NaN or infinite values".into(),
        });
    }
    Ok(Tensor::from_slice(&arr.data).reshape([n as i64, d as i64]))
}

/// Fréchet distance between two `N x D` feature files (`ugc-pipe metrics frechet A B`).
pub fn frechet_from_npy(a: &Path, b: &Path) -> Result<f64> {
    let fa = read_features(a)?;
    let fb = read_features(b)?;
    let (da, db) = (fa.size()[1], fb.size()[1]);
    if da != db {
        return Err(MetricsError::Mismatch(format!(
            "{} has feature dimension {da}, {} has {db}",
            a.display(),
            b.display()
        )));
    }
    let named = |p: &Path, t: &Tensor| {
        GaussianStats::from_features(t).map_err(|e| match e {
            MetricsError::InvalidParam(m) => {
                MetricsError::InvalidParam(format!("{}: {m}", p.display()))
            }
            other => other,
        })
    };
    let sa = named(a, &fa)?;
    let sb = named(b, &fb)?;
    Ok(frechet_distance(&sa, &sb, DEFAULT_EPS)?.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Float64 rounding of a Fréchet distance of `dim`-d statistics with traces summing to
    /// `traces`: the matrix square root moves an eigenvalue `λ` by at most `√(γ_D·‖Σ‖)`
    /// (the bound at a singular matrix), and the trace adds `D` of them.
    fn within(dim: u64, traces: f64) -> f64 {
        let g = ugc_tolerance::gamma(dim, ugc_tolerance::Precision::F64);
        2.0 * dim as f64 * (g * traces).sqrt()
    }

    fn traces(a: &GaussianStats, b: &GaussianStats) -> f64 {
        f64::try_from(a.sigma.trace() + b.sigma.trace()).unwrap()
    }

    #[test]
    fn identical_sets_have_zero_distance() {
        tch::manual_seed(0);
        let x = Tensor::randn([64, 8], (Kind::Double, Device::Cpu));
        let s = GaussianStats::from_features(&x).unwrap();
        let r = frechet_distance(&s, &s, DEFAULT_EPS).unwrap();
        assert!(r.value.abs() <= within(8, traces(&s, &s)), "{r:?}");
        assert!(!r.offset_applied);
    }

    #[test]
    fn shifted_mean_adds_squared_shift() {
        tch::manual_seed(1);
        let x = Tensor::randn([128, 4], (Kind::Double, Device::Cpu));
        let y = &x + 2.0;
        let sx = GaussianStats::from_features(&x).unwrap();
        let sy = GaussianStats::from_features(&y).unwrap();
        let r = frechet_distance(&sx, &sy, DEFAULT_EPS).unwrap();
        assert!(
            (r.value - 16.0).abs() <= within(4, traces(&sx, &sy)),
            "{r:?}"
        );
    }

    #[test]
    fn rejects_mismatched_dims_and_tiny_sets() {
        let x = Tensor::zeros([1, 4], (Kind::Double, Device::Cpu));
        assert!(GaussianStats::from_features(&x).is_err());
        let a = GaussianStats::from_features(&Tensor::randn([5, 3], (Kind::Double, Device::Cpu)))
            .unwrap();
        let b = GaussianStats::from_features(&Tensor::randn([5, 4], (Kind::Double, Device::Cpu)))
            .unwrap();
        assert!(matches!(
            frechet_distance(&a, &b, DEFAULT_EPS),
            Err(MetricsError::Mismatch(_))
        ));
    }
}
