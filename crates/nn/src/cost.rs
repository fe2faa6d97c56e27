//! Analytic MACs / parameter counting, following `torchprofile` (the convention GAN
//! compression papers report, DESIGN §3):
//! - conv: output elements x (C_in / groups) x kh x kw;
//! - transposed conv: the same, counted from its *output* elements (torchprofile's handler
//!   does not divide by the stride; we match it so numbers compare with published tables);
//! - elementwise multiply: one MAC per output element; linear: out x in per row;
//! - norms: their element count only when affine; adds, activations, padding, upsampling
//!   and biases: 0.
//!
//! Params count learnable parameters only (weights and biases), never running statistics.
//! All helpers take batch-1 shapes.

use std::iter::Sum;
use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

/// MACs and parameter count of a network (or part of one) on one input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    pub macs: u64,
    pub params: u64,
}

impl Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost {
            macs: self.macs + o.macs,
            params: self.params + o.params,
        }
    }
}

impl AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        *self = *self + o;
    }
}

impl Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(iter: I) -> Cost {
        iter.fold(Cost::default(), Add::add)
    }
}

fn u(x: i64) -> u64 {
    x.max(0) as u64
}

/// Output size of a convolution along one axis.
pub fn conv_out(size: i64, k: i64, stride: i64, pad: i64, dilation: i64) -> i64 {
    (size + 2 * pad - dilation * (k - 1) - 1) / stride + 1
}

/// Output size of a transposed convolution along one axis.
pub fn conv_transpose_out(
    size: i64,
    k: i64,
    stride: i64,
    pad: i64,
    out_pad: i64,
    dilation: i64,
) -> i64 {
    (size - 1) * stride - 2 * pad + dilation * (k - 1) + out_pad + 1
}

/// A 2-d convolution producing `out_hw`.
pub fn conv2d(
    c_in: i64,
    c_out: i64,
    k: [i64; 2],
    groups: i64,
    out_hw: [i64; 2],
    bias: bool,
) -> Cost {
    let per_out = u(c_in / groups) * u(k[0]) * u(k[1]);
    Cost {
        macs: u(c_out) * u(out_hw[0]) * u(out_hw[1]) * per_out,
        params: u(c_out) * per_out + if bias { u(c_out) } else { 0 },
    }
}

/// A 2-d transposed convolution producing `out_hw` (weights `[c_in, c_out/groups, kh, kw]`).
pub fn conv_transpose2d(
    c_in: i64,
    c_out: i64,
    k: [i64; 2],
    groups: i64,
    out_hw: [i64; 2],
    bias: bool,
) -> Cost {
    let kk = u(k[0]) * u(k[1]);
    Cost {
        macs: u(c_out) * u(out_hw[0]) * u(out_hw[1]) * u(c_in / groups) * kk,
        params: u(c_in) * u(c_out / groups) * kk + if bias { u(c_out) } else { 0 },
    }
}

/// A normalisation over `c` channels of `hw` maps; costs something only if affine.
pub fn norm(c: i64, hw: [i64; 2], affine: bool) -> Cost {
    if affine {
        Cost {
            macs: u(c) * u(hw[0]) * u(hw[1]),
            params: 2 * u(c),
        }
    } else {
        Cost::default()
    }
}

/// An elementwise multiply with `elements` outputs (e.g. SPADE's `x * (1 + gamma)`).
pub fn mul(elements: i64) -> Cost {
    Cost {
        macs: u(elements),
        params: 0,
    }
}

/// A linear layer applied to `rows` vectors.
pub fn linear(c_in: i64, c_out: i64, rows: i64, bias: bool) -> Cost {
    Cost {
        macs: u(rows) * u(c_in) * u(c_out),
        params: u(c_in) * u(c_out) + if bias { u(c_out) } else { 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_counts() {
        // 3->8, k3, 32x32 out: 8*32*32*3*9 MACs, 8*3*9+8 params.
        let c = conv2d(3, 8, [3, 3], 1, [32, 32], true);
        assert_eq!(c.macs, 8 * 32 * 32 * 27);
        assert_eq!(c.params, 8 * 27 + 8);
        // depthwise
        let d = conv2d(8, 8, [3, 3], 8, [4, 4], false);
        assert_eq!(
            d,
            Cost {
                macs: 8 * 16 * 9,
                params: 72
            }
        );
        let t = conv_transpose2d(8, 4, [3, 3], 1, [8, 8], false);
        assert_eq!(
            t,
            Cost {
                macs: 4 * 64 * 8 * 9,
                params: 8 * 4 * 9
            }
        );
        assert_eq!(norm(4, [2, 2], false), Cost::default());
        assert_eq!(
            norm(4, [2, 2], true),
            Cost {
                macs: 16,
                params: 8
            }
        );
        assert_eq!(conv_out(256, 4, 2, 1, 1), 128);
        assert_eq!(conv_transpose_out(64, 3, 2, 1, 1, 1), 128);
        assert_eq!(conv_transpose_out(1, 4, 2, 1, 0, 1), 2);
        let s: Cost = [mul(3), linear(2, 3, 1, true)].into_iter().sum();
        assert_eq!(s, Cost { macs: 9, params: 9 });
    }
}
