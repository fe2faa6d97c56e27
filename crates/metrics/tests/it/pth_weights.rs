//! The official evaluation weights load as `torch.save` wrote them: the same formula weights
//! saved as safetensors and as `.pth` by the venv's torch (under the official file names,
//! the DRN with DataParallel's `module.` prefix inside a `state_dict` entry as GAN
//! Compression's checkpoints hold it) give bit-identical networks.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{formula_image, name_list, write_formula_weights};
use tch::{Device, Kind};
use ugc_metrics::drn::{DrnConfig, DrnSeg, bilinear_up_kernel};
use ugc_metrics::features::FeatureExtractor;
use ugc_metrics::inception::FidInception;

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(p.is_file(), "{} missing: run scripts/setup.sh", p.display());
    p
}

/// `torch.save`s the safetensors file `src` at `dst`, with `prefix` on every name and,
/// when `wrap`, inside `{"state_dict": ..., "epoch": 3}`.
fn to_pth(src: &Path, dst: &Path, prefix: &str, wrap: bool) {
    let code = "import sys, torch\n\
        from safetensors.torch import load_file\n\
        sd = {sys.argv[3] + k: v for k, v in load_file(sys.argv[1]).items()}\n\
        torch.save({'state_dict': sd, 'epoch': 3} if sys.argv[4] == '1' else sd, sys.argv[2])";
    let out = Command::new(python())
        .args(["-c", code])
        .arg(src)
        .arg(dst)
        .arg(prefix)
        .arg(if wrap { "1" } else { "0" })
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn official_pth_files_load_as_they_come() {
    let dir = tempfile::tempdir().unwrap();
    let list = name_list("inception_fid_names.txt");
    let st = dir.path().join("inception.safetensors");
    write_formula_weights(&list, &st, |_| false, |_| None);
    let pth = dir.path().join("pt_inception-2015-12-05-6726825d.pth");
    to_pth(&st, &pth, "", false);
    let a = FidInception::load(&st, Device::Cpu).unwrap();
    let b = FidInception::load(&pth, Device::Cpu).unwrap();
    let x = formula_image(&[2, 3, 64, 80], 5);
    // Same bits in, same kernels: equal features, not merely close.
    assert!(a.features(&x).unwrap().equal(&b.features(&x).unwrap()));
    assert_eq!(
        b.identity().weights.unwrap().path.file_name().unwrap(),
        "pt_inception-2015-12-05-6726825d.pth"
    );

    let list = name_list("drn_d_105_seg_names.txt");
    let st = dir.path().join("drn.safetensors");
    write_formula_weights(
        &list,
        &st,
        |_| false,
        |n| (n == "up.weight").then(|| bilinear_up_kernel(19)),
    );
    let pth = dir.path().join("drn-d-105_ms_cityscapes.pth");
    to_pth(&st, &pth, "module.", true);
    let cfg = DrnConfig::d105(19);
    let a = DrnSeg::load(&st, &cfg, Device::Cpu).unwrap();
    let b = DrnSeg::load(&pth, &cfg, Device::Cpu).unwrap();
    let x = formula_image(&[1, 3, 32, 48], 11).to_kind(Kind::Float);
    assert!(a.logits(&x).equal(&b.logits(&x)));
}
