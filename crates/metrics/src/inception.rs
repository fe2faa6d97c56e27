//! The "FID Inception" network of pytorch-fid (Inception-v3 with the TF 2015-12-05 graph's
//! quirks: `FIDInceptionA/C/E_1/E_2` blocks) up to the 2048-d pool3 features.
//!
//! Parameter names follow pytorch-fid's state dict `pt_inception-2015-12-05-6726825d.pth`
//! (torchvision `Inception3` names, e.g. `Mixed_7c.branch3x3dbl_3b.bn.running_var`), so a
//! converted file loads by name. Its 1008-way `fc` head is accepted and ignored.
//! Input protocol (pytorch-fid `InceptionV3.forward`): images in [0, 1], bilinearly resized
//! to 299x299 (`align_corners=False`, no antialiasing), scaled to [-1, 1].

use std::path::Path;

use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::features::{EvaluatorIdentity, FeatureExtractor};
use crate::weights::{Extra, WeightsInfo, load_weights};

/// Feature dimension of pool3.
pub const POOL3_DIM: i64 = 2048;
/// Classes of the TF graph's head (`fc`), present in the pytorch-fid weights file.
pub const FC_CLASSES: i64 = 1008;
const ARCH: &str = "pytorch-fid FID Inception-v3";

/// conv (no bias) + batch norm (eps 0.001) + ReLU: torchvision `BasicConv2d`.
#[derive(Debug)]
struct BasicConv2d {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl BasicConv2d {
    fn new(p: nn::Path, c_in: i64, c_out: i64, k: [i64; 2], stride: i64, pad: [i64; 2]) -> Self {
        let cfg = nn::ConvConfigND::<[i64; 2]> {
            stride: [stride, stride],
            padding: pad,
            bias: false,
            ..Default::default()
        };
        let conv = nn::conv(&p / "conv", c_in, c_out, k, cfg);
        let bn = nn::batch_norm2d(
            &p / "bn",
            c_out,
            nn::BatchNormConfig {
                eps: 0.001,
                ..Default::default()
            },
        );
        BasicConv2d { conv, bn }
    }
    fn sq(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, pad: i64) -> Self {
        Self::new(p, c_in, c_out, [k, k], stride, [pad, pad])
    }
    fn f(&self, x: &Tensor) -> Tensor {
        x.apply(&self.conv).apply_t(&self.bn, false).relu()
    }
}

fn avg3_no_pad_count(x: &Tensor) -> Tensor {
    x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None)
}

fn max3s2(x: &Tensor) -> Tensor {
    x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// `FIDInceptionA`: InceptionA whose pool branch excludes padding from the average.
#[derive(Debug)]
struct BlockA {
    b1: BasicConv2d,
    b5_1: BasicConv2d,
    b5_2: BasicConv2d,
    d1: BasicConv2d,
    d2: BasicConv2d,
    d3: BasicConv2d,
    pool: BasicConv2d,
}

impl BlockA {
    fn new(p: nn::Path, c_in: i64, pool_features: i64) -> Self {
        BlockA {
            b1: BasicConv2d::sq(&p / "branch1x1", c_in, 64, 1, 1, 0),
            b5_1: BasicConv2d::sq(&p / "branch5x5_1", c_in, 48, 1, 1, 0),
            b5_2: BasicConv2d::sq(&p / "branch5x5_2", 48, 64, 5, 1, 2),
            d1: BasicConv2d::sq(&p / "branch3x3dbl_1", c_in, 64, 1, 1, 0),
            d2: BasicConv2d::sq(&p / "branch3x3dbl_2", 64, 96, 3, 1, 1),
            d3: BasicConv2d::sq(&p / "branch3x3dbl_3", 96, 96, 3, 1, 1),
            pool: BasicConv2d::sq(&p / "branch_pool", c_in, pool_features, 1, 1, 0),
        }
    }
    fn f(&self, x: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                self.b1.f(x),
                self.b5_2.f(&self.b5_1.f(x)),
                self.d3.f(&self.d2.f(&self.d1.f(x))),
                self.pool.f(&avg3_no_pad_count(x)),
            ],
            1,
        )
    }
}

/// InceptionB (grid reduction 35 -> 17), unchanged in the FID network.
#[derive(Debug)]
struct BlockB {
    b3: BasicConv2d,
    d1: BasicConv2d,
    d2: BasicConv2d,
    d3: BasicConv2d,
}

impl BlockB {
    fn new(p: nn::Path, c_in: i64) -> Self {
        BlockB {
            b3: BasicConv2d::sq(&p / "branch3x3", c_in, 384, 3, 2, 0),
            d1: BasicConv2d::sq(&p / "branch3x3dbl_1", c_in, 64, 1, 1, 0),
            d2: BasicConv2d::sq(&p / "branch3x3dbl_2", 64, 96, 3, 1, 1),
            d3: BasicConv2d::sq(&p / "branch3x3dbl_3", 96, 96, 3, 2, 0),
        }
    }
    fn f(&self, x: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                self.b3.f(x),
                self.d3.f(&self.d2.f(&self.d1.f(x))),
                max3s2(x),
            ],
            1,
        )
    }
}

/// `FIDInceptionC`: factorised 7x7 block whose pool branch excludes padding.
#[derive(Debug)]
struct BlockC {
    b1: BasicConv2d,
    s: [BasicConv2d; 3],
    d: [BasicConv2d; 5],
    pool: BasicConv2d,
}

impl BlockC {
    fn new(p: nn::Path, c_in: i64, c7: i64) -> Self {
        let row = |name: &str, i, o| BasicConv2d::new(&p / name, i, o, [1, 7], 1, [0, 3]);
        let col = |name: &str, i, o| BasicConv2d::new(&p / name, i, o, [7, 1], 1, [3, 0]);
        BlockC {
            b1: BasicConv2d::sq(&p / "branch1x1", c_in, 192, 1, 1, 0),
            s: [
                BasicConv2d::sq(&p / "branch7x7_1", c_in, c7, 1, 1, 0),
                row("branch7x7_2", c7, c7),
                col("branch7x7_3", c7, 192),
            ],
            d: [
                BasicConv2d::sq(&p / "branch7x7dbl_1", c_in, c7, 1, 1, 0),
                col("branch7x7dbl_2", c7, c7),
                row("branch7x7dbl_3", c7, c7),
                col("branch7x7dbl_4", c7, c7),
                row("branch7x7dbl_5", c7, 192),
            ],
            pool: BasicConv2d::sq(&p / "branch_pool", c_in, 192, 1, 1, 0),
        }
    }
    fn f(&self, x: &Tensor) -> Tensor {
        let s = self.s.iter().fold(x.shallow_clone(), |t, l| l.f(&t));
        let d = self.d.iter().fold(x.shallow_clone(), |t, l| l.f(&t));
        Tensor::cat(&[self.b1.f(x), s, d, self.pool.f(&avg3_no_pad_count(x))], 1)
    }
}

/// InceptionD (grid reduction 17 -> 8), unchanged in the FID network.
#[derive(Debug)]
struct BlockD {
    b3: [BasicConv2d; 2],
    b7: [BasicConv2d; 4],
}

impl BlockD {
    fn new(p: nn::Path, c_in: i64) -> Self {
        BlockD {
            b3: [
                BasicConv2d::sq(&p / "branch3x3_1", c_in, 192, 1, 1, 0),
                BasicConv2d::sq(&p / "branch3x3_2", 192, 320, 3, 2, 0),
            ],
            b7: [
                BasicConv2d::sq(&p / "branch7x7x3_1", c_in, 192, 1, 1, 0),
                BasicConv2d::new(&p / "branch7x7x3_2", 192, 192, [1, 7], 1, [0, 3]),
                BasicConv2d::new(&p / "branch7x7x3_3", 192, 192, [7, 1], 1, [3, 0]),
                BasicConv2d::sq(&p / "branch7x7x3_4", 192, 192, 3, 2, 0),
            ],
        }
    }
    fn f(&self, x: &Tensor) -> Tensor {
        let a = self.b3.iter().fold(x.shallow_clone(), |t, l| l.f(&t));
        let b = self.b7.iter().fold(x.shallow_clone(), |t, l| l.f(&t));
        Tensor::cat(&[a, b, max3s2(x)], 1)
    }
}

/// Pool branch of the two E blocks: the TF graph averages (without padding) in `Mixed_7b`
/// (`FIDInceptionE_1`) but max-pools in `Mixed_7c` (`FIDInceptionE_2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EPool {
    AvgNoPad,
    Max,
}

#[derive(Debug)]
struct BlockE {
    b1: BasicConv2d,
    b3_1: BasicConv2d,
    b3_2a: BasicConv2d,
    b3_2b: BasicConv2d,
    d1: BasicConv2d,
    d2: BasicConv2d,
    d3a: BasicConv2d,
    d3b: BasicConv2d,
    pool: BasicConv2d,
    pool_kind: EPool,
}

impl BlockE {
    fn new(p: nn::Path, c_in: i64, pool_kind: EPool) -> Self {
        let row = |name: &str, i, o| BasicConv2d::new(&p / name, i, o, [1, 3], 1, [0, 1]);
        let col = |name: &str, i, o| BasicConv2d::new(&p / name, i, o, [3, 1], 1, [1, 0]);
        BlockE {
            b1: BasicConv2d::sq(&p / "branch1x1", c_in, 320, 1, 1, 0),
            b3_1: BasicConv2d::sq(&p / "branch3x3_1", c_in, 384, 1, 1, 0),
            b3_2a: row("branch3x3_2a", 384, 384),
            b3_2b: col("branch3x3_2b", 384, 384),
            d1: BasicConv2d::sq(&p / "branch3x3dbl_1", c_in, 448, 1, 1, 0),
            d2: BasicConv2d::sq(&p / "branch3x3dbl_2", 448, 384, 3, 1, 1),
            d3a: row("branch3x3dbl_3a", 384, 384),
            d3b: col("branch3x3dbl_3b", 384, 384),
            pool: BasicConv2d::sq(&p / "branch_pool", c_in, 192, 1, 1, 0),
            pool_kind,
        }
    }
    fn f(&self, x: &Tensor) -> Tensor {
        let t = self.b3_1.f(x);
        let b3 = Tensor::cat(&[self.b3_2a.f(&t), self.b3_2b.f(&t)], 1);
        let t = self.d2.f(&self.d1.f(x));
        let d = Tensor::cat(&[self.d3a.f(&t), self.d3b.f(&t)], 1);
        let pooled = match self.pool_kind {
            EPool::AvgNoPad => avg3_no_pad_count(x),
            EPool::Max => x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false),
        };
        Tensor::cat(&[self.b1.f(x), b3, d, self.pool.f(&pooled)], 1)
    }
}

/// The FID Inception-v3 layers (weights only; see [`FidInception`] for the extractor).
#[derive(Debug)]
pub struct FidInceptionNet {
    stem: [BasicConv2d; 5],
    mixed_5: [BlockA; 3],
    mixed_6a: BlockB,
    mixed_6: [BlockC; 4],
    mixed_7a: BlockD,
    mixed_7b: BlockE,
    mixed_7c: BlockE,
}

impl FidInceptionNet {
    /// Creates the variables under `p` with pytorch-fid's names.
    pub fn new(p: &nn::Path) -> Self {
        let s = |n: &str, i, o, k, st, pad| BasicConv2d::sq(p / n, i, o, k, st, pad);
        FidInceptionNet {
            stem: [
                s("Conv2d_1a_3x3", 3, 32, 3, 2, 0),
                s("Conv2d_2a_3x3", 32, 32, 3, 1, 0),
                s("Conv2d_2b_3x3", 32, 64, 3, 1, 1),
                s("Conv2d_3b_1x1", 64, 80, 1, 1, 0),
                s("Conv2d_4a_3x3", 80, 192, 3, 1, 0),
            ],
            mixed_5: [
                BlockA::new(p / "Mixed_5b", 192, 32),
                BlockA::new(p / "Mixed_5c", 256, 64),
                BlockA::new(p / "Mixed_5d", 288, 64),
            ],
            mixed_6a: BlockB::new(p / "Mixed_6a", 288),
            mixed_6: [
                BlockC::new(p / "Mixed_6b", 768, 128),
                BlockC::new(p / "Mixed_6c", 768, 160),
                BlockC::new(p / "Mixed_6d", 768, 160),
                BlockC::new(p / "Mixed_6e", 768, 192),
            ],
            mixed_7a: BlockD::new(p / "Mixed_7a", 768),
            mixed_7b: BlockE::new(p / "Mixed_7b", 1280, EPool::AvgNoPad),
            mixed_7c: BlockE::new(p / "Mixed_7c", 2048, EPool::Max),
        }
    }

    /// pool3 features `N x 2048` of images already resized and scaled to [-1, 1].
    pub fn pool3(&self, x: &Tensor) -> Tensor {
        self.block_features(x, POOL3_DIM)
            .expect("2048 is one of FEATURE_DIMS")
    }

    /// `N x dims` features of pytorch-fid's output block for `dims` (64: first max pool,
    /// 192: second max pool, 768: pre-aux `Mixed_6e`, 2048: pool3), spatially averaged as
    /// its `get_activations` does; `None` for another `dims`.
    pub fn block_features(&self, x: &Tensor, dims: i64) -> Option<Tensor> {
        if !FEATURE_DIMS.contains(&dims) {
            return None;
        }
        let mut x = self.stem[0].f(x);
        x = self.stem[1].f(&x);
        x = max3s2(&self.stem[2].f(&x));
        if dims > 64 {
            x = self.stem[3].f(&x);
            x = max3s2(&self.stem[4].f(&x));
        }
        if dims > 192 {
            for b in &self.mixed_5 {
                x = b.f(&x);
            }
            x = self.mixed_6a.f(&x);
            for b in &self.mixed_6 {
                x = b.f(&x);
            }
        }
        if dims > 768 {
            x = self.mixed_7a.f(&x);
            x = self.mixed_7b.f(&x);
            x = self.mixed_7c.f(&x);
        }
        Some(x.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
    }
}

/// The feature layers of pytorch-fid's `InceptionV3.BLOCK_INDEX_BY_DIM`.
pub const FEATURE_DIMS: [i64; 4] = [64, 192, 768, POOL3_DIM];

/// pytorch-fid's input transform: bilinear resize to 299x299, then `2x - 1`. In float32,
/// or in float64 for float64 images (the precision checks run the whole net in float64).
pub fn fid_preprocess(images: &Tensor) -> Tensor {
    let x = match images.kind() {
        Kind::Double => images.shallow_clone(),
        _ => images.to_kind(Kind::Float),
    };
    let x = x.upsample_bilinear2d([299, 299], false, None, None);
    x * 2.0 - 1.0
}

/// Which tensors of a pytorch-fid weights file the pool3 extractor does not use.
fn inception_extra(name: &str, shape: &[i64]) -> Extra {
    if name.ends_with(".num_batches_tracked") {
        return Extra::Ignore;
    }
    match name {
        "fc.weight" if shape == [FC_CLASSES, POOL3_DIM] => Extra::Ignore,
        "fc.bias" if shape == [FC_CLASSES] => Extra::Ignore,
        "fc.weight" | "fc.bias" => Extra::Wrong(format!(
            "shape {shape:?}: the FID Inception head has {FC_CLASSES} classes \
             (is this torchvision's ImageNet Inception-v3 instead of pytorch-fid's?)"
        )),
        _ => Extra::Unexpected,
    }
}

/// FID feature extractor: the network, its weights store and identity.
pub struct FidInception {
    vs: nn::VarStore,
    net: FidInceptionNet,
    weights: Option<WeightsInfo>,
}

impl std::fmt::Debug for FidInception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FidInception")
            .field("device", &self.vs.device())
            .field("weights", &self.weights)
            .finish()
    }
}

impl FidInception {
    /// Loads the pytorch-fid weights (converted to safetensors) onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let net = FidInceptionNet::new(&vs.root());
        let info = load_weights(&mut vs, path, ARCH, inception_extra)?;
        vs.freeze();
        Ok(FidInception {
            vs,
            net,
            weights: Some(info),
        })
    }

    /// Random weights (seeded through `tch::manual_seed`): only for timing and tests; its
    /// identity says so and its distances are not FID.
    pub fn random(device: Device) -> Self {
        let mut vs = nn::VarStore::new(device);
        let net = FidInceptionNet::new(&vs.root());
        vs.freeze();
        FidInception {
            vs,
            net,
            weights: None,
        }
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Converts the weights to `kind`; inputs follow. Float32 is what metrics use; float64
    /// is for checking the implementation against float64 references without rounding.
    pub fn set_kind(&mut self, kind: Kind) {
        self.vs.set_kind(kind);
    }
}

impl FidInception {
    /// pytorch-fid's activations for `--dims dims` of images `N x 3 x H x W` in [0, 1]
    /// (resized to 299 inside, as its `InceptionV3(resize_input=True)`), on the CPU.
    pub fn features_dims(&self, images: &Tensor, dims: i64) -> Result<Tensor> {
        let s = images.size();
        if s.len() != 4 || s[1] != 3 {
            return Err(crate::error::MetricsError::InvalidParam(format!(
                "Inception features need N x 3 x H x W images, got {s:?}"
            )));
        }
        let x = fid_preprocess(&images.to_device(self.vs.device()).to_kind(self.vs.kind()));
        let f = tch::no_grad(|| self.net.block_features(&x, dims)).ok_or_else(|| {
            crate::error::MetricsError::InvalidParam(format!(
                "--dims {dims}: pytorch-fid's feature layers are 64, 192, 768 and 2048"
            ))
        })?;
        Ok(f.to_device(Device::Cpu))
    }
}

impl FeatureExtractor for FidInception {
    fn identity(&self) -> EvaluatorIdentity {
        let loaded = self.weights.is_some();
        EvaluatorIdentity {
            name: if loaded {
                "pytorch-fid-inception-v3-pool3".into()
            } else {
                "inception-v3-pool3-random-weights".into()
            },
            metric_name: if loaded {
                "fid".into()
            } else {
                "frechet_random_inception".into()
            },
            weights: self.weights.clone(),
            input: "RGB in [0,1], bilinear resize to 299x299, scaled to [-1,1]".into(),
        }
    }
    fn feature_dim(&self) -> i64 {
        POOL3_DIM
    }
    fn features(&self, images: &Tensor) -> Result<Tensor> {
        let s = images.size();
        if s.len() != 4 || s[1] != 3 {
            return Err(crate::error::MetricsError::InvalidParam(format!(
                "Inception features need N x 3 x H x W images, got {s:?}"
            )));
        }
        self.features_dims(images, POOL3_DIM)
    }
}
