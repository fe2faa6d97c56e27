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

/// torchvision `vgg16().features` conv layers up to relu4_3 as (index, c_in, c_out): the
/// tests' own statement of torchvision's layout (deliberately not the crate's constant, so a
/// mistake there is caught), for writing random VGG16 weights files.
pub const TORCHVISION_VGG16_CONVS: [(usize, i64, i64); 10] = [
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

/// synth -> split with `synth` and `split` over their defaults: (synth output, split output).
pub fn synth_and_split(
    synth: serde_json::Value,
    split: serde_json::Value,
) -> (tempfile::TempDir, tempfile::TempDir) {
    let synth_dir = tempfile::tempdir().unwrap();
    run(
        &ugc_data::SynthStage::new(schema("synth")),
        synth,
        &[],
        synth_dir.path(),
    )
    .unwrap();
    let split_dir = tempfile::tempdir().unwrap();
    run(
        &ugc_data::SplitStage::new(schema("split")),
        split,
        &[input("synth", synth_dir.path())],
        split_dir.path(),
    )
    .unwrap();
    (synth_dir, split_dir)
}
