//! In-process mutation fuzzer of the pipeline loader: the same load, expand and plan steps
//! that `ugc-pipe run --dry-run` runs (`load_pipeline`, `Dag::build`, `plan`), on mutations
//! of the project's own pipelines (`pipelines/*.yaml`) and stage schemas (`crates/kinds/src/*/schema.yaml`),
//! with the stage kinds registered from those schemas as the CLI registers them.
//!
//! It fails on any panic and on any input that takes longer than [`BUDGET`]; each such
//! input is saved under `target/fuzz-failures/` (replay it with `ugc-pipe run --dry-run`).
//! `UGC_FUZZ_ITERS` sets the number of inputs (default [`DEFAULT_ITERS`]), `UGC_FUZZ_SEED`
//! the RNG seed (input `i` depends only on the seed and `i`, so any one can be regenerated);
//! `scripts/fuzz-spec.sh N` runs N inputs in release.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ugc_engine::cache::Cache;
use ugc_engine::graph::Dag;
use ugc_engine::plan::{KeyBuilder, plan};
use ugc_engine::spec::{
    LoadOptions, MAX_MATRIX_POINTS, SpecError, load_pipeline, load_pipeline_str,
};
use ugc_engine::{KindRegistry, KindSchema};

/// Inputs per `cargo test` run. Measured on the 2-core development machine, debug build:
/// 800 to 1,200 inputs/s (818/s and 1,191/s measured while other builds ran), so 40,000
/// take 35 to 50 s.
const DEFAULT_ITERS: u64 = 40_000;
/// The slowest any one input may be, loaded, expanded and planned.
const BUDGET: Duration = Duration::from_secs(1);
/// Fixed so that every run tries the same inputs; `UGC_FUZZ_SEED` picks others.
const DEFAULT_SEED: u64 = 0x5eed_0019;
/// Failures reported (and saved) before the fuzzer stops looking.
const MAX_FAILURES: usize = 20;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
        Err(_) => default,
    }
}

/// The `*.yaml` files of `dir`, sorted by name so that the seed list is the same everywhere.
fn yaml_files(dir: &Path) -> Vec<(String, String)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), text)
        })
        .collect()
}

/// Every stage kind by its schema, as the head process registers them.
fn kinds(schemas: &[(String, String)]) -> KindRegistry {
    let mut reg = KindRegistry::new();
    for (name, text) in schemas {
        let schema = KindSchema::from_yaml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        reg.register_schema(schema);
    }
    reg
}

/// Where the fuzzed file lives: `pipelines/` in a scratch project, with its own cache.
struct Sandbox {
    root: PathBuf,
    file: PathBuf,
    cache: Cache,
    kinds: KindRegistry,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    /// Loaded, expanded and planned.
    Planned,
    /// Loaded and expanded; not planned because an input lies outside the sandbox (planning
    /// would hash the machine's own files, which measures the disk, not the loader).
    Expanded,
    /// Refused with an error that names the file (or the `--set` flag).
    Refused,
    /// Refused with an error that does not say where: a defect of its own.
    Unplaced(String),
}

impl Sandbox {
    /// What `ugc-pipe run --dry-run` does with the file holding `text`, up to printing the
    /// plan. `load_pipeline` reads the file, checks its size and UTF-8, then validates the
    /// text with `load_pipeline_str`: the file is written (about 3 ms) only for the inputs
    /// that are not UTF-8, and the text is handed over directly otherwise.
    fn check(&self, text: &[u8], sets: &[String]) -> Outcome {
        let opts = LoadOptions {
            overrides: sets.to_vec(),
            ..LoadOptions::default()
        };
        // Every problem of a refusal (one, or all of them at once) must say where.
        let refused = |e: SpecError| {
            let placed = |msg: &str| {
                msg.starts_with(&self.file.display().to_string()) || msg.starts_with("--set ")
            };
            match e
                .problems()
                .into_iter()
                .map(|p| p.to_string())
                .find(|m| !placed(m))
            {
                None => Outcome::Refused,
                Some(msg) => Outcome::Unplaced(msg),
            }
        };
        let loaded = match std::str::from_utf8(text) {
            Ok(text) => load_pipeline_str(text, &self.file, &self.kinds, &opts),
            Err(_) => {
                std::fs::write(&self.file, text).expect("write the input");
                load_pipeline(&self.file, &self.kinds, &opts)
            }
        };
        let p = match loaded {
            Ok(p) => p,
            Err(e) => return refused(e),
        };
        let dag = match Dag::build(&p, &self.kinds) {
            Ok(d) => d,
            Err(e) => return refused(e),
        };
        // `ugc-pipe dag` prints these.
        let _ = (dag.to_dot(), dag.to_mermaid());
        let inside = dag
            .nodes()
            .flat_map(|(_, n)| &n.external_inputs)
            .all(|(_, path)| path.starts_with(&self.root));
        if !inside {
            return Outcome::Expanded;
        }
        let keys = KeyBuilder {
            cache: &self.cache,
            kinds: &self.kinds,
            env: Default::default(),
            device_kind: "cpu".into(),
        };
        // A plan error (an unreadable input) is an answer too; only a panic or time is not.
        if let Err(e) = plan(&dag, &keys, None, "fuzz", &BTreeSet::new()) {
            let _ = e.to_string();
        }
        Outcome::Planned
    }
}

/// Values that have broken YAML loaders and JSON converters before.
const SCALARS: &[&str] = &[
    "~",
    "null",
    "[]",
    "{}",
    "''",
    "true",
    "yes",
    "on",
    "n",
    ".inf",
    "-.inf",
    ".nan",
    "1e400",
    "-1e400",
    "1e-400",
    "0x1F",
    "0o17",
    "0b101",
    "+12",
    "1_000",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "2024-01-01",
    "12:30:00",
    "\"\\u0000\"",
    "\"\\x00\\uFFFF\\U0010FFFF\"",
    "\"\\ud800\"",
    "!!binary aGVsbG8=",
    "!!str 3",
    "!!int 3.5",
    "!!float abc",
    "!!map {a: 1}",
    "!!seq [1]",
    "!custom x",
    "&a 1",
    "*a",
    "*undefined",
    "${task}",
    "${seed}",
    "${nope}",
    "${arch.ngf}",
    "${a.0.b}",
    "${}",
    "${",
    "$${HOME}",
    "\"${seed}${seed}\"",
    "${UGC_OUT}",
    "|\n  block\n  text",
    ">-\n  folded",
    "? complex\n: key",
    "[a, [b, [c]]]",
    "{a: {b: {c: 1}}}",
    "[1, 1]",
    "-",
    "- a",
    "a: b: c",
    "\"unterminated",
    "'",
    "/",
    "/etc/passwd",
    "../../..",
    "..",
    ".",
    "é",
    "\u{202e}rtl",
    "\u{feff}bom",
    "zero\u{200b}width",
    "😀",
    "\u{85}",
    "\u{2028}",
    "\t",
];

const TOKENS: &[&str] = &[
    "&x ",
    "*x",
    "!!map ",
    "!t ",
    "---\n",
    "...\n",
    "? ",
    "|\n",
    ">-\n",
    "%YAML 1.2\n---\n",
    "%TAG ! tag:x,2000:\n---\n",
    "<<: *x\n",
    "- ",
    "#",
    "\"",
    "'",
    "[",
    "]",
    "{",
    "}",
    ": ",
    ", ",
    "\n",
    "\r\n",
    "\r",
    "\t",
    "\0",
    "\u{85}",
    "\u{2028}",
    "\u{feff}",
    "\\",
    "%",
    "@",
    "`",
];

const BYTES: &[u8] = b"\0\n\r\t :-[]{}&*!|>#\"'$%@`,?.\\\x7f\xff\xc3\xe2\x80";

fn pick<'a, T>(rng: &mut impl Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn lines_of(text: &[u8]) -> Vec<Vec<u8>> {
    text.split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

/// Identifiers written before a `:` in `text` (keys), for variable names and overrides.
fn keys_in(text: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(text);
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim_start().split_once(':').map(|(k, _)| k.trim()))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    if out.is_empty() {
        out.push("x".into());
    }
    out
}

/// A value for a generated list: small ranges repeat, so some lists hold duplicates.
fn list_value(rng: &mut impl Rng) -> String {
    match rng.random_range(0..5) {
        0 => rng.random_range(0..50).to_string(),
        1 => format!("{}.5", rng.random_range(0..50)),
        2 => format!("s{}", rng.random_range(0..1000)),
        3 => format!("{{k: {}}}", rng.random_range(0..20)),
        _ => pick(rng, SCALARS).replace('\n', " "),
    }
}

fn list_of(rng: &mut impl Rng, n: usize) -> String {
    let items: Vec<String> = (0..n).map(|_| list_value(rng)).collect();
    format!("[{}]", items.join(", "))
}

/// A scalar that is hard on the loader: huge, long, deep, aliased, strange.
fn nasty_scalar(rng: &mut impl Rng) -> String {
    match rng.random_range(0..8) {
        0 => "x".repeat(rng.random_range(1..200_000)),
        1 => {
            let d = rng.random_range(1..200);
            format!("{}1{}", "[".repeat(d), "]".repeat(d))
        }
        2 => {
            let d = rng.random_range(1..200);
            format!("{}1{}", "{a: ".repeat(d), "}".repeat(d))
        }
        3 => format!("\"{}\"", "${seed}".repeat(rng.random_range(1..20_000))),
        4 => {
            let n = rng.random_range(1..3_000);
            list_of(rng, n)
        }
        5 => format!(
            "{}{}",
            rng.random_range(1..=9),
            "9".repeat(rng.random_range(1..400))
        ),
        _ => pick(rng, SCALARS).to_string(),
    }
}

/// `levels` anchors, each a list of `fan` aliases of the one before: fan^levels nodes.
fn laughs(levels: usize, fan: usize, indent: &str) -> String {
    let mut out = format!("{indent}lol0: &l0 [lol, lol]\n");
    for i in 1..levels {
        let refs = vec![format!("*l{}", i - 1); fan].join(", ");
        out.push_str(&format!("{indent}lol{i}: &l{i} [{refs}]\n"));
    }
    out
}

/// `n` top-level list params referenced `refs` times each from one stage: expansion by
/// references rather than by aliases.
fn reference_bomb(rng: &mut impl Rng) -> String {
    let n = rng.random_range(1..20_000);
    let refs = rng.random_range(1..20_000);
    let uses = vec!["\"${big}\""; refs].join(", ");
    let text = vec!["${big}"; rng.random_range(1..2_000)].concat();
    format!(
        "params:\n  big: {}\nstages:\n  c:\n    kind: command\n    params:\n      cmd: \"{text}\"\n      inputs: [{uses}]\n",
        list_of(rng, n)
    )
}

/// A chain or a fan of `n` stages; `all_deps` makes the last one depend on every other.
fn many_stages(rng: &mut impl Rng) -> String {
    let n = rng.random_range(2..5_000);
    let all_deps = rng.random_bool(0.5);
    let mut out = String::from("stages:\n");
    for i in 0..n {
        let deps = if i == 0 {
            String::new()
        } else if all_deps && i == n - 1 {
            let d: Vec<String> = (0..i).map(|j| format!("s{j}")).collect();
            format!(", deps: [{}]", d.join(", "))
        } else {
            format!(", deps: [s{}]", i - 1)
        };
        out.push_str(&format!(
            "  s{i}: {{kind: synth, params: {{task: labels2photo}}{deps}}}\n"
        ));
    }
    out
}

/// A matrix section with lists around the point limit, or many one-value variables.
fn matrix_section(rng: &mut impl Rng, keys: &[String]) -> String {
    let mut out = String::from("matrix:\n");
    if rng.random_bool(0.3) {
        for i in 0..rng.random_range(1..20_000) {
            out.push_str(&format!("  {}{i}.v: [{i}]\n", pick(rng, keys)));
        }
        return out;
    }
    for _ in 0..rng.random_range(1..4) {
        let len = match rng.random_range(0..4) {
            0 => rng.random_range(1..5),
            1 => rng.random_range(5..200),
            2 => MAX_MATRIX_POINTS + rng.random_range(0..2),
            _ => rng.random_range(1..20_000),
        };
        let var = match rng.random_range(0..3) {
            0 => format!("{}.{}", pick(rng, keys), pick(rng, keys)),
            _ => pick(rng, keys).clone(),
        };
        out.push_str(&format!("  {var}: {}\n", list_of(rng, len)));
    }
    out
}

fn random_pos(rng: &mut impl Rng, len: usize) -> usize {
    rng.random_range(0..=len)
}

/// Relative weights of the mutations of [`mutate_once`], by number. The generators of
/// adversarial files (7: alias bombs, 11: matrices, 13: reference bombs and thousands of
/// stages) are rare because each costs up to about 200 ms in a debug build (a bomb is
/// expanded up to the node budget before it is refused); the cheap edits are common.
const WEIGHTS: [u32; 15] = [80, 80, 80, 80, 60, 40, 80, 1, 60, 40, 80, 4, 20, 1, 40];

fn pick_op(rng: &mut impl Rng) -> usize {
    let mut r = rng.random_range(0..WEIGHTS.iter().sum::<u32>());
    WEIGHTS
        .iter()
        .position(|&w| {
            let hit = r < w;
            r = r.saturating_sub(w);
            hit
        })
        .unwrap_or(0)
}

/// Applies one random mutation to `text`.
fn mutate_once(rng: &mut impl Rng, text: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let keys = keys_in(text);
    let mut lines = lines_of(text);
    let n = lines.len();
    match pick_op(rng) {
        0 if !text.is_empty() => {
            let i = rng.random_range(0..text.len());
            text[i] ^= 1 << rng.random_range(0..8);
            return;
        }
        1 if !text.is_empty() => {
            let i = rng.random_range(0..text.len());
            text[i] = *pick(rng, BYTES);
            return;
        }
        2 => {
            let other = lines_of(pick::<Vec<u8>>(rng, seeds));
            if !other.is_empty() {
                let line = pick(rng, &other).clone();
                lines.insert(random_pos(rng, n), line);
            }
        }
        3 if n > 0 => {
            let i = rng.random_range(0..n);
            let k = rng.random_range(1..=8).min(n - i);
            lines.drain(i..i + k);
        }
        4 if n > 0 => {
            let i = rng.random_range(0..n);
            let k = rng.random_range(1..=8).min(n - i);
            let block: Vec<Vec<u8>> = lines[i..i + k].to_vec();
            let times = if rng.random_bool(0.1) {
                rng.random_range(2..2_000)
            } else {
                1
            };
            let at = random_pos(rng, n);
            for _ in 0..times {
                lines.splice(at..at, block.iter().cloned());
            }
        }
        5 => {
            let other = lines_of(pick::<Vec<u8>>(rng, seeds));
            let cut = random_pos(rng, n);
            let from = random_pos(rng, other.len());
            lines.truncate(cut);
            lines.extend_from_slice(&other[from..]);
        }
        6 if n > 0 => {
            // Replace a value after `key: ` (or a list item after `- `).
            let i = rng.random_range(0..n);
            let line = String::from_utf8_lossy(&lines[i]).into_owned();
            let value = nasty_scalar(rng);
            let new = match line.find(": ").or_else(|| line.find("- ")) {
                Some(at) => format!("{}{value}\n", &line[..at + 2]),
                None => format!("{}: {value}\n", line.trim_end()),
            };
            lines[i] = new.into_bytes();
        }
        7 => {
            let (levels, fan) = (rng.random_range(2..12), rng.random_range(2..12));
            let bomb = if rng.random_bool(0.5) {
                format!("params:\n{}", laughs(levels, fan, "  "))
            } else {
                laughs(levels, fan, "")
            };
            lines.insert(0, bomb.into_bytes());
        }
        8 => {
            let at = random_pos(rng, text.len());
            let s = pick(rng, SCALARS);
            text.splice(at..at, s.bytes());
            return;
        }
        9 if n > 0 => {
            // Shift a line's indentation, or indent it with a tab.
            let i = rng.random_range(0..n);
            let line = &mut lines[i];
            match rng.random_range(0..3) {
                0 => {
                    let k = rng.random_range(1..5);
                    line.splice(0..0, std::iter::repeat_n(b' ', k));
                }
                1 => line.insert(0, b'\t'),
                _ => {
                    let k = line.iter().take_while(|&&b| b == b' ').count();
                    line.drain(0..rng.random_range(0..=k));
                }
            }
        }
        10 => {
            let at = random_pos(rng, text.len());
            text.splice(at..at, pick(rng, TOKENS).bytes());
            return;
        }
        11 => lines.push(matrix_section(rng, &keys).into_bytes()),
        12 => text.truncate(random_pos(rng, text.len())),
        13 => {
            let bomb = if rng.random_bool(0.5) {
                reference_bomb(rng)
            } else {
                many_stages(rng)
            };
            *text = bomb.into_bytes();
            return;
        }
        14 if n > 0 => {
            // A strange key: dotted, templated, empty, non-ASCII, a collection.
            let i = rng.random_range(0..n);
            let line = String::from_utf8_lossy(&lines[i]).into_owned();
            let indent: String = line.chars().take_while(|c| *c == ' ').collect();
            let key = *pick(
                rng,
                &[
                    "a.b", "${x}", "\"\"", "ü", "[a, b]", "{a: 1}", "? x", "1", "true", "~", "-",
                ],
            );
            if let Some((_, rest)) = line.split_once(':') {
                lines[i] = format!("{indent}{key}:{rest}").into_bytes();
            }
        }
        // A guard was not met (an empty text): this draw leaves the text as it is.
        _ => return,
    }
    *text = lines.concat();
}

/// One fuzzed input: the file's bytes and its `--set` flags.
fn input(rng: &mut impl Rng, pipelines: &[Vec<u8>], all: &[Vec<u8>]) -> (Vec<u8>, Vec<String>) {
    // Mostly pipelines, which reach past the YAML layer; schemas for splicing and variety.
    let mut text = if rng.random_bool(0.85) {
        pick(rng, pipelines).clone()
    } else {
        pick(rng, all).clone()
    };
    // One mutation, two with probability 1/2, three with 1/4, ...: most inputs stay
    // close enough to a valid pipeline to reach the DAG and the plan.
    mutate_once(rng, &mut text, all);
    for _ in 0..7 {
        if !rng.random_bool(0.5) {
            break;
        }
        mutate_once(rng, &mut text, all);
    }
    let mut sets = Vec::new();
    if rng.random_bool(0.15) {
        let keys = keys_in(&text);
        for _ in 0..rng.random_range(1..3) {
            let path = match rng.random_range(0..3) {
                0 => pick(rng, &keys).clone(),
                1 => format!("{}.{}", pick(rng, &keys), pick(rng, &keys)),
                _ => pick(rng, &["", ".", "a..b", "=", "x.0", "${x}"]).to_string(),
            };
            let value = nasty_scalar(rng);
            sets.push(format!("{path}={value}"));
        }
    }
    (text, sets)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}

fn failure_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("fuzz-failures")
}

/// Runs `check` on one input, catching a panic.
fn timed(sandbox: &Sandbox, text: &[u8], sets: &[String]) -> (Result<Outcome, String>, Duration) {
    let start = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| sandbox.check(text, sets)))
        .map_err(|p| panic_message(p.as_ref()));
    (r, start.elapsed())
}

#[test]
fn mutated_pipelines_never_panic_and_never_take_over_a_second() {
    let root = workspace_root();
    let pipelines: Vec<Vec<u8>> = yaml_files(&root.join("pipelines"))
        .into_iter()
        .map(|(_, t)| t.into_bytes())
        .collect();
    // One folder per kind, each with its schema.yaml (crates/kinds, docs/architecture.md).
    let kinds_dir = root.join("crates/kinds/src");
    let mut schemas: Vec<(String, String)> = std::fs::read_dir(&kinds_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", kinds_dir.display()))
        .map(|e| e.expect("directory entry").path().join("schema.yaml"))
        .filter(|p| p.is_file())
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), text)
        })
        .collect();
    schemas.sort();
    assert!(
        !pipelines.is_empty() && !schemas.is_empty(),
        "no seeds under {}",
        root.display()
    );
    let all: Vec<Vec<u8>> = pipelines
        .iter()
        .cloned()
        .chain(schemas.iter().map(|(_, t)| t.clone().into_bytes()))
        .collect();

    let tmp = tempfile::tempdir().expect("temp dir");
    let root_dir = tmp.path().canonicalize().expect("temp dir path");
    std::fs::create_dir_all(root_dir.join("pipelines")).expect("pipelines dir");
    let sandbox = Sandbox {
        file: root_dir.join("pipelines/fuzz.yaml"),
        cache: Cache::open(&root_dir.join("cache")).expect("cache"),
        kinds: kinds(&schemas),
        root: root_dir,
    };

    // The seeds themselves must load: otherwise the mutations never get past validation.
    for (i, seed) in pipelines.iter().enumerate() {
        let (r, _) = timed(&sandbox, seed, &[]);
        assert_eq!(r, Ok(Outcome::Planned), "seed {i} does not load and plan");
    }

    let iters = env_u64("UGC_FUZZ_ITERS", DEFAULT_ITERS);
    let seed = env_u64("UGC_FUZZ_SEED", DEFAULT_SEED);
    let dir = failure_dir();
    let mut failures: Vec<String> = Vec::new();
    let mut counts = [0usize; 3];
    let start = Instant::now();
    for i in 0..iters {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (text, sets) = input(&mut rng, &pipelines, &all);
        let (mut r, mut took) = timed(&sandbox, &text, &sets);
        if r.is_ok() && took > BUDGET {
            // Once more, so that a moment of load on a shared machine is not a finding.
            (r, took) = timed(&sandbox, &text, &sets);
        }
        let problem = match r {
            Err(panic) => Some(format!("panicked: {panic}")),
            Ok(_) if took > BUDGET => Some(format!("took {took:?}, over {BUDGET:?}")),
            Ok(Outcome::Unplaced(msg)) => Some(format!("error without a position: {msg}")),
            Ok(o) => {
                counts[match o {
                    Outcome::Planned => 0,
                    Outcome::Expanded => 1,
                    _ => 2,
                }] += 1;
                None
            }
        };
        if let Some(problem) = problem {
            std::fs::create_dir_all(&dir).expect("failure dir");
            let saved = dir.join(format!("seed{seed:x}-input{i}.yaml"));
            std::fs::write(&saved, &text).expect("save failing input");
            failures.push(format!(
                "input {i} ({}, --set {sets:?}): {problem}",
                saved.display()
            ));
            if failures.len() >= MAX_FAILURES {
                break;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "spec fuzz: {iters} inputs (seed {seed:#x}) in {secs:.1} s, {:.0}/s: {} planned, \
         {} expanded, {} refused",
        iters as f64 / secs,
        counts[0],
        counts[1],
        counts[2]
    );
    assert!(
        failures.is_empty(),
        "{} failing inputs:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // A fuzzer that never gets an input through is not testing the loader.
    if iters >= 1_000 {
        assert!(counts[0] > 0, "no mutated input loaded and planned");
    }
}
