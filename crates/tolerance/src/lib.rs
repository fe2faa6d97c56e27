//! Tolerances for comparing floating-point results, derived from the computation instead
//! of tuned to one CPU.
//!
//! Two evaluations of the same network differ only in rounding when they sum in another
//! order: oneDNN picks AVX2, AVX-512 or AMX kernels by CPU, each with its own blocking, so a
//! fixture computed on one machine and checked on another never matches bit for bit. A
//! tolerance that is the difference observed on one machine fails on the next. This crate
//! bounds the difference from what the computation is, for any summation order:
//!
//! * A sum of `K` products, in any order, has an absolute error at most `γ_K · Σ|aᵢbᵢ|`
//!   with `γ_K = K·u / (1 − K·u)` (Higham, *Accuracy and Stability of Numerical
//!   Algorithms*, 2nd ed., eq. 3.5 and Lemma 3.1). Blocked or pairwise kernels do better;
//!   the bound holds for all of them, which is the point.
//! * Measured against the scale of the result rather than against `Σ|aᵢbᵢ|`, the error can
//!   be larger by the cancellation ratio `Σ|aᵢbᵢ| / |Σaᵢbᵢ|`, which for zero-mean operands
//!   (random weights, normalised activations) is about `√K`. Normalisation layers rescale
//!   activations to unit size, so relative errors, not absolute ones, are what travels.
//! * Relative errors of the layers on a path add to first order.
//!
//! Hence [`ErrorBudget`]: the layers of the deepest path listed with their fan-in, each
//! adding `√K · γ_K` (dot products) or `γ_K` (sums that do not cancel, such as a norm's
//! statistics), times the scale of the result. It is a worst case: the
//! observed differences are orders of magnitude smaller, and a genuine implementation
//! difference (a wrong padding mode, a swapped tensor, a missing bias) changes outputs by far
//! more than the float64 bound. That is why the fixture checks compare in float64 against a
//! float64 reference, where the bound is about `1e-11` and still discriminates, and check the
//! float32 path separately against the same reference.

/// Unit roundoff of IEEE binary32: half the distance from 1 to the next float.
pub const U_F32: f64 = 5.960_464_477_539_063e-8; // 2^-24
/// Unit roundoff of IEEE binary64.
pub const U_F64: f64 = 1.110_223_024_625_156_5e-16; // 2^-53

/// The confidence parameter λ of [`ErrorBudget::bound_probabilistic`]: a dot product of
/// `K` terms exceeds `λ·√K·u·Σ|aᵢbᵢ|` with probability at most `2K·exp(−λ²(1−u)²/2)`
/// (Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019, Thm 2.4), which for λ = 10 and
/// `K ≤ 10⁵` is below `4·10⁻¹⁷` per dot product: under `10⁻⁸` for the `10⁸` dot products
/// of the largest network a test runs.
pub const LAMBDA: f64 = 10.0;

/// Which floating-point format a computation ran in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F64,
}

impl Precision {
    /// The unit roundoff `u` of the format.
    pub fn unit_roundoff(self) -> f64 {
        match self {
            Precision::F32 => U_F32,
            Precision::F64 => U_F64,
        }
    }
}

/// `γ_K = K·u / (1 − K·u)`: the bound on the relative error of a sum of `K` products in any
/// order (Higham, Lemma 3.1). Infinite when `K·u ≥ 1`, where no bound exists.
pub fn gamma(terms: u64, precision: Precision) -> f64 {
    let ku = terms as f64 * precision.unit_roundoff();
    if ku >= 1.0 {
        f64::INFINITY
    } else {
        ku / (1.0 - ku)
    }
}

/// The accumulations of a computation, as far as its rounding error is concerned: each
/// one adds its worst-case relative error, measured against the scale of its result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ErrorBudget {
    /// `(terms, count, cancels)`: `count` accumulations of `terms` terms each.
    parts: Vec<(u64, u32, bool)>,
}

impl ErrorBudget {
    pub fn new() -> ErrorBudget {
        ErrorBudget::default()
    }

    /// `count` dot products of `fan_in` zero-mean terms each: a convolution
    /// (`C_in / groups · k_h · k_w`), a transposed convolution (`C_in · k_h · k_w / stride²`,
    /// or the same as the convolution for an upper bound), a linear layer. Each adds
    /// `√K · γ_K`: `γ_K` for the summation, `√K` for the cancellation of zero-mean terms.
    pub fn products(mut self, fan_in: u64, count: u32) -> ErrorBudget {
        self.parts.push((fan_in, count, true));
        self
    }

    /// `count` sums of `terms` terms that do not cancel against the result's scale: the mean
    /// and variance of a norm over `N·H·W` values (two sums each: pass `2 · layers`), an
    /// average pool. Each adds `γ_K`.
    pub fn sums(mut self, terms: u64, count: u32) -> ErrorBudget {
        self.parts.push((terms, count, false));
        self
    }

    /// `depth` layers of dot products of at most `max_fan_in` terms: an upper bound when the
    /// layers are not listed one by one.
    pub fn uniform(depth: u32, max_fan_in: u64) -> ErrorBudget {
        ErrorBudget::new().products(max_fan_in, depth)
    }

    /// The relative error of the whole computation: the per-layer errors add to first order.
    /// `per_sum(K)` is the relative error bound of one sum of `K` terms.
    fn relative_with(&self, per_sum: impl Fn(u64) -> f64) -> f64 {
        self.parts
            .iter()
            .map(|&(k, count, cancels)| {
                let k = k.max(1);
                let cancellation = if cancels { (k as f64).sqrt() } else { 1.0 };
                f64::from(count) * per_sum(k) * cancellation
            })
            .sum()
    }

    /// The worst-case relative error of the whole computation (`γ_K` per sum).
    pub fn relative(&self, precision: Precision) -> f64 {
        self.relative_with(|k| gamma(k, precision))
    }

    /// The largest difference allowed between two evaluations of the computation in
    /// `precision` (or one evaluation and a float64 reference), for results of magnitude
    /// `scale` (the largest absolute value of the reference): `2 · scale · relative`, the 2
    /// for the two rounded sides of the comparison.
    pub fn bound(&self, precision: Precision, scale: f64) -> f64 {
        2.0 * scale.abs().max(f64::MIN_POSITIVE) * self.relative(precision)
    }

    /// As [`ErrorBudget::bound`], with each sum's `γ_K = K·u` replaced by the probabilistic
    /// `λ·√K·u` ([`LAMBDA`]): rounding errors modelled as independent and mean-zero, the
    /// standard analysis for deep networks, where the worst case exceeds the result itself
    /// (47 layers of up to 4032 terms in the FID Inception). It holds except with the
    /// probability stated at [`LAMBDA`].
    pub fn bound_probabilistic(&self, precision: Precision, scale: f64) -> f64 {
        let u = precision.unit_roundoff();
        let relative = self.relative_with(|k| LAMBDA * (k as f64).sqrt() * u);
        2.0 * scale.abs().max(f64::MIN_POSITIVE) * relative
    }
}

/// Largest absolute elementwise difference of two equally long slices (NaN if any element
/// is NaN, so that NaN never passes a `<=` check).
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "compared slices differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m: f64, d| {
            if d.is_nan() || m.is_nan() {
                f64::NAN
            } else {
                m.max(d)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_roundoffs_are_half_an_ulp_of_one() {
        assert_eq!(U_F32, f64::from(f32::EPSILON) / 2.0);
        assert_eq!(U_F64, f64::EPSILON / 2.0);
    }

    #[test]
    fn gamma_bounds_the_error_of_a_naive_f32_sum() {
        // Summing 0.1 ten thousand times in f32 left to right: the worst order there is for
        // equal terms. Its error must sit inside γ_K · Σ|x|.
        let k = 10_000u64;
        let mut s = 0f32;
        for _ in 0..k {
            s += 0.1f32;
        }
        let exact = f64::from(0.1f32) * k as f64;
        let err = (f64::from(s) - exact).abs();
        assert!(
            err > 0.0,
            "the sum must round somewhere for the check to mean anything"
        );
        assert!(err <= gamma(k, Precision::F32) * exact, "{err}");
    }

    #[test]
    fn gamma_has_no_bound_past_one_over_u() {
        assert!(gamma(1 << 24, Precision::F32).is_infinite());
        assert!(gamma(1 << 24, Precision::F64).is_finite());
    }

    #[test]
    fn bound_grows_with_depth_fan_in_scale_and_precision() {
        let n = ErrorBudget::uniform(10, 400);
        let b = n.bound(Precision::F32, 1.0);
        assert!(ErrorBudget::uniform(20, 400).bound(Precision::F32, 1.0) > b);
        assert!(ErrorBudget::uniform(10, 800).bound(Precision::F32, 1.0) > b);
        assert!(n.bound(Precision::F32, 2.0) > b);
        assert!(n.bound(Precision::F64, 1.0) < b * 1e-8);
        // Sums that do not cancel cost less than dot products of the same length.
        let sums = ErrorBudget::new().sums(400, 10).bound(Precision::F32, 1.0);
        assert!(sums < b && sums > 0.0);
    }

    #[test]
    fn bound_covers_a_random_f32_dot_product_in_any_order() {
        // Zero-mean terms: forward and reverse order, against the exact f64 value.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let k = 4096;
        let (a, b): (Vec<f32>, Vec<f32>) = (0..k).map(|_| (next(), next())).unzip();
        let exact: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let fwd: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let rev: f32 = a.iter().zip(&b).rev().map(|(x, y)| x * y).sum();
        let scale = exact.abs();
        let bound = ErrorBudget::new()
            .products(k as u64, 1)
            .bound(Precision::F32, scale);
        for got in [fwd, rev] {
            assert!((f64::from(got) - exact).abs() <= bound, "{got} vs {exact}");
        }
    }

    #[test]
    fn probabilistic_bound_is_below_the_worst_case_past_lambda_squared_terms() {
        let deep = ErrorBudget::new().products(4032, 47);
        let worst = deep.bound(Precision::F32, 1.0);
        let likely = deep.bound_probabilistic(Precision::F32, 1.0);
        assert!(likely < worst / 5.0, "{likely} vs {worst}");
        // For K < λ² the worst case is the smaller one; both stay valid.
        let short = ErrorBudget::new().products(50, 1);
        assert!(short.bound(Precision::F32, 1.0) < short.bound_probabilistic(Precision::F32, 1.0));
    }

    #[test]
    fn max_abs_diff_propagates_nan() {
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 2.0]), 0.5);
        assert!(max_abs_diff(&[f64::NAN, 2.0], &[1.0, 2.0]).is_nan());
        assert!(max_abs_diff(&[1.0, f64::NAN], &[1.0, 2.0]).is_nan());
    }
}
