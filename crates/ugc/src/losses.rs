//! Losses of the method (DESIGN §2): hinge GAN, L1 to ground truth, and OMGD's student
//! losses against a teacher — SSIM, Gram-matrix L1 and feature L1 on perceptual features,
//! and total variation — combined with [`DistillWeights`].
//!
//! Images are generator outputs in [-1, 1]. Every function returns a scalar tensor that
//! carries gradients to its inputs.

use tch::{Kind, Tensor};

use crate::error::MethodError;

/// The kind reductions accumulate in: float32 (also for bf16/f16 under autocast), or
/// float64 for float64 inputs, so that the losses can be checked against float64
/// references without float32 rounding.
fn acc(t: &Tensor) -> Kind {
    match t.kind() {
        Kind::Double => Kind::Double,
        _ => Kind::Float,
    }
}

/// Hinge loss of the discriminator for one prediction map: real side `relu(1 - D(real))`.
pub fn hinge_d_real(pred: &Tensor) -> Tensor {
    (pred.neg() + 1.0).relu().mean(acc(pred))
}

/// Hinge loss of the discriminator for one prediction map: fake side `relu(1 + D(fake))`.
pub fn hinge_d_fake(pred: &Tensor) -> Tensor {
    (pred + 1.0).relu().mean(acc(pred))
}

/// Hinge loss of the generator for one prediction map: `-mean(D(fake))`.
pub fn hinge_g(pred: &Tensor) -> Tensor {
    -pred.mean(acc(pred))
}

/// The prediction maps of a discriminator output (the last element of every scale).
pub fn predictions(d_out: &[Vec<Tensor>]) -> Vec<&Tensor> {
    d_out.iter().filter_map(|s| s.last()).collect()
}

/// Mean of `f` over the scales of a (multi-scale) discriminator output; the per-scale
/// average as in pix2pixHD/SPADE's `GANLoss` (sum over scales / number of scales).
pub fn over_scales(d_out: &[Vec<Tensor>], f: impl Fn(&Tensor) -> Tensor) -> Tensor {
    let preds = predictions(d_out);
    let n = preds.len().max(1) as f64;
    let mut total: Option<Tensor> = None;
    for p in preds {
        let l = f(p);
        total = Some(match total {
            None => l,
            Some(t) => t + l,
        });
    }
    total.map(|t| t / n).unwrap_or_else(|| Tensor::from(0f32))
}

/// Mean absolute error.
pub fn l1(a: &Tensor, b: &Tensor) -> Tensor {
    (a - b).abs().mean(acc(a))
}

/// Size of the SSIM gaussian window and its standard deviation (Wang et al. 2004, as in
/// `pytorch_ssim`, which OMGD uses).
pub const SSIM_WINDOW: i64 = 11;
pub const SSIM_SIGMA: f64 = 1.5;

/// The normalised 1-D gaussian of the SSIM window.
fn gaussian_1d(size: i64, sigma: f64) -> Vec<f64> {
    let c = (size / 2) as f64;
    let g: Vec<f64> = (0..size)
        .map(|i| (-((i as f64 - c).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = g.iter().sum();
    g.into_iter().map(|v| v / s).collect()
}

/// Mean SSIM of two `[N, C, H, W]` images in [-1, 1], computed on `(x + 1) / 2` (data range
/// 1, `C1 = 0.01^2`, `C2 = 0.03^2`) with an 11x11 gaussian window (sigma 1.5) applied per
/// channel with zero padding of 5 ("same" size), as `pytorch_ssim.ssim`.
pub fn ssim(a: &Tensor, b: &Tensor) -> Result<Tensor, MethodError> {
    let (sa, sb) = (a.size(), b.size());
    if sa.len() != 4 || sa != sb {
        return Err(MethodError::Numeric(format!(
            "ssim needs two [N, C, H, W] images of the same shape, got {sa:?} and {sb:?}"
        )));
    }
    let c = sa[1];
    let g = Tensor::from_slice(&gaussian_1d(SSIM_WINDOW, SSIM_SIGMA))
        .to_kind(acc(a))
        .to_device(a.device());
    let w2 = g.unsqueeze(1).matmul(&g.unsqueeze(0)); // [11, 11]
    let window = w2
        .expand([c, 1, SSIM_WINDOW, SSIM_WINDOW], false)
        .contiguous()
        .to_kind(a.kind());
    let pad = SSIM_WINDOW / 2;
    let blur = |x: &Tensor| x.conv2d(&window, None::<Tensor>, [1, 1], [pad, pad], [1, 1], c);
    let x = (a + 1.0) / 2.0;
    let y = (b + 1.0) / 2.0;
    let mu_x = blur(&x);
    let mu_y = blur(&y);
    let mu_x2 = &mu_x * &mu_x;
    let mu_y2 = &mu_y * &mu_y;
    let mu_xy = &mu_x * &mu_y;
    let s_x = blur(&(&x * &x)) - &mu_x2;
    let s_y = blur(&(&y * &y)) - &mu_y2;
    let s_xy = blur(&(&x * &y)) - &mu_xy;
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let num = (mu_xy * 2.0 + c1) * (s_xy * 2.0 + c2);
    let den = (mu_x2 + mu_y2 + c1) * (s_x + s_y + c2);
    Ok((num / den).mean(acc(a)))
}

/// Gram matrix of a `[N, C, H, W]` feature map, normalised by `C * H * W`: `[N, C, C]`.
pub fn gram(f: &Tensor) -> Tensor {
    let s = f.size();
    let (n, c, hw) = (s[0], s[1], s[2] * s[3]);
    let v = f.reshape([n, c, hw]);
    v.bmm(&v.transpose(1, 2)) / ((c * hw) as f64)
}

/// Sum over layers of the mean absolute difference of Gram matrices (OMGD's style loss).
pub fn gram_l1(fa: &[Tensor], fb: &[Tensor]) -> Tensor {
    sum_pairs(fa, fb, |a, b| l1(&gram(a), &gram(b)))
}

/// Sum over layers of the mean absolute feature difference (OMGD's content loss).
pub fn feature_l1(fa: &[Tensor], fb: &[Tensor]) -> Tensor {
    sum_pairs(fa, fb, l1)
}

fn sum_pairs(fa: &[Tensor], fb: &[Tensor], f: impl Fn(&Tensor, &Tensor) -> Tensor) -> Tensor {
    let mut total: Option<Tensor> = None;
    for (a, b) in fa.iter().zip(fb) {
        let l = f(a, b);
        total = Some(match total {
            None => l,
            Some(t) => t + l,
        });
    }
    total.unwrap_or_else(|| Tensor::from(0f32))
}

/// Total variation: the *sum* of absolute differences between horizontal and vertical
/// neighbours (OMGD's `TVLoss`, hence its tiny 1e-5 weight).
pub fn total_variation(x: &Tensor) -> Tensor {
    let s = x.size();
    let (h, w) = (s[2], s[3]);
    let dh = x.narrow(2, 1, h - 1) - x.narrow(2, 0, h - 1);
    let dw = x.narrow(3, 1, w - 1) - x.narrow(3, 0, w - 1);
    dh.abs().sum(acc(x)) + dw.abs().sum(acc(x))
}

/// Weights of the OMGD student loss against one teacher: a stage parameter, so it lives
/// with the kinds' typed parameters.
pub use ugc_kinds::common::DistillWeights;

/// The weighted terms of one student-vs-teacher loss (values for logging, `total` for
/// backward).
pub struct DistillTerms {
    pub ssim: Tensor,
    pub style: Tensor,
    pub feature: Tensor,
    pub tv: Tensor,
    pub total: Tensor,
}

/// OMGD's student loss against one teacher output: `ssim*(1 - SSIM) + style*GramL1 +
/// feature*FeatL1 + tv*TV(student)`. `fs`/`ft` are the perceptual features of the student
/// and the teacher outputs (the teacher's detached by the caller).
pub fn distill_loss(
    student: &Tensor,
    teacher: &Tensor,
    fs: &[Tensor],
    ft: &[Tensor],
    w: &DistillWeights,
) -> Result<DistillTerms, MethodError> {
    if fs.len() != ft.len() {
        return Err(MethodError::Numeric(format!(
            "distill_loss: {} student feature maps vs {} teacher feature maps",
            fs.len(),
            ft.len()
        )));
    }
    let ssim_t = (ssim(student, teacher)?.neg() + 1.0) * w.ssim;
    let style = gram_l1(fs, ft) * w.style;
    let feature = feature_l1(fs, ft) * w.feature;
    let tv = total_variation(student) * w.tv;
    let total = &ssim_t + &style + &feature + &tv;
    Ok(DistillTerms {
        ssim: ssim_t,
        style,
        feature,
        tv,
        total,
    })
}
