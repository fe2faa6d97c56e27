//! Helpers shared by the method's integration tests.

use std::path::Path;

use ugc_engine::{KindSchema, StageInput};

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

pub use ugc_engine::testing::{run_quick as run, run_with_defaults as run_with};
