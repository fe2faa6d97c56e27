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
    /// Loads the conv layers from torchvision's state dict as it comes
    /// (`vgg16-397923af.pth`, read by content by [`ugc_torch_ext::pth::read_state_dict`]:
    /// `torch.save` zip or legacy, or safetensors). Tensors outside `features.0..=21`
    /// (e.g. the classifier) are ignored; each missing or mis-shaped one is named.
    pub fn load(path: &Path, device: Device) -> Result<Self, MethodError> {
        if !path.is_file() {
            return Err(MethodError::Weights {
                path: path.to_path_buf(),
                reason: "VGG16 weights are configured (`vgg_weights`) but the file does not \
                         exist; supply torchvision's vgg16 state dict \
                         (vgg16-397923af.pth as torch.save wrote it, or safetensors), or remove `vgg_weights` to use the discriminator's \
                         features"
                    .into(),
            });
        }
        let tensors: HashMap<String, Tensor> = ugc_torch_ext::pth::read_state_dict(path)
            .map_err(|e| MethodError::Weights {
                path: path.to_path_buf(),
                reason: format!("not a readable weights file: {e}"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Writes, with the venv's torch: torchvision's VGG16 `features` tensors the loader
    /// reads (every conv up to relu4_3, real names and shapes: 7.6 M floats, 30 MB; the
    /// 528 MB of the full file are the classifier's, which the loader ignores, so one small
    /// `classifier.6.bias` stands for it) as `torch.save` zip (`vgg.pth`) and legacy
    /// (`vgg_legacy.pth`) files and as safetensors (`vgg.safetensors`), and `ref.safetensors`:
    /// an input `x` in [-1, 1] and the four taps of torchvision's `vgg16().features` layout
    /// (the `cfg D` Sequential, written out here: torchvision is not installed) in float64.
    const MAKE_VGG: &str = r#"
import sys, torch
from safetensors.torch import save_file
out = sys.argv[1]
torch.manual_seed(0)
cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512]
layers, c = [], 3
for v in cfg:
    if v == "M":
        layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
    else:
        layers += [torch.nn.Conv2d(c, v, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True)]
        c = v
features = torch.nn.Sequential(*layers)
sd = {f"features.{k}": v.detach().clone() for k, v in features.state_dict().items()}
sd["classifier.6.bias"] = torch.randn(1000)
torch.save(sd, f"{out}/vgg.pth")
torch.save(sd, f"{out}/vgg_legacy.pth", _use_new_zipfile_serialization=False)
save_file({k: v.contiguous() for k, v in sd.items()}, f"{out}/vgg.safetensors")
x = torch.rand(1, 3, 32, 32) * 2 - 1
mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
h = ((x + 1) / 2 - mean) / std
ref = {"x": x}
f64 = features.double()
h = h.double()
for i, layer in enumerate(f64):
    h = layer(h)
    if i in (3, 8, 15, 22):
        ref[f"tap{i}"] = h.clone()
save_file(ref, f"{out}/ref.safetensors")
"#;

    fn python() -> PathBuf {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
        assert!(
            p.exists(),
            "{} missing: scripts/setup.sh installs the venv whose torch also provides libtorch",
            p.display()
        );
        p
    }

    fn taps(vgg: &Vgg16, x: &Tensor) -> Vec<Tensor> {
        tch::no_grad(|| vgg.features(x))
    }

    #[test]
    fn torchvision_vgg16_loads_from_torch_save_files_and_matches_the_official_layout() {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new(python())
            .arg("-c")
            .arg(MAKE_VGG)
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "the VGG16 script failed");
        let refs: HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.path().join("ref.safetensors"))
                .unwrap()
                .into_iter()
                .collect();
        let x = &refs["x"];
        let from_st = taps(
            &Vgg16::load(&dir.path().join("vgg.safetensors"), Device::Cpu).unwrap(),
            x,
        );
        // Ten 3x3 convs with fan-ins 27 .. 4608: the worst-case float32 error of the deepest
        // tap against a float64 reference (earlier taps pass fewer layers, so the same bound
        // holds for them a fortiori).
        let budget = [27u64, 576, 576, 1152, 1152, 2304, 2304, 2304, 4608, 4608]
            .iter()
            .fold(ugc_tolerance::ErrorBudget::new(), |b, &k| b.products(k, 1));
        for (i, got) in from_st.iter().enumerate() {
            let want = &refs[&format!("tap{}", VGG16_TAPS[i])];
            assert_eq!(got.size(), want.size(), "tap {i}");
            let scale = want.abs().max().double_value(&[]);
            let bound = budget.bound(ugc_tolerance::Precision::F32, scale);
            let d = (got.to_kind(Kind::Double) - want)
                .abs()
                .max()
                .double_value(&[]);
            assert!(d <= bound, "tap {i}: max |diff| {d:e} > bound {bound:e}");
        }
        // The .pth files give the very tensors, so the very features, bit for bit.
        for f in ["vgg.pth", "vgg_legacy.pth"] {
            let got = taps(&Vgg16::load(&dir.path().join(f), Device::Cpu).unwrap(), x);
            for (g, w) in got.iter().zip(&from_st) {
                assert!(
                    g.equal(w),
                    "{f}: features differ from the safetensors file's"
                );
            }
        }
    }

    #[test]
    fn a_pth_missing_a_conv_or_not_a_weights_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let script = "import sys, torch\n\
                      torch.save({'features.0.weight': torch.zeros(64, 3, 3, 3)}, sys.argv[1])";
        let f = dir.path().join("partial.pth");
        let st = Command::new(python())
            .arg("-c")
            .arg(script)
            .arg(&f)
            .status()
            .unwrap();
        assert!(st.success());
        let e = Vgg16::load(&f, Device::Cpu)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("missing: features.0.bias") && e.contains("missing: features.21.weight"),
            "{e}"
        );
        let g = dir.path().join("garbage.pth");
        std::fs::write(&g, b"\x80\x02garbage").unwrap();
        let e = Vgg16::load(&g, Device::Cpu)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("not a readable weights file") && e.contains("garbage.pth"),
            "{e}"
        );
    }
}
