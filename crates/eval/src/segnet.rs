//! A compact UNet-style segmentation network: the evaluator that synthetic tasks train
//! inside the pipeline (there is no pretrained DRN for them).
//!
//! Three resolution levels (`width`, `2 width`, `4 width` channels, 3x3 convs + ReLU, max
//! pooling down, bilinear upsampling + skip concatenation up) and a 1x1 classifier. No
//! normalisation layers: the network then has no train/eval difference and no running
//! statistics, so a segmentation of an image never depends on the batch it is in.
//!
//! Its *features* (for `seg_fd`) are the global average of the bottleneck activations
//! concatenated with the mean class probabilities over the image: what the network "sees"
//! at the coarsest level plus the class composition it predicts.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

use crate::error::{EvalError, Result};

/// What to build; stored in `evaluator.json`, kept apart from the weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegNetConfig {
    /// Channels of the first level (the bottleneck has `4 * width`).
    pub width: i64,
    /// Output classes (evaluation ids `0..num_classes`).
    pub num_classes: i64,
}

impl SegNetConfig {
    pub fn validate(&self) -> Result<()> {
        if self.width < 1 {
            return Err(EvalError::param("width", self.width, "must be >= 1"));
        }
        if self.num_classes < 2 {
            return Err(EvalError::param(
                "num_classes",
                self.num_classes,
                "a segmentation needs at least 2 classes",
            ));
        }
        Ok(())
    }

    /// Length of the feature vector [`SegNet::features`] returns.
    pub fn feature_dim(&self) -> i64 {
        4 * self.width + self.num_classes
    }

    /// Height and width must be multiples of this (two 2x poolings).
    pub const SIZE_MULTIPLE: i64 = 4;
}

struct DoubleConv {
    a: nn::Conv2D,
    b: nn::Conv2D,
}

impl DoubleConv {
    fn new(p: &nn::Path, cin: i64, cout: i64) -> Self {
        let c = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        DoubleConv {
            a: nn::conv2d(p / "conv1", cin, cout, 3, c),
            b: nn::conv2d(p / "conv2", cout, cout, 3, c),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.apply(&self.a).relu().apply(&self.b).relu()
    }
}

/// The network (tensors live in the caller's `VarStore`).
pub struct SegNet {
    cfg: SegNetConfig,
    enc1: DoubleConv,
    enc2: DoubleConv,
    enc3: DoubleConv,
    dec2: DoubleConv,
    dec1: DoubleConv,
    head: nn::Conv2D,
}

/// Logits plus the pooled features of one forward pass.
pub struct SegOutput {
    /// `[N, classes, H, W]`
    pub logits: Tensor,
    /// `[N, 4 * width]`: global average of the bottleneck.
    pub pooled: Tensor,
}

impl SegNet {
    pub fn new(p: &nn::Path, cfg: &SegNetConfig) -> Result<Self> {
        cfg.validate()?;
        let w = cfg.width;
        Ok(SegNet {
            cfg: cfg.clone(),
            enc1: DoubleConv::new(&(p / "enc1"), 3, w),
            enc2: DoubleConv::new(&(p / "enc2"), w, 2 * w),
            enc3: DoubleConv::new(&(p / "enc3"), 2 * w, 4 * w),
            dec2: DoubleConv::new(&(p / "dec2"), 6 * w, 2 * w),
            dec1: DoubleConv::new(&(p / "dec1"), 3 * w, w),
            head: nn::conv2d(p / "head", w, cfg.num_classes, 1, Default::default()),
        })
    }

    pub fn config(&self) -> &SegNetConfig {
        &self.cfg
    }

    /// Checks that `x` is `[N, 3, H, W]` with H and W multiples of 4.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let s = x.size();
        let m = SegNetConfig::SIZE_MULTIPLE;
        if s.len() != 4 || s[1] != 3 || s[2] % m != 0 || s[3] % m != 0 || s[2] == 0 || s[3] == 0 {
            return Err(EvalError::Check(format!(
                "the segmentation evaluator takes [N, 3, H, W] images with H and W multiples of {m}, got {s:?}"
            )));
        }
        Ok(())
    }

    /// Forward on images in `[-1, 1]`.
    pub fn forward(&self, x: &Tensor) -> Result<SegOutput> {
        self.check_input(x)?;
        let s = x.size();
        let (h, w) = (s[2], s[3]);
        let e1 = self.enc1.forward(x);
        let e2 = self
            .enc2
            .forward(&e1.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false));
        let e3 = self
            .enc3
            .forward(&e2.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false));
        let u2 = e3.upsample_bilinear2d([h / 2, w / 2], false, None, None);
        let d2 = self.dec2.forward(&Tensor::cat(&[&u2, &e2], 1));
        let u1 = d2.upsample_bilinear2d([h, w], false, None, None);
        let d1 = self.dec1.forward(&Tensor::cat(&[&u1, &e1], 1));
        Ok(SegOutput {
            logits: d1.apply(&self.head),
            pooled: e3.mean_dim([2i64, 3].as_slice(), false, Kind::Float),
        })
    }

    /// Per-pixel class ids `[N, H, W]` (int64).
    pub fn predict(&self, x: &Tensor) -> Result<Tensor> {
        Ok(tch::no_grad(|| self.forward(x))?.logits.argmax(1, false))
    }

    /// Feature vectors `[N, feature_dim]`: pooled bottleneck ++ mean class probabilities.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let o = tch::no_grad(|| self.forward(x))?;
        let probs =
            o.logits
                .softmax(1, Kind::Float)
                .mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        Ok(Tensor::cat(&[o.pooled, probs], 1))
    }
}
