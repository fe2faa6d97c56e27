//! Agreement with the Python reference computations of `fixtures/make_fixtures.py`.

use crate::common::{expected, fixture, npy_tensor};
use tch::{Kind, Tensor};
use ugc_metrics::frechet::{
    DEFAULT_EPS, GaussianStats, frechet_distance, frechet_from_npy, frechet_with_offset,
    read_features,
};
use ugc_metrics::image_metrics::{SsimConfig, psnr, ssim};
use ugc_metrics::kid::{KidConfig, kernel_inception_distance};
use ugc_metrics::npy::read_npy;
use ugc_metrics::{MetricsError, miou_from_dirs};
use ugc_tolerance::{Precision, gamma};

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

/// How far two float64 Fréchet distances of `dim`-dimensional statistics may differ
/// (ugc-tolerance), relative to `fd`. The traces and means are sums accurate to `γ_N`; the
/// matrix square root is the weak step: an eigenvalue `λ` perturbed by `δ ≤ γ_D · ‖Σ‖` has
/// its root perturbed by up to `√δ` (the bound at a singular matrix; Higham, Functions of
/// Matrices, §6.1), and the trace adds `D` of them: `2D·√(γ_D · (tr Σ₁ + tr Σ₂))`.
fn frechet_within(a: &GaussianStats, b: &GaussianStats, fd: f64) -> f64 {
    let dim = a.sigma.size()[0] as u64;
    let trace = |s: &GaussianStats| f64::try_from(s.sigma.trace()).unwrap();
    let abs = 2.0 * dim as f64 * (gamma(dim, Precision::F64) * (trace(a) + trace(b))).sqrt();
    abs / fd.abs()
}

fn stats_of(name: &str) -> GaussianStats {
    GaussianStats::from_features(&read_features(&fixture(name)).unwrap()).unwrap()
}

#[test]
fn frechet_matches_scipy_sqrtm_formula() {
    let exp = expected();
    let v = frechet_from_npy(&fixture("frechet_a.npy"), &fixture("frechet_b.npy")).unwrap();
    let want = exp["frechet_ab"].as_f64().unwrap();
    eprintln!(
        "frechet well-conditioned: ours {v:.12} scipy {want:.12} rel {:.2e}",
        rel(v, want)
    );
    let within = frechet_within(&stats_of("frechet_a.npy"), &stats_of("frechet_b.npy"), want);
    assert!(rel(v, want) <= within, "{within}");
    // Symmetric in its arguments.
    let w = frechet_from_npy(&fixture("frechet_b.npy"), &fixture("frechet_a.npy")).unwrap();
    assert!(rel(w, want) <= within);
}

#[test]
fn frechet_matches_reference_on_rank_deficient_covariances() {
    let exp = expected();
    let c = fixture("frechet_small_c.npy");
    let d = fixture("frechet_small_d.npy");
    let sc = GaussianStats::from_features(&read_features(&c).unwrap()).unwrap();
    let sd = GaussianStats::from_features(&read_features(&d).unwrap()).unwrap();
    let r = frechet_distance(&sc, &sd, DEFAULT_EPS).unwrap();
    let want = exp["frechet_cd_singular"].as_f64().unwrap();
    eprintln!(
        "frechet N<D: ours {:.12} scipy {want:.12} rel {:.2e}",
        r.value,
        rel(r.value, want)
    );
    let within = frechet_within(&sc, &sd, want);
    assert!(rel(r.value, want) <= within, "{within}");
    assert_eq!(
        r.offset_applied,
        exp["frechet_cd_offset_applied"].as_bool().unwrap()
    );
}

#[test]
fn frechet_offset_formula_matches() {
    let exp = expected();
    let a =
        GaussianStats::from_features(&read_features(&fixture("frechet_a.npy")).unwrap()).unwrap();
    let b =
        GaussianStats::from_features(&read_features(&fixture("frechet_b.npy")).unwrap()).unwrap();
    let v = frechet_with_offset(&a, &b, 1e-3).unwrap();
    let want = exp["frechet_ab_offset_1e-3"].as_f64().unwrap();
    let within = frechet_within(&a, &b, want);
    assert!(rel(v, want) <= within, "{v} vs {want} (within {within})");
}

#[test]
fn frechet_refuses_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.npy");
    std::fs::write(&junk, b"not numpy").unwrap();
    let err = frechet_from_npy(&junk, &fixture("frechet_b.npy")).unwrap_err();
    assert!(matches!(err, MetricsError::Npy { .. }), "{err}");
    assert!(err.to_string().contains("junk.npy"), "{err}");
    let missing = dir.path().join("missing.npy");
    let err = frechet_from_npy(&fixture("frechet_a.npy"), &missing).unwrap_err();
    assert!(err.to_string().contains("missing.npy"), "{err}");
    // 24-d vs 48-d features.
    let err =
        frechet_from_npy(&fixture("frechet_a.npy"), &fixture("frechet_small_c.npy")).unwrap_err();
    assert!(matches!(err, MetricsError::Mismatch(_)), "{err}");
    // A 1-D array is not a feature matrix.
    let err = frechet_from_npy(&fixture("miou_gt.npy"), &fixture("frechet_a.npy")).unwrap_err();
    assert!(err.to_string().contains("2-D"), "{err}");
}

#[test]
fn kid_matches_clean_fid_estimator() {
    let exp = expected();
    let a = read_features(&fixture("kid_a.npy")).unwrap();
    let b = read_features(&fixture("kid_b.npy")).unwrap();
    // One subset holding all 120 samples: the estimate does not depend on the order.
    let cfg = KidConfig {
        num_subsets: 1,
        max_subset_size: 1000,
        seed: 5,
    };
    let r = kernel_inception_distance(&a, &b, &cfg).unwrap();
    let want = exp["kid_full"].as_f64().unwrap();
    eprintln!("kid: ours {:.12} numpy {want:.12}", r.mean);
    assert_eq!(r.subset_size, 120);
    // Float64 sums of N² = 14400 polynomial-kernel values: γ_{N²} relative to their sum
    // of magnitudes, which the unbiased estimate's cancellation may make up to ~100 times
    // the result (kernel values are O(1), the estimate a difference of their means).
    let within = 100.0 * gamma(120 * 120, Precision::F64);
    assert!(rel(r.mean, want) <= within, "{within}");
}

#[test]
fn ssim_and_psnr_match_numpy_scipy() {
    let exp = expected();
    let x = npy_tensor("img_x.npy");
    let y = npy_tensor("img_y.npy");
    let s = ssim(&x, &y, 1.0, &SsimConfig::default()).unwrap();
    let p = psnr(&x, &y, 1.0).unwrap();
    for i in 0..2 {
        let ws = exp["ssim"][i].as_f64().unwrap();
        let wp = exp["psnr"][i].as_f64().unwrap();
        eprintln!(
            "image {i}: ssim {:.12} vs {ws:.12}; psnr {:.12} vs {wp:.12}",
            s[i], p[i]
        );
        // Float64 throughout: an 11x11 Gaussian window (121 terms), then the mean over
        // the 3 x 32 x 32 map; SSIM is at most 1. PSNR is 10·log10 of a mean of 3072 squares:
        // its relative error becomes (10 / ln 10)·γ dB.
        let within_ssim = 4.0 * gamma(121 + 3 * 32 * 32, Precision::F64);
        let within_psnr = 10.0 / std::f64::consts::LN_10 * gamma(3 * 32 * 32, Precision::F64);
        assert!((s[i] - ws).abs() <= within_ssim);
        assert!((p[i] - wp).abs() <= within_psnr);
    }
    // Float32 inputs agree to float precision.
    let s32 = ssim(
        &x.to_kind(Kind::Float),
        &y.to_kind(Kind::Float),
        1.0,
        &SsimConfig::default(),
    )
    .unwrap();
    // The float32 images differ by at most u32 per pixel (values in [0, 1]) and SSIM is
    // computed from them in float64; a window's SSIM moves by at most 2 / C1 per unit of
    // its means (C1 = (0.01)^2 stabilises the luminance term).
    let within = 2.0 * ugc_tolerance::U_F32 / (0.01f64 * 0.01);
    assert!((s32[0] - s[0]).abs() <= within);
}

fn write_label_pngs(arr: &ugc_metrics::npy::NpyArray, dir: &std::path::Path) {
    let (n, h, w) = (arr.shape[0], arr.shape[1], arr.shape[2]);
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let px: Vec<u8> = arr.data[i * h * w..(i + 1) * h * w]
            .iter()
            .map(|&v| v as u8)
            .collect();
        let img = image::GrayImage::from_raw(w as u32, h as u32, px).unwrap();
        img.save(dir.join(format!("frame_{i:03}.png"))).unwrap();
    }
}

#[test]
fn miou_from_dirs_matches_fast_hist_reference() {
    let exp = expected();
    let dir = tempfile::tempdir().unwrap();
    let gt = read_npy(&fixture("miou_gt.npy")).unwrap();
    let pred = read_npy(&fixture("miou_pred.npy")).unwrap();
    write_label_pngs(&gt, &dir.path().join("gt"));
    write_label_pngs(&pred, &dir.path().join("pred"));
    let r = miou_from_dirs(
        &dir.path().join("pred"),
        &dir.path().join("gt"),
        6,
        Some(255),
    )
    .unwrap();
    let want = exp["miou"].as_f64().unwrap();
    eprintln!("miou: ours {:.15} numpy {want:.15}", r.value);
    // Integer pixel counts, then one division per class and a mean of 6: exact up to a
    // few float64 roundings of values at most 1.
    let within = 2.0 * gamma(6 + 2, Precision::F64);
    assert!((r.value - want).abs() <= within);
    assert_eq!(r.num_images, 3);
    for (c, w) in r
        .per_class
        .iter()
        .zip(exp["miou_per_class"].as_array().unwrap())
    {
        match (c, w.as_f64()) {
            (Some(a), Some(b)) => assert!((a - b).abs() <= within),
            (None, None) => {}
            other => panic!("per-class mismatch {other:?}"),
        }
    }
    assert_eq!(r.per_class[5], None, "class 5 never occurs");
    assert!(r.ignored_pixels > 0);
}

#[test]
fn miou_from_dirs_refuses_mismatched_folders() {
    let dir = tempfile::tempdir().unwrap();
    let gt = read_npy(&fixture("miou_gt.npy")).unwrap();
    write_label_pngs(&gt, &dir.path().join("gt"));
    write_label_pngs(&gt, &dir.path().join("pred"));
    std::fs::remove_file(dir.path().join("pred/frame_001.png")).unwrap();
    let err = miou_from_dirs(
        &dir.path().join("pred"),
        &dir.path().join("gt"),
        6,
        Some(255),
    )
    .unwrap_err();
    assert!(err.to_string().contains("frame_001.png"), "{err}");
    // Wrong number of classes: ground-truth value 4 is not a class of 3.
    write_label_pngs(&gt, &dir.path().join("pred"));
    let err = miou_from_dirs(
        &dir.path().join("pred"),
        &dir.path().join("gt"),
        3,
        Some(255),
    )
    .unwrap_err();
    assert!(err.to_string().contains("frame_000.png"), "{err}");
    // An RGB image is not a label map.
    image::RgbImage::new(32, 24)
        .save(dir.path().join("pred/frame_000.png"))
        .unwrap();
    let err = miou_from_dirs(
        &dir.path().join("pred"),
        &dir.path().join("gt"),
        6,
        Some(255),
    )
    .unwrap_err();
    assert!(err.to_string().contains("single-channel"), "{err}");
}

fn u8_planes(name: &str) -> (Vec<usize>, Vec<u8>) {
    let a = read_npy(&fixture(name)).unwrap();
    (a.shape.clone(), a.data.iter().map(|&v| v as u8).collect())
}

#[test]
fn resize_matches_pillow_bicubic_exactly() {
    let (s, src) = u8_planes("pil_src.npy");
    let (h, w) = (s[1], s[2]);
    for (file, (oh, ow)) in [("pil_up.npy", (45, 61)), ("pil_down.npy", (9, 13))] {
        let (_, want) = u8_planes(file);
        let ours: Vec<u8> = src
            .chunks_exact(h * w)
            .flat_map(|p| ugc_metrics::resize::pil_bicubic_plane(p, h, w, oh, ow))
            .collect();
        let differing = ours.iter().zip(&want).filter(|(a, b)| a != b).count();
        eprintln!(
            "{file}: {differing} of {} bytes differ from Pillow",
            want.len()
        );
        assert_eq!(differing, 0);
    }
    // Through the tensor helper (values k/255).
    let t = Tensor::from_slice(&src)
        .reshape([1, 3, h as i64, w as i64])
        .to_kind(Kind::Float)
        / 255.0;
    let r = ugc_metrics::resize::pil_bicubic_resize(&t, [45, 61]).unwrap();
    let (_, want) = u8_planes("pil_up.npy");
    let got: Vec<f32> = Vec::try_from(&(r * 255.0).round().flatten(0, -1)).unwrap();
    assert!(got.iter().zip(&want).all(|(a, &b)| *a == b as f32));
}
