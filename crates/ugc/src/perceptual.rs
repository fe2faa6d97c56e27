//! Perceptual feature networks for the distillation losses (Gram and feature L1).
//!
//! DESIGN §2: VGG16 features when the user supplies the weights, "the discriminator's
//! features otherwise". Pretrained weights are never downloaded and never swapped silently:
//! a configured VGG file that is missing or wrong is an error naming every bad tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use ugc_nn::{Discriminator, Mode};

use crate::error::MethodError;

/// A frozen network that maps an image batch in [-1, 1] to a list of feature maps.
pub trait FeatureNet {
    fn features(&self, x: &Tensor) -> Vec<Tensor>;
}

/// torchvision `vgg16().features` conv layers used up to relu4_3: (index, c_in, c_out).
const VGG16_CONVS: [(usize, i64, i64); 10] = [
    (0, 3, 64),
    (2, 64, 64),
    (5, 64, 128),
    (7, 128, 128),
    (10, 128, 256),
    (12, 256, 256),
    (14, 256, 256),
    (17, 256, 512),
    (19, 512, 512),
    (21, 512, 512),
];
/// Indices of the ReLUs whose outputs are returned: relu1_2, relu2_2, relu3_3, relu4_3.
const VGG16_TAPS: [usize; 4] = [3, 8, 15, 22];
/// Max-pool indices before relu4_3.
const VGG16_POOLS: [usize; 3] = [4, 9, 16];

/// VGG16 (torchvision layout, names `features.N.weight` / `features.N.bias`) up to relu4_3,
/// with ImageNet input normalisation. Frozen: no tensor requires a gradient.
pub struct Vgg16 {
    convs: HashMap<usize, (Tensor, Tensor)>,
    mean: Tensor,
    std: Tensor,
    path: PathBuf,
}

impl Vgg16 {
    /// Loads the conv layers from a safetensors file. Tensors outside `features.0..=21`
    /// (e.g. the classifier) are ignored; each missing or mis-shaped one is named.
    pub fn load(path: &Path, device: Device) -> Result<Self, MethodError> {
        if !path.is_file() {
            return Err(MethodError::Weights {
                path: path.to_path_buf(),
                reason: "VGG16 weights are configured (`vgg_weights`) but the file does not \
                         exist; supply torchvision's vgg16 state dict converted to \
                         safetensors, or remove `vgg_weights` to use the discriminator's \
                         features"
                    .into(),
            });
        }
        let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| MethodError::Weights {
                path: path.to_path_buf(),
                reason: format!("not a readable safetensors file: {e}"),
            })?
            .into_iter()
            .collect();
        let mut problems = Vec::new();
        let mut convs = HashMap::new();
        for (i, c_in, c_out) in VGG16_CONVS {
            let wn = format!("features.{i}.weight");
            let bn = format!("features.{i}.bias");
            let want_w = vec![c_out, c_in, 3, 3];
            let want_b = vec![c_out];
            let get = |n: &str, want: &[i64], problems: &mut Vec<String>| match tensors.get(n) {
                None => {
                    problems.push(format!("missing: {n}"));
                    None
                }
                Some(t) if t.size() != want => {
                    problems.push(format!(
                        "mis-shaped: {n} expected {want:?} found {:?}",
                        t.size()
                    ));
                    None
                }
                Some(t) => Some(t.to_kind(Kind::Float).to_device(device)),
            };
            let w = get(&wn, &want_w, &mut problems);
            let b = get(&bn, &want_b, &mut problems);
            if let (Some(w), Some(b)) = (w, b) {
                convs.insert(i, (w.set_requires_grad(false), b.set_requires_grad(false)));
            }
        }
        if !problems.is_empty() {
            return Err(MethodError::Weights {
                path: path.to_path_buf(),
                reason: format!("not a torchvision VGG16:\n{}", problems.join("\n")),
            });
        }
        let opts = (Kind::Float, device);
        Ok(Vgg16 {
            convs,
            mean: Tensor::from_slice(&[0.485f32, 0.456, 0.406])
                .view([1, 3, 1, 1])
                .to_device(device),
            std: Tensor::from_slice(&[0.229f32, 0.224, 0.225])
                .view([1, 3, 1, 1])
                .to_device(opts.1),
            path: path.to_path_buf(),
        })
    }

    /// The file the weights came from (for provenance in reports).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl FeatureNet for Vgg16 {
    fn features(&self, x: &Tensor) -> Vec<Tensor> {
        let mut h = ((x + 1.0) / 2.0 - &self.mean) / &self.std;
        let mut out = Vec::with_capacity(VGG16_TAPS.len());
        let last = *VGG16_TAPS.last().unwrap_or(&0);
        for i in 0..=last {
            if let Some((w, b)) = self.convs.get(&i) {
                h = h.conv2d(w, Some(b), [1, 1], [1, 1], [1, 1], 1);
            } else if VGG16_POOLS.contains(&i) {
                h = h.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
            } else {
                // Odd indices after a conv are the ReLUs of torchvision's layout.
                h = h.relu();
                if VGG16_TAPS.contains(&i) {
                    out.push(h.shallow_clone());
                }
            }
        }
        out
    }
}

/// The discriminator's intermediate features of `concat(cond, x)` (every scale, prediction
/// maps excluded), used when no VGG16 file is configured. Batch statistics are used but
/// running statistics are not updated (`Mode::Calibrate { momentum: 0 }`), so the feature
/// loss does not disturb the discriminator's state. Gradients flow to `x` only as far as the
/// caller's optimiser is concerned: the discriminator's own parameters also receive
/// gradients, which the D update clears before its backward.
pub struct DiscriminatorFeatures<'a> {
    disc: &'a dyn Discriminator,
    cond: Tensor,
}

impl<'a> DiscriminatorFeatures<'a> {
    /// Features of `disc` conditioned on the generator input `cond` (`[N, C_in, H, W]`).
    pub fn new(disc: &'a dyn Discriminator, cond: &Tensor) -> Self {
        DiscriminatorFeatures {
            disc,
            cond: cond.shallow_clone(),
        }
    }
}

impl FeatureNet for DiscriminatorFeatures<'_> {
    fn features(&self, x: &Tensor) -> Vec<Tensor> {
        let inp = Tensor::cat(&[&self.cond, x], 1);
        let scales = self.disc.forward(&inp, Mode::Calibrate { momentum: 0.0 });
        scales
            .into_iter()
            .flat_map(|mut s| {
                s.pop();
                s
            })
            .collect()
    }
}
