//! The live signals of the step loop, end to end: the status events a stage sends to the
//! head, and the TensorBoard event files read back by the `tensorboard` Python package
//! (installed in the test venv by scripts/setup.sh).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::{Value, json};
use tch::Tensor;
use ugc_engine::events::TrainStatus;
use ugc_engine::{CancelToken, DeviceKind, Progress, StageContext};
use ugc_train::{LogValue, LoopConfig, StepLog, TrainError, TrainTask, run_loop};

/// Logs `step * scale` from the device and `1 / (step + 1)` from the host; draws a
/// 3x8x12 image whose pixels are the step.
struct Task {
    w: Tensor,
    scale: f64,
    fail_at: Option<u64>,
}

fn task(scale: f64) -> Task {
    Task {
        w: Tensor::zeros([], (tch::Kind::Double, tch::Device::Cpu)),
        scale,
        fail_at: None,
    }
}

impl TrainTask for Task {
    type Error = TrainError;
    fn state(&self) -> Vec<(String, Tensor)> {
        vec![("w".into(), self.w.shallow_clone())]
    }
    fn seek(&mut self, _: u64) -> Result<(), TrainError> {
        Ok(())
    }
    fn step(&mut self, step: u64) -> Result<StepLog, TrainError> {
        if self.fail_at == Some(step) {
            return Err(TrainError::Numeric(format!(
                "simulated crash at step {step}"
            )));
        }
        let _ = self.w.fill_((step + 1) as f64 * self.scale);
        Ok(vec![
            ("loss".into(), LogValue::of(&(&self.w * 1.0))),
            ("lr".into(), (1.0 / (step + 2) as f64).into()),
        ])
    }
    fn sample(&mut self, step: u64, dir: &Path) -> Result<(), TrainError> {
        let img = Tensor::full(
            [3, 8, 12],
            step as f64,
            (tch::Kind::Float, tch::Device::Cpu),
        );
        tch::vision::image::save(&img, dir.join(format!("step_{step:06}.png")))
            .map_err(|e| TrainError::Numeric(e.to_string()))
    }
}

/// Records every status a stage sends.
#[derive(Default)]
struct Recorder(Mutex<Vec<TrainStatus>>);

impl Progress for Recorder {
    fn start(&self, _: &str, _: u64) {}
    fn set(&self, _: u64) {}
    fn message(&self, msg: &str) {
        if let Some(s) = TrainStatus::from_message(msg) {
            self.0.lock().unwrap().push(s);
        }
    }
}

const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Runs the loop in a cache-like layout (`root/scratch/<key>`).
fn run(
    root: &Path,
    t: &mut Task,
    cfg: &LoopConfig,
    progress: &dyn Progress,
) -> Result<ugc_train::LoopOutcome, TrainError> {
    let out = root.join("out");
    let scratch = root.join("scratch").join(KEY);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&scratch).unwrap();
    let params = json!({"steps": cfg.steps, "lr": 0.0002, "arch": {"ngf": 16, "name": "resnet"},
        "flag": true, "sizes": [1, 2], "none": null});
    let env = BTreeMap::new();
    let ctx = StageContext {
        node: "net[a=1]",
        kind: "train",
        params: &params,
        inputs: &[],
        out_dir: &out,
        scratch_dir: &scratch,
        device: DeviceKind::Cpu,
        progress,
        cancel: &CancelToken::new(),
        env: &env,
        rank: None,
    };
    run_loop(&ctx, cfg, t)
}

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: scripts/setup.sh installs the test venv (with tensorboard)",
        p.display()
    );
    p
}

/// What TensorBoard's own reader (EventAccumulator, which checks every record's CRC and
/// drops what a restart supersedes) finds in `dir`.
fn read_back(dir: &Path) -> Value {
    const SCRIPT: &str = r#"
import io, json, sys
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import plugin_data_pb2
acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0})
acc.Reload()
tags = acc.Tags()
out = {"scalars": {}, "images": [], "hparams": {}, "group": None}
for t in tags["scalars"]:
    out["scalars"][t] = [[e.step, e.value] for e in acc.Scalars(t)]
for t in tags["images"]:
    for e in acc.Images(t):
        im = Image.open(io.BytesIO(e.encoded_image_string))
        out["images"].append({"tag": t, "step": e.step, "width": e.width, "height": e.height,
                              "decoded": list(im.size), "mode": im.mode})
for tag, content in acc.PluginTagToContent("hparams").items():
    d = plugin_data_pb2.HParamsPluginData.FromString(content)
    info = d.session_start_info
    out["group"] = info.group_name
    for k, v in info.hparams.items():
        out["hparams"][k] = getattr(v, v.WhichOneof("kind"))
print(json.dumps(out))
"#;
    let o = Command::new(python())
        .arg("-c")
        .arg(SCRIPT)
        .arg(dir)
        .output()
        .expect("run the venv's python");
    assert!(
        o.status.success(),
        "reading the event files failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn tb_dir(root: &Path) -> PathBuf {
    root.join("tensorboard/net_a=1_").join(&KEY[..12])
}

#[test]
fn tensorboard_reads_the_scalars_samples_and_hparams_a_stage_wrote() {
    let root = tempfile::tempdir().unwrap();
    let cfg = LoopConfig {
        steps: 30,
        sample_every: 10,
        status_every: 10,
        tensorboard_every: 5,
        ..LoopConfig::default()
    };
    let rec = Recorder::default();
    run(root.path(), &mut task(0.5), &cfg, &rec).unwrap();

    // Status lines at every 10th step, with that step's values; bar refreshes between.
    let statuses = rec.0.lock().unwrap().clone();
    let lines: Vec<&TrainStatus> = statuses.iter().filter(|s| s.line).collect();
    assert_eq!(
        lines.iter().map(|s| s.step).collect::<Vec<_>>(),
        [10, 20, 30]
    );
    for s in &lines {
        assert_eq!(s.total, 30);
        // Step k (1-based) logged k * 0.5 and 1 / (k + 1): exact in f64.
        let k = s.step as f64;
        let names: Vec<&str> = s.losses.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["loss", "lr"]);
        // The status crosses the pipe as JSON, and serde_json's default float parser may
        // be a few ulps off the shortest round-trip text: relative 2^-50 (4 ulps).
        let close = |got: f64, want: f64| (got - want).abs() <= want.abs() * 2f64.powi(-50);
        assert!(close(s.losses[0].1, k * 0.5), "{s:?}");
        assert!(close(s.losses[1].1, 1.0 / (k + 1.0)), "{s:?}");
        assert!(s.rate > 0.0 && s.eta_secs >= 0.0, "{s:?}");
    }
    assert_eq!(lines[2].eta_secs, 0.0);

    let tb = read_back(&tb_dir(root.path()));
    let loss = tb["scalars"]["train/loss"].as_array().unwrap();
    let steps: Vec<u64> = loss.iter().map(|p| p[0].as_u64().unwrap()).collect();
    assert_eq!(steps, [5, 10, 15, 20, 25, 30]);
    for p in loss {
        // Stored as f32: k * 0.5 for k <= 30 is exact in f32.
        assert_eq!(p[1].as_f64().unwrap(), p[0].as_f64().unwrap() * 0.5);
    }
    let lr = tb["scalars"]["train/lr"].as_array().unwrap();
    // 1 / (k + 1) rounded to f32: within half an f32 ulp, relative 2^-24.
    for p in lr {
        let want = 1.0 / (p[0].as_f64().unwrap() + 1.0);
        let got = p[1].as_f64().unwrap();
        assert!((got - want).abs() <= want * 2f64.powi(-24), "{p:?}");
    }
    // Samples at 10, 20 and the end, 12 wide and 8 high, RGB, decoding to that size.
    let images = tb["images"].as_array().unwrap();
    let steps: Vec<u64> = images.iter().map(|i| i["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [10, 20, 30]);
    for i in images {
        assert_eq!(i["tag"], "samples");
        assert_eq!(
            (i["width"].as_u64(), i["height"].as_u64()),
            (Some(12), Some(8))
        );
        assert_eq!(i["decoded"], json!([12, 8]));
        assert_eq!(i["mode"], "RGB");
    }
    // Parameters flattened, typed; nulls dropped, lists as JSON text.
    assert_eq!(tb["group"], "net[a=1]");
    assert_eq!(
        tb["hparams"],
        json!({"steps": 30.0, "lr": 0.0002, "arch.ngf": 16.0, "arch.name": "resnet",
               "flag": true, "sizes": "[1,2]"})
    );
    // Nothing of it in the committed output.
    let out: Vec<String> = std::fs::read_dir(root.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        out.iter().filter(|n| n.contains("tfevents")).count(),
        0,
        "{out:?}"
    );
}

#[test]
fn after_a_crash_the_resumed_run_replaces_the_steps_past_the_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let cfg = LoopConfig {
        steps: 30,
        checkpoint_every: 10,
        status_every: 3,
        tensorboard_every: 1,
        ..LoopConfig::default()
    };
    // The first process logs twice the values and dies at step 17: its losses up to 15
    // were read (every 3 steps) and written, the checkpoint is at 10.
    let mut first = Task {
        fail_at: Some(17),
        ..task(2.0)
    };
    let e = run(root.path(), &mut first, &cfg, &Recorder::default()).unwrap_err();
    assert!(e.to_string().contains("simulated crash"), "{e}");
    let rec = Recorder::default();
    let done = run(root.path(), &mut task(1.0), &cfg, &rec).unwrap();
    assert_eq!(done.resumed_from, 10);

    let tb = read_back(&tb_dir(root.path()));
    let loss = tb["scalars"]["train/loss"].as_array().unwrap();
    let got: Vec<(u64, f64)> = loss
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    // Every step once: 1..=10 from the first process (scale 2), 11..=30 from the second.
    let want: Vec<(u64, f64)> = (1..=30)
        .map(|k| (k, k as f64 * if k <= 10 { 2.0 } else { 1.0 }))
        .collect();
    assert_eq!(got, want);
    let last = rec.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!((last.step, last.eta_secs), (30, 0.0));
    let files = std::fs::read_dir(tb_dir(root.path())).unwrap().count();
    assert_eq!(files, 2, "one event file per process");
}
