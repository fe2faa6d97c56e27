//! Pillow's bicubic resize of 8-bit images, reproduced exactly.
//!
//! GAN-compression's Cityscapes evaluation resizes each generated image to 2048x1024 with
//! `PIL.Image.resize(..., Image.CUBIC)` before DRN sees it. Pillow's bicubic differs from
//! torch's (`a = -0.5` instead of `-0.75`, antialiased support when shrinking, 22-bit fixed
//! point coefficients, and rounding to 8 bits between the horizontal and vertical passes),
//! so the evaluator reproduces Pillow's `Resample.c` rather than calling libtorch.

use tch::{Device, Kind, Tensor};

use crate::error::{MetricsError, Result};

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output position: first input index and fixed-point weights (Pillow's
/// `precompute_coeffs` + `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = w.iter().sum();
            let k = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    let scaled = v * (1u64 << PRECISION_BITS) as f64;
                    if v < 0.0 {
                        (scaled - 0.5) as i64
                    } else {
                        (scaled + 0.5) as i64
                    }
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes one `h x w` 8-bit plane to `out_h x out_w` exactly as Pillow's bicubic does
/// (horizontal pass first, rounded to 8 bits, then vertical).
pub fn pil_bicubic_plane(src: &[u8], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<u8> {
    assert_eq!(src.len(), h * w, "plane size");
    let half = 1i64 << (PRECISION_BITS - 1);
    let tmp: Vec<u8> = if out_w != w {
        let cx = coefficients(w, out_w);
        let mut t = vec![0u8; h * out_w];
        for y in 0..h {
            let row = &src[y * w..(y + 1) * w];
            for (xx, (xmin, k)) in cx.iter().enumerate() {
                let mut ss = half;
                for (i, kv) in k.iter().enumerate() {
                    ss += row[xmin + i] as i64 * kv;
                }
                t[y * out_w + xx] = clip8(ss);
            }
        }
        t
    } else {
        src.to_vec()
    };
    if out_h == h {
        return tmp;
    }
    let cy = coefficients(h, out_h);
    let mut out = vec![0u8; out_h * out_w];
    for (yy, (ymin, k)) in cy.iter().enumerate() {
        for xx in 0..out_w {
            let mut ss = half;
            for (i, kv) in k.iter().enumerate() {
                ss += tmp[(ymin + i) * out_w + xx] as i64 * kv;
            }
            out[yy * out_w + xx] = clip8(ss);
        }
    }
    out
}

/// Resizes `N x C x H x W` images holding 8-bit values scaled to [0, 1] to `size`
/// (height, width) with Pillow's bicubic filter; returns float values `k / 255` on the CPU.
pub fn pil_bicubic_resize(images: &Tensor, size: [i64; 2]) -> Result<Tensor> {
    let s = images.size();
    let [n, c, h, w] = s.as_slice() else {
        return Err(MetricsError::InvalidParam(format!(
            "resize needs N x C x H x W images, got {s:?}"
        )));
    };
    if size[0] < 1 || size[1] < 1 {
        return Err(MetricsError::InvalidParam(format!(
            "resize target must be positive, got {size:?}"
        )));
    }
    let (h, w) = (*h as usize, *w as usize);
    let (oh, ow) = (size[0] as usize, size[1] as usize);
    let bytes = (images.to_device(Device::Cpu).to_kind(Kind::Float) * 255.0)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .contiguous();
    let bytes: Vec<u8> = Vec::<u8>::try_from(&bytes.flatten(0, -1))?;
    let mut out = Vec::with_capacity((*n * *c) as usize * oh * ow);
    for plane in bytes.chunks_exact(h * w) {
        out.extend(pil_bicubic_plane(plane, h, w, oh, ow));
    }
    Ok(Tensor::from_slice(&out)
        .reshape([*n, *c, size[0], size[1]])
        .to_kind(Kind::Float)
        / 255.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_image_stays_constant_and_identity_is_exact() {
        let src = vec![77u8; 6 * 5];
        assert!(
            pil_bicubic_plane(&src, 6, 5, 13, 11)
                .iter()
                .all(|&v| v == 77)
        );
        assert!(pil_bicubic_plane(&src, 6, 5, 3, 2).iter().all(|&v| v == 77));
        let ramp: Vec<u8> = (0..30).map(|i| (i * 8) as u8).collect();
        assert_eq!(pil_bicubic_plane(&ramp, 6, 5, 6, 5), ramp);
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(4, 9), (9, 4), (256, 1024), (7, 7)] {
            for (_, k) in coefficients(i, o) {
                let s: i64 = k.iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{i}->{o}: {s}"
                );
            }
        }
    }
}
