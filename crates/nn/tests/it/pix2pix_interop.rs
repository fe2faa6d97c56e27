//! Official-name loading for the pix2pix families: fixtures made by
//! `tests/fixtures/make_pix2pix.py` from torch modules that mirror the official classes.

use crate::common::{ErrorBudget, assert_matches_reference, convert_vars, fixture};
use tch::{Device, Kind, Tensor, nn::VarStore};
use ugc_nn::{Arch, ArchConfig, Mode, NormKind, build_generator};

fn io(name: &str) -> (Tensor, Tensor) {
    let t = Tensor::read_safetensors(fixture(&format!("{name}_io.safetensors"))).unwrap();
    let get = |k: &str| t.iter().find(|(n, _)| n == k).unwrap().1.shallow_clone();
    (get("input"), get("output"))
}

/// Loads the official-named fixture `name` into our generator and checks its eval output
/// against the float64 reference, in float64 and in float32, within `budget`.
fn check_generator(cfg: ArchConfig, name: &str, budget: ErrorBudget) {
    let weights = fixture(&format!("{name}.safetensors"));
    let report = ugc_nn::export::check_weights(&cfg, &weights).unwrap();
    assert!(report.is_ok(), "{report}");
    let (x, y) = io(name);
    assert_eq!(
        y.kind(),
        Kind::Double,
        "fixture outputs are float64 references"
    );
    assert_matches_reference(name, &budget, &[("output", &y)], |kind| {
        let mut vs = VarStore::new(Device::Cpu);
        let g = build_generator(&vs.root(), &cfg).unwrap();
        vs.load(&weights).unwrap();
        convert_vars(&mut vs, kind);
        let out =
            tch::no_grad(|| g.forward(&x.to_kind(kind), &g.search_space().largest(), Mode::Eval))
                .unwrap();
        vec![out]
    });
}

#[test]
fn resnet_loads_official_names_and_matches_pytorch() {
    let cfg = ArchConfig {
        ngf: 4,
        n_blocks: 2,
        ..ArchConfig::new(Arch::Pix2PixResnet)
    };
    // 10 convolutions on the path (stem 7x7x3 = 147 .. head 7x7x4 = 196 terms); 9 instance
    // norms, two sums each over at most 32x32 values.
    let budget = ErrorBudget::new().products(196, 10).sums(32 * 32, 2 * 9);
    check_generator(cfg, "resnet_tiny", budget);
}

#[test]
fn mobile_resnet_loads_official_names_and_matches_pytorch() {
    let cfg = ArchConfig {
        ngf: 4,
        n_blocks: 3,
        ..ArchConfig::new(Arch::MobileResnet)
    };
    // stem, 2 downs, 3 blocks of 2 separable convs (depthwise + pointwise: 12), 2 ups, head:
    // 18 convolutions of at most 7x7x4 = 196 terms; at most 20 instance norms over <= 32x32.
    let budget = ErrorBudget::new().products(196, 18).sums(32 * 32, 2 * 20);
    check_generator(cfg, "mobile_tiny", budget);
}

#[test]
fn unet_loads_official_names_and_matches_pytorch() {
    let cfg = ArchConfig {
        ngf: 4,
        num_downs: 5,
        norm: NormKind::Batch,
        ..ArchConfig::new(Arch::Pix2PixUnet)
    };
    // 5 down and 5 up (transposed) 4x4 convolutions; the widest sums 64 channels x 16 taps.
    // Batch norm in eval mode uses running statistics: no sums.
    let budget = ErrorBudget::new().products(64 * 16, 10);
    check_generator(cfg, "unet_tiny", budget);
}

#[test]
fn patchgan_loads_official_names_and_matches_pytorch() {
    let cfg = ugc_nn::DiscConfig {
        ndf: 4,
        ..ugc_nn::DiscConfig::patchgan(6, 4)
    };
    let (x, y) = io("patchgan_tiny");
    // 5 4x4 convolutions, the widest over 32 channels x 16 taps; BN in eval mode.
    let budget = ErrorBudget::new().products(32 * 16, 5);
    assert_matches_reference("patchgan_tiny", &budget, &[("output", &y)], |kind| {
        let mut vs = VarStore::new(Device::Cpu);
        let d = ugc_nn::build_discriminator(&vs.root(), &cfg).unwrap();
        vs.load(fixture("patchgan_tiny.safetensors")).unwrap();
        assert_eq!(vs.variables().len(), 22);
        convert_vars(&mut vs, kind);
        let out = tch::no_grad(|| d.forward(&x.to_kind(kind), Mode::Eval));
        assert_eq!(out.len(), 1);
        vec![out[0].last().unwrap().shallow_clone()]
    });
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
