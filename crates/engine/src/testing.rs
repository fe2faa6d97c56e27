//! Running a stage kind without the engine, for the kinds' own tests: parameters merged
//! over the schema's defaults as the spec loader merges them, a context built by hand, the
//! CPU device, no environment.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde_json::Value;

use crate::stage::{
    CancelToken, DeviceKind, KindSchema, Progress, StageContext, StageError, StageInput, StageKind,
};

/// Serialises [`run_stage`] calls within one test process. Stage code may rely on
/// process-wide state (libtorch's RNG and thread count); in the product every stage is its
/// own process, but parallel tests in one binary would interleave it and break bit-exact
/// checks such as "resume gives the same weights".
static STAGE_RUNS: Mutex<()> = Mutex::new(());

/// The schema's defaults with `over` (a JSON object) written on top: a given key replaces
/// the default whole.
///
/// # Panics
/// If `over` is not a JSON object (a test bug).
pub fn with_defaults(schema: &KindSchema, over: Value) -> Value {
    let mut m = serde_json::Map::new();
    for (k, p) in &schema.params {
        if let Some(d) = &p.default {
            m.insert(k.clone(), d.clone());
        }
    }
    for (k, v) in over
        .as_object()
        .expect("stage params must be a JSON object")
    {
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m)
}

/// An upstream output outside any matrix.
pub fn input(name: &str, kind: &str, dir: &Path) -> StageInput {
    StageInput {
        name: name.into(),
        node: name.into(),
        point: BTreeMap::new(),
        kind: kind.into(),
        dir: dir.to_path_buf(),
    }
}

/// Runs `kind` with resolved `params` on the CPU, one stage run at a time per process.
pub fn run_stage(
    kind: &dyn StageKind,
    params: &Value,
    inputs: &[StageInput],
    out: &Path,
    scratch: &Path,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<(), StageError> {
    let _serial = STAGE_RUNS.lock().unwrap_or_else(|e| e.into_inner());
    let env = BTreeMap::new();
    let ctx = StageContext {
        node: "n",
        kind: &kind.schema().kind,
        params,
        inputs,
        out_dir: out,
        scratch_dir: scratch,
        device: DeviceKind::Cpu,
        progress,
        cancel,
        env: &env,
    };
    kind.run(&ctx)
}
