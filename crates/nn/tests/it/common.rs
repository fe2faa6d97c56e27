//! What the ugc-nn integration tests share: comparisons against float64 fixtures with
//! tolerances derived by `ugc-tolerance`, not tuned to one CPU's kernels.

use std::path::PathBuf;

use tch::{Kind, Tensor};
pub use ugc_tolerance::{ErrorBudget, Precision};

/// A file of `tests/fixtures/` (written there by its `*.py` script).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
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

/// The tensor kind a test runs a model in.
pub fn kind_of(p: Precision) -> Kind {
    match p {
        Precision::F32 => Kind::Float,
        Precision::F64 => Kind::Double,
    }
}

/// Checks `run` against float64 reference outputs twice: in float64 (the model's variables
/// and inputs converted exactly; this is the check that the implementation computes the
/// same function as the reference, to about 1e-11) and in float32 (the production path).
/// `run(kind)` builds and loads a fresh model, converts it to `kind`, and returns its
/// outputs in the order of `want`. Each output must be within `budget`'s bound for the
/// precision, at the scale of its reference.
pub fn assert_matches_reference(
    what: &str,
    budget: &ErrorBudget,
    want: &[(&str, &Tensor)],
    run: impl Fn(Kind) -> Vec<Tensor>,
) {
    for precision in [Precision::F64, Precision::F32] {
        let got = run(kind_of(precision));
        assert_eq!(got.len(), want.len(), "{what}: number of outputs");
        for (out, (name, reference)) in got.iter().zip(want) {
            assert_eq!(out.kind(), kind_of(precision), "{what} {name}: output kind");
            let scale = reference.abs().max().double_value(&[]);
            let bound = budget.bound(precision, scale);
            let d = max_abs_diff(out, reference);
            eprintln!("{what} {name} {precision:?}: max |diff| {d:.3e}, bound {bound:.3e}");
            assert!(
                d <= bound,
                "{what} {name} in {precision:?}: max |diff| {d:e} exceeds the derived bound \
                 {bound:e} (scale {scale})"
            );
        }
    }
}

/// Converts the float variables of `vs` to `kind` (integer buffers such as BN's
/// `num_batches_tracked` stay as they are).
pub fn convert_vars(vs: &mut tch::nn::VarStore, kind: Kind) {
    match kind {
        Kind::Double => vs.double(),
        _ => vs.float(),
    }
}
