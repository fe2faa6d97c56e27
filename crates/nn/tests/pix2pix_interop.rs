//! Official-name loading for the pix2pix families: fixtures made by
//! `tests/fixtures/make_pix2pix.py` from torch modules that mirror the official classes.

use std::path::PathBuf;

use tch::{Device, Kind, Tensor, nn::VarStore};
use ugc_nn::{Arch, ArchConfig, Mode, NormKind, build_generator};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn io(name: &str) -> (Tensor, Tensor) {
    let t = Tensor::read_safetensors(fixture(&format!("{name}_io.safetensors"))).unwrap();
    let get = |k: &str| t.iter().find(|(n, _)| n == k).unwrap().1.shallow_clone();
    (get("input"), get("output"))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn check_generator(cfg: ArchConfig, name: &str) {
    let mut vs = VarStore::new(Device::Cpu);
    let g = build_generator(&vs.root(), &cfg).unwrap();
    let report =
        ugc_nn::export::check_weights(&cfg, &fixture(&format!("{name}.safetensors"))).unwrap();
    assert!(report.is_ok(), "{report}");
    vs.load(fixture(&format!("{name}.safetensors"))).unwrap();
    let (x, y) = io(name);
    let out = tch::no_grad(|| g.forward(&x, &g.search_space().largest(), Mode::Eval)).unwrap();
    assert_eq!(out.size(), y.size());
    let d = max_abs_diff(&out, &y);
    assert!(d < 1e-4, "{name}: max |diff| = {d}");
    assert_eq!(out.kind(), Kind::Float);
}

#[test]
fn resnet_loads_official_names_and_matches_pytorch() {
    let cfg = ArchConfig {
        ngf: 4,
        n_blocks: 2,
        ..ArchConfig::new(Arch::Pix2PixResnet)
    };
    check_generator(cfg, "resnet_tiny");
}

#[test]
fn mobile_resnet_loads_official_names_and_matches_pytorch() {
    let cfg = ArchConfig {
        ngf: 4,
        n_blocks: 3,
        ..ArchConfig::new(Arch::MobileResnet)
    };
    check_generator(cfg, "mobile_tiny");
}

#[test]
fn unet_loads_official_names_and_matches_pytorch() {
    let cfg = ArchConfig {
        ngf: 4,
        num_downs: 5,
        norm: NormKind::Batch,
        ..ArchConfig::new(Arch::Pix2PixUnet)
    };
    check_generator(cfg, "unet_tiny");
}

#[test]
fn patchgan_loads_official_names_and_matches_pytorch() {
    let cfg = ugc_nn::DiscConfig {
        ndf: 4,
        ..ugc_nn::DiscConfig::patchgan(6, 4)
    };
    let mut vs = VarStore::new(Device::Cpu);
    let d = ugc_nn::build_discriminator(&vs.root(), &cfg).unwrap();
    vs.load(fixture("patchgan_tiny.safetensors")).unwrap();
    assert_eq!(vs.variables().len(), 22);
    let (x, y) = io("patchgan_tiny");
    let out = tch::no_grad(|| d.forward(&x, Mode::Eval));
    assert_eq!(out.len(), 1);
    let pred = out[0].last().unwrap();
    assert_eq!(pred.size(), y.size());
    assert!(max_abs_diff(pred, &y) < 1e-4);
}

/// An exported standard model has exactly the official state-dict names and shapes, so
/// PyTorch's `load_state_dict(strict=True)` accepts it.
#[test]
fn exported_standard_models_have_the_official_state_dict() {
    use ugc_nn::export::{export_subnet, file_tensors};
    let cases = [
        (
            ArchConfig {
                ngf: 4,
                n_blocks: 2,
                ..ArchConfig::new(Arch::Pix2PixResnet)
            },
            "resnet_tiny",
        ),
        (
            ArchConfig {
                ngf: 4,
                n_blocks: 3,
                ..ArchConfig::new(Arch::MobileResnet)
            },
            "mobile_tiny",
        ),
        (
            ArchConfig {
                ngf: 4,
                num_downs: 5,
                ..ArchConfig::new(Arch::Pix2PixUnet)
            },
            "unet_tiny",
        ),
    ];
    for (cfg, name) in cases {
        let vs = VarStore::new(Device::Cpu);
        let g = build_generator(&vs.root(), &cfg).unwrap();
        let dir = tempfile::tempdir().unwrap();
        export_subnet(g.as_ref(), &g.search_space().largest(), dir.path()).unwrap();
        let ours = file_tensors(&dir.path().join("model.safetensors")).unwrap();
        let official = file_tensors(&fixture(&format!("{name}.safetensors"))).unwrap();
        assert_eq!(ours, official, "{name}");
    }
}
