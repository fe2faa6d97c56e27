//! Pillow's resampling, reproduced exactly: bicubic on 8-bit images and bilinear on
//! 32-bit float images (`Resample.c`).
//!
//! Pillow's filters differ from torch's (bicubic `a = -0.5` instead of `-0.75`, antialiased
//! support when shrinking, 22-bit fixed-point coefficients and rounding to 8 bits between
//! the horizontal and vertical passes for 8-bit images; float64 coefficients and sums with
//! a float32 intermediate for mode `F`), so evaluators that follow a Pillow-based protocol
//! use these rather than libtorch. GAN Compression's Cityscapes mIoU resizes DRN's
//! log-probabilities, one float32 plane per class, with `Image.BILINEAR`
//! ([`pil_bilinear_resize_f32`]).

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

/// Pillow's triangle filter (`bilinear_filter`, support 1).
fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// Per output position: first input index and the normalised float64 weights (Pillow's
/// `precompute_coeffs` for a filter of the given support).
fn float_coefficients(
    in_size: usize,
    out_size: usize,
    support: f64,
    filter: fn(f64) -> f64,
) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = support * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| filter((x as f64 - center + 0.5) * ss))
                .collect();
            // Pillow sums the weights in order, then divides each (when the sum is not 0).
            let total: f64 = w.iter().fold(0.0, |a, &v| a + v);
            let k = w
                .iter()
                .map(|&v| if total != 0.0 { v / total } else { v })
                .collect();
            (xmin, k)
        })
        .collect()
}

/// Per output position: first input index and fixed-point weights (Pillow's
/// `precompute_coeffs` + `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i64>)> {
    float_coefficients(in_size, out_size, 2.0, bicubic)
        .into_iter()
        .map(|(xmin, w)| {
            let k = w
                .iter()
                .map(|&v| {
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

/// Resizes one `h x w` float32 plane to `out_h x out_w` exactly as Pillow's
/// `Image.fromarray(plane).resize((out_w, out_h), Image.BILINEAR)` does on a mode-`F`
/// image: horizontal pass first (skipped when the width is unchanged), products summed in
/// float64 from 0 in tap order and stored as float32, then the vertical pass likewise.
pub fn pil_bilinear_plane_f32(
    src: &[f32],
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert_eq!(src.len(), h * w, "plane size");
    let tmp: Vec<f32> = if out_w != w {
        let cx = float_coefficients(w, out_w, 1.0, bilinear);
        let mut t = vec![0f32; h * out_w];
        for y in 0..h {
            let row = &src[y * w..(y + 1) * w];
            for (xx, (xmin, k)) in cx.iter().enumerate() {
                let mut ss = 0.0f64;
                for (i, kv) in k.iter().enumerate() {
                    ss += f64::from(row[xmin + i]) * kv;
                }
                t[y * out_w + xx] = ss as f32;
            }
        }
        t
    } else {
        src.to_vec()
    };
    if out_h == h {
        return tmp;
    }
    let cy = float_coefficients(h, out_h, 1.0, bilinear);
    let mut out = vec![0f32; out_h * out_w];
    for (yy, (ymin, k)) in cy.iter().enumerate() {
        for xx in 0..out_w {
            let mut ss = 0.0f64;
            for (i, kv) in k.iter().enumerate() {
                ss += f64::from(tmp[(ymin + i) * out_w + xx]) * kv;
            }
            out[yy * out_w + xx] = ss as f32;
        }
    }
    out
}

/// Resizes every `H x W` plane of an `N x C x H x W` tensor to `size` (height, width) with
/// Pillow's float32 bilinear filter ([`pil_bilinear_plane_f32`]); float32 on the CPU.
pub fn pil_bilinear_resize_f32(planes: &Tensor, size: [i64; 2]) -> Result<Tensor> {
    let s = planes.size();
    let [n, c, h, w] = s.as_slice() else {
        return Err(MetricsError::InvalidParam(format!(
            "resize needs N x C x H x W planes, got {s:?}"
        )));
    };
    if size[0] < 1 || size[1] < 1 {
        return Err(MetricsError::InvalidParam(format!(
            "resize target must be positive, got {size:?}"
        )));
    }
    let (h, w) = (*h as usize, *w as usize);
    let (oh, ow) = (size[0] as usize, size[1] as usize);
    let flat = planes
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .flatten(0, -1);
    let values: Vec<f32> = Vec::<f32>::try_from(&flat)?;
    let mut out = Vec::with_capacity((*n * *c) as usize * oh * ow);
    for plane in values.chunks_exact(h * w) {
        out.extend(pil_bilinear_plane_f32(plane, h, w, oh, ow));
    }
    Ok(Tensor::from_slice(&out).reshape([*n, *c, size[0], size[1]]))
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
    fn bilinear_float_keeps_constants_and_interpolates_linearly_inside() {
        let src = vec![-2.5f32; 4 * 3];
        assert!(
            pil_bilinear_plane_f32(&src, 4, 3, 9, 7)
                .iter()
                .all(|&v| v == -2.5)
        );
        // Doubling a ramp 0, 1, 2, 3: output centres at (xx + 0.5) / 2 - 0.5 input pixels,
        // clamped at the borders (Pillow renormalises the cut-off weights).
        let ramp = [0f32, 1.0, 2.0, 3.0];
        let out = pil_bilinear_plane_f32(&ramp, 1, 4, 1, 8);
        assert_eq!(out, vec![0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]);
        assert_eq!(pil_bilinear_plane_f32(&ramp, 2, 2, 2, 2), ramp.to_vec());
    }

    /// Bit patterns written by Pillow 13.0 (`.venv`): `Image.fromarray(src).resize((7, 4),
    /// Image.BILINEAR)` and `.resize((2, 2), ...)` of a 3 x 5 float32 plane; exact equality
    /// because the same float64 weights and sums are computed in the same order.
    #[test]
    fn bilinear_float_equals_pillow_bit_for_bit() {
        let f = |v: &[u32]| v.iter().map(|&b| f32::from_bits(b)).collect::<Vec<f32>>();
        let src = f(&[
            0x0, 0x4044bf0d, 0xbf4acc24, 0xc037ae7f, 0x3fc4106e, 0x401e6b7b, 0xc00adaea,
            0xbff546dd, 0x402a752c, 0x3f9d6d3a, 0xc03ebdc3, 0xbeec7dc3, 0x40465be2, 0xbeac6d92,
            0xc040ce08,
        ]);
        let up = f(&[
            0x0, 0x3fe0da58, 0x3ffc1857, 0xbf4acc24, 0xc011afcb, 0xbf7bc9e9, 0x3fc4106e,
            0x3fc6065a, 0x3f0c02c1, 0xbf127bb0, 0xbfbf5291, 0xbbdebd00, 0x3f696d0b, 0x3fabea6e,
            0x3edbe01e, 0xbf30962f, 0xbf8d1bb4, 0xbd10ec14, 0x3f8b5a9a, 0x3f396d24, 0xbeb8d907,
            0xc03ebdc3, 0xbfc546e8, 0x3f0e3c18, 0x40465be2, 0x3f251d4e, 0xbfbde4d3, 0xc040ce08,
        ]);
        let down = f(&[0x3edf8285, 0xbdcb794a, 0xbedef9e9, 0x3dc698f9]);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&pil_bilinear_plane_f32(&src, 3, 5, 4, 7)), bits(&up));
        assert_eq!(bits(&pil_bilinear_plane_f32(&src, 3, 5, 2, 2)), bits(&down));
        let t = Tensor::from_slice(&src)
            .view([1, 1, 3, 5])
            .repeat([2, 3, 1, 1]);
        let r = pil_bilinear_resize_f32(&t, [4, 7]).unwrap();
        assert_eq!(r.size(), vec![2, 3, 4, 7]);
        let last = Vec::<f32>::try_from(r.get(1).get(2).flatten(0, -1)).unwrap();
        assert_eq!(bits(&last), bits(&up));
        assert!(pil_bilinear_resize_f32(&t, [0, 7]).is_err());
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
