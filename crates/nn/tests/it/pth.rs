//! `.pth` files as `torch.save` writes them (zip and legacy formats, DataParallel prefixes,
//! nested checkpoints) load to the same bits as the safetensors they were made from. The
//! files are written at test time by `tests/fixtures/make_pth.py` with the venv's torch,
//! so they are what the installed torch writes, not fixtures that could drift from it.

use std::path::{Path, PathBuf};
use std::process::Command;

use tch::{Device, Kind, Tensor, nn::VarStore};
use ugc_nn::export::{check_weights, export_subnet, load_weights, read_weights};
use ugc_nn::pth::{WeightsFormat, sniff_format};
use ugc_nn::{Arch, ArchConfig, NnError, NormKind, build_generator};

use crate::common::fixture;

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: scripts/setup.sh installs the venv whose torch also provides libtorch",
        p.display()
    );
    p
}

/// Runs make_pth.py on `src` into `out`.
fn make_pth(src: &Path, out: &Path) {
    let st = Command::new(python())
        .arg(fixture("make_pth.py"))
        .arg(src)
        .arg(out)
        .status()
        .expect("running make_pth.py");
    assert!(st.success(), "make_pth.py failed: {st}");
}

/// The raw bytes of a tensor (so -0.0 and 0.0, or NaN payloads, would differ).
fn bytes_of(t: &Tensor) -> Vec<u8> {
    let c = t.contiguous();
    let n = c.numel() * c.kind().elt_size_in_bytes();
    let mut v = vec![0u8; n];
    c.copy_data_u8(&mut v, c.numel());
    v
}

fn assert_same_bits(what: &str, got: &[(String, Tensor)], want: &[(String, Tensor)]) {
    let mut got: Vec<&(String, Tensor)> = got.iter().collect();
    let mut want: Vec<&(String, Tensor)> = want.iter().collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let names = |v: &[&(String, Tensor)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want), "{what}: tensor names");
    for ((n, a), (_, b)) in got.iter().zip(&want) {
        assert_eq!(a.kind(), b.kind(), "{what} `{n}`: dtype");
        assert_eq!(a.size(), b.size(), "{what} `{n}`: shape");
        assert_eq!(a.device(), Device::Cpu, "{what} `{n}`: device");
        assert!(bytes_of(a) == bytes_of(b), "{what} `{n}`: bytes differ");
    }
}

/// A tiny generator of `cfg` with random weights from our VarStore, written as
/// safetensors, and the torch.save variants of it made from that file.
fn exported(cfg: &ArchConfig, dir: &Path) -> PathBuf {
    tch::manual_seed(7);
    let vs = VarStore::new(Device::Cpu);
    let _g = build_generator(&vs.root(), cfg).unwrap();
    // Non-trivial BN statistics and step counts, so buffers are checked too.
    tch::no_grad(|| {
        for (n, mut v) in vs.variables() {
            if n.ends_with("running_var") {
                let _ = v.uniform_(0.5, 2.0);
            } else if n.ends_with("running_mean") {
                let _ = v.normal_(0.0, 1.0);
            } else if n.ends_with("num_batches_tracked") {
                let _ = v.fill_(12345);
            }
        }
    });
    let st = dir.join("g.safetensors");
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&vars, &st).unwrap();
    make_pth(&st, dir);
    st
}

const VARIANTS: &[&str] = &[
    "plain",
    "plain_legacy",
    "dp",
    "dp_legacy",
    "nested",
    "nested_legacy",
    "ckpt",
    "ckpt_legacy",
    "p4",
    "p4_legacy",
];

fn generators_from_pth_match_the_safetensors_export(cfg: ArchConfig) {
    let dir = tempfile::tempdir().unwrap();
    let st = exported(&cfg, dir.path());
    let want = read_weights(&st).unwrap();
    assert_eq!(sniff_format(&st).unwrap(), WeightsFormat::Safetensors);
    let reference = load_weights(&cfg, &st, Device::Cpu).unwrap();
    let ref_dir = dir.path().join("ref_model");
    let full = reference.generator.search_space().largest();
    export_subnet(reference.generator.as_ref(), &full, &ref_dir).unwrap();
    let ref_model = std::fs::read(ref_dir.join("model.safetensors")).unwrap();
    for v in VARIANTS {
        let f = dir.path().join(format!("{v}.pth"));
        let fmt = if v.ends_with("_legacy") {
            WeightsFormat::TorchLegacy
        } else {
            WeightsFormat::TorchZip
        };
        assert_eq!(sniff_format(&f).unwrap(), fmt, "{v}");
        assert_same_bits(v, &read_weights(&f).unwrap(), &want);
        let report = check_weights(&cfg, &f).unwrap();
        assert!(report.is_ok(), "{v}: {report}");
        // The verbs' path: build, load, export; the exported model is byte-identical.
        let loaded = load_weights(&cfg, &f, Device::Cpu).unwrap();
        let vars: Vec<(String, Tensor)> = loaded.vs.variables().into_iter().collect();
        let ref_vars: Vec<(String, Tensor)> = reference.vs.variables().into_iter().collect();
        assert_same_bits(&format!("{v} loaded"), &vars, &ref_vars);
        let out = dir.path().join(format!("{v}_model"));
        export_subnet(loaded.generator.as_ref(), &full, &out).unwrap();
        assert!(
            std::fs::read(out.join("model.safetensors")).unwrap() == ref_model,
            "{v}: exported model.safetensors differs from the one exported from safetensors"
        );
    }
}

#[test]
fn resnet_pth_zip_legacy_dataparallel_nested_load_bit_for_bit() {
    generators_from_pth_match_the_safetensors_export(ArchConfig {
        ngf: 4,
        n_blocks: 2,
        ..ArchConfig::new(Arch::Pix2PixResnet)
    });
}

#[test]
fn batch_norm_unet_pth_keeps_running_stats_and_int64_counters() {
    generators_from_pth_match_the_safetensors_export(ArchConfig {
        ngf: 4,
        num_downs: 5,
        norm: NormKind::Batch,
        ..ArchConfig::new(Arch::Pix2PixUnet)
    });
}

#[test]
fn every_dtype_and_strided_views_read_as_torch_wrote_them() {
    let dir = tempfile::tempdir().unwrap();
    // make_pth.py needs a source state dict; the dtype files do not depend on it.
    let st = dir.path().join("src.safetensors");
    Tensor::write_safetensors(
        &[("w", &Tensor::zeros([2], (Kind::Float, Device::Cpu)))],
        &st,
    )
    .unwrap();
    make_pth(&st, dir.path());
    let want = Tensor::read_safetensors(dir.path().join("dtypes_ref.safetensors")).unwrap();
    for f in ["dtypes.pth", "dtypes_legacy.pth"] {
        let got = read_weights(&dir.path().join(f)).unwrap();
        assert_same_bits(f, &got, &want);
    }
}

/// Offset of the first data byte of record `name` in a zip file: its local header (30
/// bytes, then the name, then the extra field that torch uses to align data) comes first.
fn local_record(zip: &[u8], name: &str) -> usize {
    let at = zip
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .unwrap_or_else(|| panic!("no record {name}"));
    let header = at - 30;
    assert_eq!(
        &zip[header..header + 4],
        b"PK\x03\x04",
        "{name}: local header"
    );
    let extra = u16::from_le_bytes([zip[header + 28], zip[header + 29]]) as usize;
    at + name.len() + extra
}

fn weights_err(f: &Path) -> String {
    match read_weights(f) {
        Err(e @ NnError::Weights { .. }) => {
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(
                msg.starts_with(&format!("weights file {}", f.display())),
                "error does not name the file: {msg}"
            );
            msg
        }
        Err(e) => panic!("{}: not a weights error: {e:?}", f.display()),
        Ok(_) => panic!("{} was read", f.display()),
    }
}

#[test]
fn non_state_dicts_unknown_globals_bad_dtypes_and_corrupt_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let st = exported(
        &ArchConfig {
            ngf: 4,
            n_blocks: 2,
            ..ArchConfig::new(Arch::Pix2PixResnet)
        },
        d,
    );
    let e = weights_err(&d.join("list.pth"));
    assert!(
        e.contains("not a state dict") && e.contains("a list"),
        "{e}"
    );
    let e = weights_err(&d.join("two.pth"));
    assert!(e.contains("several state dicts (`ema`, `online`)"), "{e}");
    let e = weights_err(&d.join("evil.pth"));
    assert!(
        e.contains("not a state dict") && e.contains("system") && e.contains("not run"),
        "{e}"
    );
    assert!(
        !d.join("pwned").exists(),
        "the pickled os.system call was run"
    );
    let e = weights_err(&d.join("complex.pth"));
    assert!(
        e.contains("`w`") && e.contains("unsupported dtype") && e.contains("ComplexFloat"),
        "{e}"
    );
    let e = weights_err(&d.join("script.pt"));
    assert!(e.contains("TorchScript"), "{e}");

    // Corruption: a truncated zip, a truncated legacy file, a legacy file whose pickle is
    // damaged, and a file that is none of the formats.
    let zip = std::fs::read(d.join("plain.pth")).unwrap();
    let f = d.join("trunc.pth");
    std::fs::write(&f, &zip[..zip.len() / 2]).unwrap();
    let e = weights_err(&f);
    assert!(e.contains("corrupt zip"), "{e}");
    // One flipped bit in a tensor's record, and one in the pickle: the zip CRCs catch both.
    let data0 = local_record(&zip, "plain/data/0");
    let mut bad = zip.clone();
    bad[data0] ^= 0x01;
    std::fs::write(&f, &bad).unwrap();
    let e = weights_err(&f);
    assert!(e.contains("plain/data/0") && e.contains("checksum"), "{e}");
    let pkl = local_record(&zip, "plain/data.pkl");
    let mut bad = zip.clone();
    bad[pkl + 40] ^= 0x01;
    std::fs::write(&f, &bad).unwrap();
    let e = weights_err(&f);
    assert!(e.contains("data.pkl") && e.contains("checksum"), "{e}");
    let legacy = std::fs::read(d.join("plain_legacy.pth")).unwrap();
    std::fs::write(&f, &legacy[..legacy.len() - 100]).unwrap();
    let e = weights_err(&f);
    assert!(e.contains("truncated"), "{e}");
    let mut bad = legacy.clone();
    bad[3] ^= 0xff; // inside the magic number's LONG1
    std::fs::write(&f, &bad).unwrap();
    let e = weights_err(&f);
    assert!(e.contains("magic number"), "{e}");
    std::fs::write(&f, b"\x80\x02}q\x00.").unwrap();
    let e = weights_err(&f);
    assert!(e.contains("no torch magic number"), "{e}");
    std::fs::write(&f, b"not weights at all").unwrap();
    let e = weights_err(&f);
    assert!(e.contains("not a safetensors file"), "{e}");

    // check_weights and the spectral-norm fold go through the same reader.
    let e = check_weights(
        &ArchConfig {
            ngf: 4,
            n_blocks: 2,
            ..ArchConfig::new(Arch::Pix2PixResnet)
        },
        &d.join("list.pth"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not a state dict"), "{e}");
    assert!(st.exists());
}

#[test]
fn spectral_norm_fold_reads_a_pth_like_the_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = fixture("gaugan_tiny_spectral.safetensors");
    make_pth(&src, d);
    let a = d.join("a.safetensors");
    let b = d.join("b.safetensors");
    let mut fa = ugc_nn::spade::fold_spectral_norm_file(&src, &a).unwrap();
    let mut fb = ugc_nn::spade::fold_spectral_norm_file(&d.join("dp_legacy.pth"), &b).unwrap();
    fa.sort();
    fb.sort();
    assert!(!fa.is_empty());
    assert_eq!(fa, fb);
    assert_same_bits(
        "folded",
        &Tensor::read_safetensors(&b).unwrap(),
        &Tensor::read_safetensors(&a).unwrap(),
    );
}
