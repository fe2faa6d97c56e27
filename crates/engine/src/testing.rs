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
        rank: None,
    };
    kind.run(&ctx)
}

/// [`run_stage`] with `over` merged over the kind's schema defaults ([`with_defaults`];
/// already merged parameters pass through unchanged), holding [`torch_rng`] for the run.
pub fn run_with_defaults(
    kind: &dyn StageKind,
    over: impl std::borrow::Borrow<Value>,
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

/// [`run_with_defaults`] with a fresh scratch folder, no progress and no cancel.
///
/// # Panics
/// If no temporary folder can be made (a test environment problem).
pub fn run_quick(
    kind: &dyn StageKind,
    over: impl std::borrow::Borrow<Value>,
    inputs: &[StageInput],
    out: &Path,
) -> Result<(), StageError> {
    let scratch = tempfile::tempdir().expect("temp dir for the scratch folder");
    run_with_defaults(
        kind,
        over,
        inputs,
        out,
        scratch.path(),
        &crate::stage::NullProgress,
        &CancelToken::new(),
    )
}

/// Every file under `dir` (recursively) by its path relative to `dir`, with its bytes: what
/// a stage committed, for "resumed / relocated runs commit the same bytes" checks.
///
/// # Panics
/// If `dir` cannot be read (a test bug).
pub fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let rd = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in rd {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).expect("under base");
                let bytes =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.insert(rel.to_string_lossy().into_owned(), bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Asserts that `a` and `b` hold the same files with the same bytes, naming the first
/// file that is missing or differs.
///
/// # Panics
/// On any difference.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (read_tree(a), read_tree(b));
    let names = |t: &BTreeMap<String, Vec<u8>>| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&ta),
        names(&tb),
        "the two outputs hold different files"
    );
    // Every differing file, and the text of the small text ones: a flaky difference is then
    // diagnosable from the one failing run.
    let mut report = Vec::new();
    for (name, bytes) in &ta {
        if *bytes == tb[name] {
            continue;
        }
        let mut line = format!("{name} differs");
        if let (Ok(x), Ok(y)) = (std::str::from_utf8(bytes), std::str::from_utf8(&tb[name]))
            && x.len() + y.len() <= 16 << 10
        {
            line.push_str(&format!(
                ":\n--- {}\n{x}\n+++ {}\n{y}",
                a.display(),
                b.display()
            ));
        }
        report.push(line);
    }
    assert!(
        report.is_empty(),
        "the outputs under {} and {} differ:\n{}",
        a.display(),
        b.display(),
        report.join("\n")
    );
}

/// Copies every file under `from` into `to` (created as needed): a stage output moved
/// elsewhere, as when a cache is relocated.
///
/// # Panics
/// If a file cannot be read or written (a test bug).
pub fn copy_tree(from: &Path, to: &Path) {
    for (rel, bytes) in read_tree(from) {
        let dst = to.join(rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
        }
        std::fs::write(&dst, bytes).unwrap_or_else(|e| panic!("{}: {e}", dst.display()));
    }
}

/// Held by a test while it uses a process-wide random generator (libtorch's CPU generator
/// is one per process): seeding it and then drawing from it, or running a stage that seeds
/// it, while a parallel test in the same binary could move it in between. The pipeline
/// runs each stage in its own process, so only tests need this. Re-entrant within a
/// thread: a test holding it may call helpers that take it again.
pub fn torch_rng() -> TorchRngGuard {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    thread_local! {
        static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    let depth = DEPTH.get();
    DEPTH.set(depth + 1);
    TorchRngGuard {
        // A test that panicked holding it leaves nothing half-done another could see.
        guard: (depth == 0).then(|| LOCK.lock().unwrap_or_else(|e| e.into_inner())),
        depth: &DEPTH,
    }
}

/// See [`torch_rng`]; releases the generator when the outermost guard of the thread drops.
pub struct TorchRngGuard {
    guard: Option<std::sync::MutexGuard<'static, ()>>,
    depth: &'static std::thread::LocalKey<std::cell::Cell<usize>>,
}

impl Drop for TorchRngGuard {
    fn drop(&mut self) {
        self.depth.with(|d| d.set(d.get() - 1));
        self.guard.take();
    }
}

#[cfg(test)]
mod torch_rng_tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::torch_rng;

    #[test]
    fn torch_rng_is_reentrant_in_a_thread_and_exclusive_across_threads() {
        let outer = torch_rng();
        let inner = torch_rng(); // would deadlock if not re-entrant
        drop(inner);
        static TAKEN: AtomicBool = AtomicBool::new(false);
        let other = std::thread::spawn(|| {
            let _g = torch_rng();
            TAKEN.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !TAKEN.load(Ordering::SeqCst),
            "taken while this thread holds it"
        );
        drop(outer);
        other.join().unwrap();
        assert!(TAKEN.load(Ordering::SeqCst));
    }
}
