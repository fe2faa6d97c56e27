//! DRN-D-105 semantic segmentation (fyu/drn `drn_d_105` wrapped in `DRNSeg`), the network
//! GAN-compression evaluates Cityscapes mIoU with.
//!
//! Parameter names follow `DRNSeg`'s state dict: `base.<i>...` for the backbone layers
//! `layer0..layer8` (children of the classification DRN without `avgpool`/`fc`), `seg.*`
//! (1x1 classifier) and `up.weight` (depthwise 16x16 transposed conv, stride 8). A leading
//! `module.` from `nn.DataParallel` is stripped by the loader.
//! Protocol of GAN Compression's `metric/cityscapes_mIoU.py` ([`DrnSeg::predict`]): the
//! generated 8-bit image is scaled to [0, 1] and normalised with the Cityscapes mean/std
//! below *at its own resolution* (its `FromArray([2048, 1024])` ignores the size); DRN's
//! upsampled logits go through `LogSoftmax`, each class plane is resized to the label
//! resolution (2048x1024 there) with Pillow's float32 bilinear filter, and the prediction is
//! the argmax of the resized log-probabilities.

use std::path::Path;

use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::error::{MetricsError, Result};
use crate::miou::ConfusionMatrix;
use crate::resize::pil_bilinear_resize_f32;
use crate::weights::{Extra, WeightsInfo, load_weights};

/// Per-channel mean of the DRN Cityscapes models (RGB, [0, 1] scale).
pub const CITYSCAPES_MEAN: [f64; 3] = [
    0.290_100_952_428_929_97,
    0.328_081_448_442_795_74,
    0.286_963_944_229_425_17,
];
/// Per-channel standard deviation of the DRN Cityscapes models.
pub const CITYSCAPES_STD: [f64; 3] = [
    0.182_954_050_836_893_9,
    0.186_565_610_475_094_76,
    0.184_475_089_884_804_35,
];
/// Resolution GAN-compression resizes DRN's log-probabilities to (height, width): the
/// Cityscapes label maps'.
pub const CITYSCAPES_EVAL_SIZE: [i64; 2] = [1024, 2048];

/// Architecture of a DRN-D segmentation network (kept apart from the weights).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DrnConfig {
    /// Blocks per level `layer1..layer8` (levels 1, 2, 7, 8 are plain conv layers).
    pub layers: [usize; 8],
    pub channels: [i64; 8],
    pub num_classes: i64,
}

impl DrnConfig {
    /// `drn_d_105` with a `num_classes`-way segmentation head.
    pub fn d105(num_classes: i64) -> Self {
        DrnConfig {
            layers: [1, 1, 3, 4, 23, 3, 1, 1],
            channels: [16, 32, 64, 128, 256, 512, 512, 512],
            num_classes,
        }
    }
}

/// A bias-free convolution as every DRN backbone layer uses.
fn conv(p: nn::Path, i: i64, o: i64, k: i64, stride: i64, pad: i64, dil: i64) -> nn::Conv2D {
    nn::conv2d(
        p,
        i,
        o,
        k,
        nn::ConvConfig {
            stride,
            padding: pad,
            dilation: dil,
            bias: false,
            ..Default::default()
        },
    )
}

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, Default::default())
}

/// `Bottleneck` (expansion 4); the 3x3 conv carries stride and dilation.
#[derive(Debug)]
struct Bottleneck {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    conv3: nn::Conv2D,
    bn3: nn::BatchNorm,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl Bottleneck {
    fn new(
        p: nn::Path,
        inplanes: i64,
        planes: i64,
        stride: i64,
        dilation: i64,
        down: bool,
    ) -> Self {
        Bottleneck {
            conv1: conv(&p / "conv1", inplanes, planes, 1, 1, 0, 1),
            bn1: bn(&p / "bn1", planes),
            conv2: conv(&p / "conv2", planes, planes, 3, stride, dilation, dilation),
            bn2: bn(&p / "bn2", planes),
            conv3: conv(&p / "conv3", planes, planes * 4, 1, 1, 0, 1),
            bn3: bn(&p / "bn3", planes * 4),
            downsample: down.then(|| {
                (
                    conv(
                        &p / "downsample" / "0",
                        inplanes,
                        planes * 4,
                        1,
                        stride,
                        0,
                        1,
                    ),
                    bn(&p / "downsample" / "1", planes * 4),
                )
            }),
        }
    }
    fn f(&self, x: &Tensor) -> Tensor {
        let out = x.apply(&self.conv1).apply_t(&self.bn1, false).relu();
        let out = out.apply(&self.conv2).apply_t(&self.bn2, false).relu();
        let out = out.apply(&self.conv3).apply_t(&self.bn3, false);
        let residual = match &self.downsample {
            Some((c, b)) => x.apply(c).apply_t(b, false),
            None => x.shallow_clone(),
        };
        (out + residual).relu()
    }
}

/// One backbone level: plain conv-bn-relu triples or bottleneck blocks.
#[derive(Debug)]
enum Level {
    Convs(Vec<(nn::Conv2D, nn::BatchNorm)>),
    Blocks(Vec<Bottleneck>),
}

impl Level {
    fn f(&self, x: &Tensor) -> Tensor {
        match self {
            Level::Convs(v) => v.iter().fold(x.shallow_clone(), |t, (c, b)| {
                t.apply(c).apply_t(b, false).relu()
            }),
            Level::Blocks(v) => v.iter().fold(x.shallow_clone(), |t, b| b.f(&t)),
        }
    }
}

/// DRN-D backbone + segmentation head + fixed bilinear upsampling (`DRNSeg`).
#[derive(Debug)]
pub struct DrnSegNet {
    levels: Vec<Level>,
    seg: nn::Conv2D,
    up: Tensor,
    num_classes: i64,
}

impl DrnSegNet {
    pub fn new(p: &nn::Path, cfg: &DrnConfig) -> Result<Self> {
        if cfg.num_classes < 1 {
            return Err(MetricsError::InvalidParam(format!(
                "DRN num_classes must be >= 1, got {}",
                cfg.num_classes
            )));
        }
        let base = p / "base";
        let ch = cfg.channels;
        let mut levels = Vec::new();
        let mut inplanes = ch[0];
        // layer0: 7x7 stem.
        levels.push(Level::Convs(vec![(
            conv(&base / "0" / "0", 3, ch[0], 7, 1, 3, 1),
            bn(&base / "0" / "1", ch[0]),
        )]));
        let conv_level =
            |idx: usize, channels: i64, n: usize, stride: i64, dil: i64, inplanes: &mut i64| {
                let p = &base / idx.to_string();
                let v = (0..n)
                    .map(|i| {
                        let c = conv(
                            &p / (3 * i).to_string(),
                            *inplanes,
                            channels,
                            3,
                            if i == 0 { stride } else { 1 },
                            dil,
                            dil,
                        );
                        let b = bn(&p / (3 * i + 1).to_string(), channels);
                        *inplanes = channels;
                        (c, b)
                    })
                    .collect();
                Level::Convs(v)
            };
        let block_level = |idx: usize,
                           planes: i64,
                           n: usize,
                           stride: i64,
                           dil: i64,
                           new_level: bool,
                           inplanes: &mut i64| {
            let p = &base / idx.to_string();
            let down = stride != 1 || *inplanes != planes * 4;
            // fyu/drn: the first block's 3x3 uses dilation/2 when a new level starts.
            let first_dil = if dil == 1 || !new_level { dil } else { dil / 2 };
            let mut v = vec![Bottleneck::new(
                &p / "0",
                *inplanes,
                planes,
                stride,
                first_dil,
                down,
            )];
            *inplanes = planes * 4;
            for i in 1..n {
                v.push(Bottleneck::new(
                    &p / i.to_string(),
                    *inplanes,
                    planes,
                    1,
                    dil,
                    false,
                ));
            }
            Level::Blocks(v)
        };
        levels.push(conv_level(1, ch[0], cfg.layers[0], 1, 1, &mut inplanes));
        levels.push(conv_level(2, ch[1], cfg.layers[1], 2, 1, &mut inplanes));
        levels.push(block_level(
            3,
            ch[2],
            cfg.layers[2],
            2,
            1,
            true,
            &mut inplanes,
        ));
        levels.push(block_level(
            4,
            ch[3],
            cfg.layers[3],
            2,
            1,
            true,
            &mut inplanes,
        ));
        levels.push(block_level(
            5,
            ch[4],
            cfg.layers[4],
            1,
            2,
            false,
            &mut inplanes,
        ));
        let mut next = 6;
        if cfg.layers[5] > 0 {
            levels.push(block_level(
                next,
                ch[5],
                cfg.layers[5],
                1,
                4,
                false,
                &mut inplanes,
            ));
            next += 1;
        }
        if cfg.layers[6] > 0 {
            levels.push(conv_level(next, ch[6], cfg.layers[6], 1, 2, &mut inplanes));
            next += 1;
        }
        if cfg.layers[7] > 0 {
            levels.push(conv_level(next, ch[7], cfg.layers[7], 1, 1, &mut inplanes));
        }
        let seg = nn::conv2d(p / "seg", inplanes, cfg.num_classes, 1, Default::default());
        let up = (p / "up").var(
            "weight",
            &[cfg.num_classes, 1, 16, 16],
            nn::Init::Const(0.0),
        );
        Ok(DrnSegNet {
            levels,
            seg,
            up,
            num_classes: cfg.num_classes,
        })
    }

    /// Per-pixel class logits `N x K x 8h' x 8w'` (the log-softmax of the reference does
    /// not change the argmax and is omitted).
    pub fn logits(&self, x: &Tensor) -> Tensor {
        let h = self.levels.iter().fold(x.shallow_clone(), |t, l| l.f(&t));
        let s = h.apply(&self.seg);
        s.conv_transpose2d(
            &self.up,
            None::<Tensor>,
            [8, 8],
            [4, 4],
            [0, 0],
            self.num_classes,
            [1, 1],
        )
    }
}

/// The fixed bilinear kernel `fill_up_weights` puts into `up.weight` (used when a weights
/// file is created for a freshly trained head).
pub fn bilinear_up_kernel(num_classes: i64) -> Tensor {
    let k = 16usize;
    let f = (k as f64 / 2.0).ceil();
    let c = (2.0 * f - 1.0 - f % 2.0) / (2.0 * f);
    let mut w = vec![0f32; k * k];
    for i in 0..k {
        for j in 0..k {
            w[i * k + j] =
                ((1.0 - (i as f64 / f - c).abs()) * (1.0 - (j as f64 / f - c).abs())) as f32;
        }
    }
    Tensor::from_slice(&w)
        .view([1, 1, 16, 16])
        .repeat([num_classes, 1, 1, 1])
}

/// GAN-compression's DRN input: images holding 8-bit values in [0, 1], at their own
/// resolution, normalised with the Cityscapes mean/std in float32 (`t.sub_(m).div_(s)`).
pub fn cityscapes_input(images: &Tensor) -> Result<Tensor> {
    let device = images.device();
    let x = images.to_kind(Kind::Float);
    let mean = Tensor::from_slice(&CITYSCAPES_MEAN.map(|v| v as f32))
        .view([1, 3, 1, 1])
        .to_device(device);
    let std = Tensor::from_slice(&CITYSCAPES_STD.map(|v| v as f32))
        .view([1, 3, 1, 1])
        .to_device(device);
    Ok((x - mean) / std)
}

fn drn_extra(name: &str, _shape: &[i64]) -> Extra {
    if name.ends_with(".num_batches_tracked") {
        Extra::Ignore
    } else {
        Extra::Unexpected
    }
}

/// A loaded DRN segmentation model.
pub struct DrnSeg {
    vs: nn::VarStore,
    net: DrnSegNet,
    pub config: DrnConfig,
    pub weights: Option<WeightsInfo>,
}

impl std::fmt::Debug for DrnSeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrnSeg")
            .field("config", &self.config)
            .field("weights", &self.weights)
            .finish()
    }
}

impl DrnSeg {
    /// Loads `DRNSeg` weights (safetensors, or a `.pth` as `torch.save` wrote it) for `cfg`
    /// onto `device`.
    pub fn load(path: &Path, cfg: &DrnConfig, device: Device) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let net = DrnSegNet::new(&vs.root(), cfg)?;
        let info = load_weights(&mut vs, path, "DRN-D segmentation (DRNSeg)", drn_extra)?;
        vs.freeze();
        Ok(DrnSeg {
            vs,
            net,
            config: cfg.clone(),
            weights: Some(info),
        })
    }

    /// Random backbone with the fixed bilinear upsampler: for tests and timing only.
    pub fn random(cfg: &DrnConfig, device: Device) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let mut net = DrnSegNet::new(&vs.root(), cfg)?;
        tch::no_grad(|| {
            net.up
                .copy_(&bilinear_up_kernel(cfg.num_classes).to_device(device))
        });
        vs.freeze();
        Ok(DrnSeg {
            vs,
            net,
            config: cfg.clone(),
            weights: None,
        })
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Converts the weights to `kind`; inputs follow. Float32 is what metrics use; float64
    /// is for checking the implementation against float64 references without rounding.
    pub fn set_kind(&mut self, kind: Kind) {
        self.vs.set_kind(kind);
    }

    /// Class logits of already normalised inputs.
    pub fn logits(&self, x: &Tensor) -> Tensor {
        let x = x.to_device(self.vs.device()).to_kind(self.vs.kind());
        tch::no_grad(|| self.net.logits(&x))
    }

    fn check_images(images: &Tensor) -> Result<()> {
        let s = images.size();
        if s.len() != 4 || s[1] != 3 {
            return Err(MetricsError::InvalidParam(format!(
                "DRN needs N x 3 x H x W images, got {s:?}"
            )));
        }
        Ok(())
    }

    /// GAN Compression's label map `N x size` (int64, CPU) for images in [0, 1]: DRN at
    /// the images' resolution, `LogSoftmax` over the classes, each class plane resized to
    /// `size` (height, width) with Pillow's float32 bilinear filter when it differs
    /// (`resize_4d_tensor`), argmax (the first of equal values, as NumPy's).
    pub fn predict(&self, images: &Tensor, size: [i64; 2]) -> Result<Tensor> {
        Self::check_images(images)?;
        let x = cityscapes_input(images)?;
        let lp = self.logits(&x).log_softmax(1, None::<Kind>);
        let s = lp.size();
        let lp = if [s[2], s[3]] == size {
            lp.to_device(Device::Cpu)
        } else {
            pil_bilinear_resize_f32(&lp, size)?
        };
        Ok(lp.argmax(1, false))
    }

    /// Label map at DRN's output resolution: the argmax of the logits (equal to
    /// [`Self::predict`]'s argmax of the log-probabilities unless two logits of a pixel are
    /// so close that subtracting the log-sum-exp rounds them to one float32 value).
    pub fn predict_at_input_size(&self, images: &Tensor) -> Result<Tensor> {
        Self::check_images(images)?;
        let x = cityscapes_input(images)?;
        Ok(self.logits(&x).argmax(1, false).to_device(Device::Cpu))
    }

    /// Adds the pixels of `images` to `cm` against `gt` (`N x H x W` train ids, ignore value
    /// allowed). Images of the ground truth's size (an evaluate stage's generator outputs)
    /// are scored by [`Self::predict_at_input_size`]; others by [`Self::predict`], which
    /// resizes the log-probabilities to the ground truth as GAN Compression does.
    pub fn update_confusion(
        &self,
        cm: &mut ConfusionMatrix,
        images: &Tensor,
        gt: &Tensor,
    ) -> Result<()> {
        let g = gt.size();
        if g.len() != 3 || images.size().first() != g.first() {
            return Err(MetricsError::Mismatch(format!(
                "ground truth must be N x H x W for {:?} images, got {g:?}",
                images.size()
            )));
        }
        let s = images.size();
        let pred = if s.len() == 4 && [s[2], s[3]] == [g[1], g[2]] {
            self.predict_at_input_size(images)?
        } else {
            self.predict(images, [g[1], g[2]])?
        };
        cm.update_tensors(&pred, gt).map_err(MetricsError::Mismatch)
    }
}
