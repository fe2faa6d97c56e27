//! The four paper-scale pipelines (`pipelines/ugc-*.yaml`, issue 17 item 1) run from data to
//! report, unchanged but for `--set` overrides of size, steps and paths, on small data the
//! test writes in the real layouts and with random weights files in the official layouts:
//!
//! - an edges2shoes-style aligned folder (`train/`, `val/` of `A|B` JPEGs, edges | photo,
//!   as pix2pix's `download_pix2pix_dataset.sh` unpacks it) for the two pix2pix pipelines;
//! - a Cityscapes-style tree (`leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`,
//!   `gtFine/.../*_gtFine_{labelIds,instanceIds,color}.png` and `*_polygons.json`) with
//!   cityscapesScripts' label ids and instance ids `label * 1000 + k`, for pix2pixHD and
//!   GauGAN;
//! - VGG16, pytorch-fid Inception and DRN-D-105 weights at full size, random, written by
//!   `tests/fixtures/paper/make_weights.py` with `torch.save` in the test venv, once per
//!   test run and shared by the tests running at the same time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use crate::common::*;
use image::{Rgb, RgbImage, Rgba, RgbaImage};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use ugc_data::image_io::{IdMap, jpeg_rgb, png_ids, png_rgb, write};

/// Side of one half of an edges2shoes image (256 in the real dataset): small for CI, and
/// still divisible by the generators' downsamplings (pix2pixHD's 2^4, UNet's 2^5 with the
/// override below) with room for the PatchGAN discriminators' three strided layers.
const SHOE: u32 = 32;
/// Cityscapes photo size (2048x1024 in the real dataset; the same 2:1 aspect).
const CITY_W: u32 = 64;
const CITY_H: u32 = 32;
/// Training and test images per dataset: with the pipelines' hold-out 0.1 and label ratio
/// 0.25 that is 1 hold-out, 3 labeled and 8 unlabeled examples, and 2 test images (the
/// fewest a covariance, and so FID, takes).
const N_TRAIN: usize = 12;
const N_TEST: usize = 2;

/// The random weights files, in a temp folder that lives while any test holds it.
struct Weights {
    dir: tempfile::TempDir,
}

impl Weights {
    /// The path of `name`, a `.pth` as `torch.save` wrote it (the loaders read it as is).
    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

/// The weights of this test run: made by the first test that asks, shared with the tests
/// running at the same time, deleted when the last one ends (about 370 MB).
fn weights() -> Arc<Weights> {
    static SHARED: Mutex<Weak<Weights>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(w) = shared.upgrade() {
        return w;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let o = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/fixtures/paper/make_weights.py"))
        .arg(dir.path())
        .output()
        .expect("run .venv/bin/python (./scripts/setup.sh makes the venv)");
    assert!(
        o.status.success(),
        "make_weights.py: {}{}",
        stdout(&o),
        stderr(&o)
    );
    eprintln!(
        "random weights made in {:.1?}:\n{}",
        started.elapsed(),
        stdout(&o)
    );
    let w = Arc::new(Weights { dir });
    *shared = Arc::downgrade(&w);
    w
}

/// Writes an edges2shoes-like aligned dataset under `root`: per image a shoe-ish blob (an
/// ellipse with a sole band, a random colour, shading) on white as the photo B, and its
/// outline, black on white, as the edges A; saved `A|B` as JPEG like the real files.
fn write_aligned(root: &Path, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (split, n) in [("train", N_TRAIN), ("val", N_TEST)] {
        for i in 0..n {
            let s = SHOE as f64;
            let (cx, cy) = (s * unit(&mut rng, 0.4, 0.6), s * unit(&mut rng, 0.45, 0.6));
            let (rx, ry) = (s * unit(&mut rng, 0.3, 0.45), s * unit(&mut rng, 0.15, 0.3));
            let colour = [0, 1, 2].map(|_| (rng.next_u64() % 200) as f64 + 30.0);
            let inside = |x: f64, y: f64| ((x - cx) / rx).powi(2) + ((y - cy) / ry).powi(2) <= 1.0;
            let mut ab = RgbImage::from_pixel(2 * SHOE, SHOE, Rgb([255, 255, 255]));
            for y in 0..SHOE {
                for x in 0..SHOE {
                    let (fx, fy) = (x as f64 + 0.5, y as f64 + 0.5);
                    if !inside(fx, fy) {
                        continue;
                    }
                    let sole = fy > cy + 0.6 * ry;
                    let shade = 1.0 - 0.4 * (fy - (cy - ry)) / (2.0 * ry);
                    let px = colour.map(|c| if sole { 40 } else { (c * shade) as u8 });
                    ab.put_pixel(SHOE + x, y, Rgb(px));
                    let edge = [(-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0)]
                        .iter()
                        .any(|(dx, dy)| !inside(fx + dx, fy + dy))
                        || (sole && fy - 1.0 <= cy + 0.6 * ry);
                    if edge {
                        ab.put_pixel(x, y, Rgb([0, 0, 0]));
                    }
                }
            }
            let path = root.join(split).join(format!("{}_AB.jpg", i + 1));
            write(&path, &jpeg_rgb(&ab, 90)).unwrap();
        }
    }
}

/// cityscapesScripts' label ids used by the generated scenes (labels.py).
const UNLABELED: u16 = 0;
const EGO_VEHICLE: u16 = 1;
const ROAD: u16 = 7;
const SIDEWALK: u16 = 8;
const BUILDING: u16 = 11;
const POLE: u16 = 17;
const VEGETATION: u16 = 21;
const SKY: u16 = 23;
const PERSON: u16 = 24;
const CAR: u16 = 26;
/// cityscapesScripts' colours of those ids (the `_gtFine_color.png` palette).
fn colour_of(id: u16) -> [u8; 3] {
    match id {
        UNLABELED | EGO_VEHICLE => [0, 0, 0],
        ROAD => [128, 64, 128],
        SIDEWALK => [244, 35, 232],
        BUILDING => [70, 70, 70],
        POLE => [153, 153, 153],
        VEGETATION => [107, 142, 35],
        SKY => [70, 130, 180],
        PERSON => [220, 20, 60],
        CAR => [0, 0, 142],
        _ => unreachable!("id {id} is not drawn"),
    }
}

/// Writes a Cityscapes-like tree under `root`: street scenes (sky, buildings, vegetation,
/// a pole, sidewalk, road, the ego vehicle's bonnet at the bottom, a few unlabeled pixels)
/// with car and person instances. `labelIds` 8-bit, `instanceIds` 16-bit with
/// `label * 1000 + k` for each instance (the class id alone elsewhere), `color` RGBA as the
/// official files, the photo an 8-bit RGB PNG.
fn write_cityscapes(root: &Path, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let cities = [
        ("train", "aachen", N_TRAIN / 2),
        ("train", "bochum", N_TRAIN - N_TRAIN / 2),
        ("val", "frankfurt", N_TEST),
    ];
    for (split, city, n) in cities {
        for i in 0..n {
            let (labels, instances) = city_scene(&mut rng);
            let mut photo = RgbImage::new(CITY_W, CITY_H);
            let mut colour = RgbaImage::new(CITY_W, CITY_H);
            for y in 0..CITY_H {
                for x in 0..CITY_W {
                    let id = labels.get(x, y);
                    let c = colour_of(id);
                    colour.put_pixel(x, y, Rgba([c[0], c[1], c[2], 255]));
                    let noise = (rng.next_u64() % 31) as i32 - 15;
                    // Instances of one class differ a little in brightness.
                    let v = instances.get(x, y);
                    let shade = if v >= 1000 { v % 1000 * 25 } else { 0 };
                    photo.put_pixel(
                        x,
                        y,
                        Rgb(c.map(|v| (v as i32 + noise + shade as i32).clamp(0, 255) as u8)),
                    );
                }
            }
            let base = format!("{city}_{:06}_{:06}", i / 3, 19 + i);
            let img = root.join("leftImg8bit").join(split).join(city);
            let gt = root.join("gtFine").join(split).join(city);
            write(
                &img.join(format!("{base}_leftImg8bit.png")),
                &png_rgb(&photo),
            )
            .unwrap();
            let gt_file = |what: &str| gt.join(format!("{base}_gtFine_{what}"));
            write(&gt_file("labelIds.png"), &png_ids(&labels, false)).unwrap();
            write(&gt_file("instanceIds.png"), &png_ids(&instances, true)).unwrap();
            colour.save(gt_file("color.png")).unwrap();
            let polygons =
                format!(r#"{{"imgHeight": {CITY_H}, "imgWidth": {CITY_W}, "objects": []}}"#);
            write(&gt_file("polygons.json"), polygons.as_bytes()).unwrap();
        }
    }
}

/// One scene's label and instance maps.
fn city_scene(rng: &mut ChaCha8Rng) -> (IdMap, IdMap) {
    let (w, h) = (CITY_W, CITY_H);
    let mut labels = IdMap::new(w, h);
    let horizon = h / 2 + (rng.next_u64() % 4) as u32 - 2;
    let roofs: Vec<u32> = (0..w / 8)
        .map(|_| (rng.next_u64() % (horizon as u64 / 2)) as u32 + 2)
        .collect();
    let pole_x = (rng.next_u64() % w as u64) as u32;
    for y in 0..h {
        for x in 0..w {
            let id = if y >= h - 3 {
                EGO_VEHICLE
            } else if y >= horizon {
                let side = (y - horizon + 1) * 2;
                if x < side / 2 || x >= w - side / 2 {
                    SIDEWALK
                } else {
                    ROAD
                }
            } else if x == pole_x && y > horizon / 3 {
                POLE
            } else if y >= roofs[(x / 8) as usize] {
                if (x / 8) % 3 == 2 {
                    VEGETATION
                } else {
                    BUILDING
                }
            } else {
                SKY
            };
            labels.data[(y * w + x) as usize] = id;
        }
    }
    // A few unlabeled pixels, as annotation gaps are in the real maps.
    for _ in 0..4 {
        let (x, y) = (rng.next_u64() % w as u64, rng.next_u64() % h as u64);
        labels.data[(y * w as u64 + x) as usize] = UNLABELED;
    }
    let mut instances = labels.clone();
    for (class, count) in [(CAR, 1 + rng.next_u64() % 3), (PERSON, rng.next_u64() % 3)] {
        for k in 0..count as u16 {
            let (bw, bh) = if class == CAR { (12, 6) } else { (3, 7) };
            let x0 = (rng.next_u64() % (w - bw) as u64) as u32;
            let y0 = horizon - bh / 2 + (rng.next_u64() % 4) as u32;
            for y in y0..(y0 + bh).min(h - 3) {
                for x in x0..x0 + bw {
                    labels.data[(y * w + x) as usize] = class;
                    instances.data[(y * w + x) as usize] = class * 1000 + k;
                }
            }
        }
    }
    (labels, instances)
}

/// Uniform in `[lo, hi)`.
fn unit(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The `--set` overrides of a paper pipeline; each is of size, steps or paths only. The
/// losses, label ratio, hold-out, search space, MACs budgets at the pipelines'
/// `input_size`, teachers and filter are the paper's.
fn small_overrides(family: Family, data: &Path, weights: &Weights) -> Vec<String> {
    let data = data.to_str().unwrap();
    let mut set = vec![
        // Paths: the generated dataset instead of ../data/<name>.
        format!("split.dataset.root={data}"),
        format!("split_full.dataset.root={data}"),
        // Paths: the random weights in their official file names.
        format!(
            "fid_weights={}",
            weights.file("pt_inception-2015-12-05-6726825d.pth")
        ),
        format!("vgg_weights={}", weights.file("vgg16-397923af.pth")),
        // Steps: 2 training steps for the supernet, the distillation and the original
        // model (200000 at paper scale), the learning rate decaying over the second.
        "steps=2".into(),
        "supernet.lr_decay_steps=1".into(),
        "distill.lr_decay_steps=1".into(),
        "original.lr_decay_steps=1".into(),
        // Size: batches of 2 (4 in the pipelines; 3 labeled examples here).
        "supernet.batch_size=2".into(),
        "distill.batch_size=2".into(),
        "original.batch_size=2".into(),
        // Steps: an evolutionary search of 4 candidates over 1 generation (100 x 20).
        "search.population=4".into(),
        "search.generations=1".into(),
        // Steps: latency from 1 timed forward pass after 1 warm-up (20 after 3).
        "eval_original.latency_warmup=1".into(),
        "eval_original.latency_runs=1".into(),
        "eval_ugc.latency_warmup=1".into(),
        "eval_ugc.latency_runs=1".into(),
    ];
    match family {
        Family::Pix2PixResnet | Family::Pix2PixUnet => {
            // Size: the exported model checked at the data's size instead of 256.
            set.push(format!("export.size={SHOE}"));
        }
        Family::Pix2PixHd | Family::Gaugan => {
            set.push(format!("export.size={CITY_H}"));
            // Paths: DRN-D-105 for the Cityscapes mIoU.
            set.push(format!(
                "drn_weights={}",
                weights.file("drn-d-105_ms_cityscapes.pth")
            ));
        }
    }
    // Size: the architecture fields fixed by the image size. pix2pix's unet_256 (8 levels)
    // needs multiples of 256; 5 levels take the 32x32 images (as unet_128 has 7 for 128).
    // GauGAN's `more` upsampling needs multiples of 64; `normal` (5 doublings) takes 32x64.
    match family {
        Family::Pix2PixUnet => set.push("arch.num_downs=5".into()),
        Family::Gaugan => set.push("arch.upsampling=normal".into()),
        Family::Pix2PixResnet | Family::Pix2PixHd => {}
    }
    set
}

/// The four paper pipelines, by generator family.
#[derive(Clone, Copy, Debug)]
enum Family {
    Pix2PixResnet,
    Pix2PixUnet,
    Pix2PixHd,
    Gaugan,
}

impl Family {
    fn pipeline(self) -> &'static str {
        match self {
            Family::Pix2PixResnet => "ugc-pix2pix-resnet.yaml",
            Family::Pix2PixUnet => "ugc-pix2pix-unet.yaml",
            Family::Pix2PixHd => "ugc-pix2pixhd.yaml",
            Family::Gaugan => "ugc-gaugan.yaml",
        }
    }
    fn cityscapes(self) -> bool {
        matches!(self, Family::Pix2PixHd | Family::Gaugan)
    }
}

/// Runs `pipelines/<name>` on the generated data and checks every stage ran, the report is
/// there, and its models table has a row per evaluated model (the original and UGC).
fn run_paper_pipeline(family: Family) {
    let (name, cityscapes) = (family.pipeline(), family.cityscapes());
    let w = weights();
    let p = Project::new();
    let data = p.path("data");
    if cityscapes {
        write_cityscapes(&data, 17);
    } else {
        write_aligned(&data, 17);
    }
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines")
        .join(name);
    let pipeline = pipeline.to_str().unwrap();
    let sets = small_overrides(family, &data, &w);
    let with_sets = |verb: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = verb.iter().map(|s| s.to_string()).collect();
        for s in &sets {
            args.push("--set".into());
            args.push(s.clone());
        }
        args
    };
    let started = Instant::now();
    let args = with_sets(&["run", pipeline, "--json", "-j", "2"]);
    let o = p.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{name}: {}\n{}", stdout(&o), stderr(&o));
    let s = summary(&o);
    eprintln!("{name}: ran in {:.1?}: {s}", started.elapsed());
    assert_eq!(s["failed"], 0, "{name}: {s}");

    let args = with_sets(&["show", pipeline, "--json"]);
    let o = p.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{name}: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let rows = v["rows"].as_array().unwrap();
    // Every stage of the pipeline ran (none was skipped or left out of the run).
    let text = std::fs::read_to_string(pipeline).unwrap();
    let stages: Vec<&str> = text
        .split("\nstages:\n")
        .nth(1)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.strip_suffix(':'))
        .filter(|s| !s.starts_with(' '))
        .collect();
    assert_eq!(stages.len(), 12, "{name}: stages {stages:?}");
    assert_eq!(s["executed"], stages.len(), "{name}: {s}");
    for stage in &stages {
        let row = rows.iter().find(|r| r["node"] == *stage);
        let row = row.unwrap_or_else(|| panic!("{name}: no row for {stage} in {v}"));
        assert!(
            row["output"].is_string(),
            "{name}: {stage} has no output: {row}"
        );
    }
    for eval in ["eval_original", "eval_ugc"] {
        let m = &rows.iter().find(|r| r["node"] == eval).unwrap()["metrics"];
        assert!(m["fid"].is_number(), "{name}: {eval} has no fid: {m}");
        if cityscapes {
            assert!(m["miou"].is_number(), "{name}: {eval} has no miou: {m}");
        }
    }
    let report = rows.iter().find(|r| r["node"] == "report").unwrap();
    let out = PathBuf::from(report["output"].as_str().unwrap());
    for f in ["report.md", "tables/models.md", "tables/models.csv"] {
        assert!(
            out.join(f).is_file(),
            "{name}: {f} missing in {}",
            out.display()
        );
    }
    // tables/models.csv: a header, then one row per model; the `model` column names it.
    let csv = std::fs::read_to_string(out.join("tables/models.csv")).unwrap();
    let mut lines = csv.lines().filter(|l| !l.is_empty());
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = header.iter().position(|&h| h == "model");
    let col = col.unwrap_or_else(|| panic!("{name}: no model column in:\n{csv}"));
    let mut models: Vec<&str> = lines.map(|l| l.split(',').nth(col).unwrap_or("")).collect();
    models.sort_unstable();
    assert_eq!(
        models,
        ["UGC", "original"],
        "{name}: a row per model expected:\n{csv}"
    );
}

#[test]
fn paper_pix2pix_resnet_runs_from_aligned_data_to_report() {
    run_paper_pipeline(Family::Pix2PixResnet);
}

#[test]
fn paper_pix2pix_unet_runs_from_aligned_data_to_report() {
    run_paper_pipeline(Family::Pix2PixUnet);
}

#[test]
fn paper_pix2pixhd_runs_from_cityscapes_data_to_report() {
    run_paper_pipeline(Family::Pix2PixHd);
}

#[test]
fn paper_gaugan_runs_from_cityscapes_data_to_report() {
    run_paper_pipeline(Family::Gaugan);
}
