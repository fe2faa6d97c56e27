//! Helpers shared by the method's integration tests.

use std::borrow::Borrow;
use std::path::Path;

use serde_json::Value;
use ugc_engine::testing::{run_stage, torch_rng, with_defaults};
use ugc_engine::{
    CancelToken, KindSchema, NullProgress, Progress, StageError, StageInput, StageKind,
};

/// The schema of a built-in kind (`"synth"`; a trailing `.yaml` is accepted).
pub fn schema(name: &str) -> KindSchema {
    let name = name.trim_end_matches(".yaml");
    ugc_kinds::Kind::from_name(name)
        .unwrap_or_else(|| panic!("no kind `{name}`"))
        .schema()
}

/// The committed output `dir` of a dep of `kind`, named after its kind.
pub fn input(kind: &str, dir: &Path) -> StageInput {
    ugc_engine::testing::input(kind, kind, dir)
}

/// Runs `kind` with `over` merged over its schema's defaults (already merged parameters
/// pass through unchanged), holding libtorch's generator ([`torch_rng`]) for the run.
pub fn run_with(
    kind: &dyn StageKind,
    over: impl Borrow<Value>,
    inputs: &[StageInput],
    out: &Path,
    scratch: &Path,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<(), StageError> {
    let params = with_defaults(kind.schema(), over.borrow().clone());
    let _rng = torch_rng();
    run_stage(kind, &params, inputs, out, scratch, progress, cancel)
}

/// [`run_with`] with a fresh scratch folder, no progress and no cancel.
pub fn run(
    kind: &dyn StageKind,
    over: impl Borrow<Value>,
    inputs: &[StageInput],
    out: &Path,
) -> Result<(), StageError> {
    let scratch = tempfile::tempdir().unwrap();
    run_with(
        kind,
        over,
        inputs,
        out,
        scratch.path(),
        &NullProgress,
        &CancelToken::new(),
    )
}
