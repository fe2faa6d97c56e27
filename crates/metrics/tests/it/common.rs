//! Shared helpers of the integration tests: fixture paths and the deterministic
//! "formula" weights that `fixtures/make_fixtures.py` also builds.

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};
use ugc_metrics::npy::read_npy;

/// A file of `tests/fixtures/` (written there by `make_fixtures.py` or `make_pil_fixtures.py`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The `.npy` fixture `name` as a tensor of its shape.
pub fn npy_tensor(name: &str) -> Tensor {
    let a = read_npy(&fixture(name)).unwrap();
    let shape: Vec<i64> = a.shape.iter().map(|&v| v as i64).collect();
    Tensor::from_slice(&a.data).reshape(shape.as_slice())
}

pub fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `(name, shape)` lines of a state-dict listing.
pub fn name_list(file: &str) -> Vec<(String, Vec<i64>)> {
    std::fs::read_to_string(fixture(file))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (n, s) = l.split_once(' ').unwrap();
            let shape = if s.is_empty() {
                vec![]
            } else {
                s.split(',').map(|v| v.parse().unwrap()).collect()
            };
            (n.to_string(), shape)
        })
        .collect()
}

/// SplitMix64 uniforms in [0, 1), identical to `splitmix_uniform` of the fixture script.
pub fn splitmix_uniform(n: usize, seed: u64) -> Vec<f64> {
    (0..n as u64)
        .map(|i| {
            let mut z = i.wrapping_add(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 * (2f64).powi(-53)
        })
        .collect()
}

/// The formula weight of tensor `name` (line `index` of the listing).
pub fn formula(name: &str, shape: &[i64], index: usize) -> Tensor {
    let n: i64 = shape.iter().product();
    let u: Vec<f64> = splitmix_uniform(n as usize, 1_000_003 * (index as u64 + 1))
        .into_iter()
        .map(|v| 2.0 * v - 1.0)
        .collect();
    let v: Vec<f32> = if name.ends_with("running_var") {
        u.iter().map(|x| (1.0 + 0.5 * x) as f32).collect()
    } else if name.ends_with("running_mean") || name.ends_with("bias") {
        u.iter().map(|x| (0.1 * x) as f32).collect()
    } else if shape.len() == 1 {
        u.iter().map(|x| (1.0 + 0.2 * x) as f32).collect()
    } else {
        let fan_in: i64 = shape[1..].iter().product();
        let k = 3f64.sqrt() * (2.0 / fan_in as f64).sqrt();
        u.iter().map(|x| (x * k) as f32).collect()
    };
    Tensor::from_slice(&v).reshape(shape)
}

pub fn formula_image(shape: &[i64], seed: u64) -> Tensor {
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = splitmix_uniform(n as usize, seed)
        .into_iter()
        .map(|x| x as f32)
        .collect();
    Tensor::from_slice(&v).reshape(shape)
}

/// Writes a safetensors file with formula weights for every listed tensor
/// (`num_batches_tracked` as an int64 scalar, like a PyTorch state dict).
pub fn write_formula_weights(
    list: &[(String, Vec<i64>)],
    path: &Path,
    skip: impl Fn(&str) -> bool,
    replace: impl Fn(&str) -> Option<Tensor>,
) {
    let mut tensors = Vec::new();
    for (i, (name, shape)) in list.iter().enumerate() {
        if skip(name) {
            continue;
        }
        let t = if name.ends_with("num_batches_tracked") {
            Tensor::zeros(shape.as_slice(), (Kind::Int64, tch::Device::Cpu))
        } else if let Some(t) = replace(name) {
            t
        } else {
            formula(name, shape, i)
        };
        tensors.push((name.clone(), t));
    }
    Tensor::write_safetensors(&tensors, path).unwrap();
}

/// Largest absolute difference of two equally shaped tensors, computed in float64 by
/// [`ugc_tolerance::max_abs_diff`]: NaN anywhere gives NaN, which fails every `<=` check.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "compared tensors differ in shape");
    let flat = |t: &Tensor| -> Vec<f64> {
        Vec::try_from(t.to_kind(Kind::Double).flatten(0, -1)).expect("a float64 vector")
    };
    ugc_tolerance::max_abs_diff(&flat(a), &flat(b))
}
