//! The official architecture options (issue 18 item 2): dropout (pix2pix without
//! `--no_dropout`, gan-compression's always-present Dropout), `norm` instance / batch /
//! none with the official bias rule (pix2pixHD's `--norm batch`, which has none, keeps its
//! conv biases), channel counts, `label_nc` / `contain_dontcare_label` / `no_instance` for
//! pix2pixHD and GauGAN, GauGAN's `norm_G` variants and `most` upsampling. Each case is a PyTorch class written from the official code
//! (`tests/fixtures/official_variants.py`, run at test time) with random weights, saved as
//! `torch.save` wrote it: our reader loads it strictly (nothing missing or unexpected, raw
//! spectral norm folded), computes the official output (eval, and train mode where
//! pix2pix's `test.py` runs it), builds the official label-map input from the label and
//! instance PNGs, and our export loads strictly back into the official class.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tch::{Device, Kind, Tensor};
use ugc_nn::export::{check_tensors, export_subnet, load_tensors, read_checkpoint};
use ugc_nn::infer::{InferOptions, load_input};
use ugc_nn::{Arch, ArchConfig, Mode, NormG};

use crate::common::{ErrorBudget, Precision, convert_vars, kind_of, max_abs_diff};

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: scripts/setup.sh installs the venv whose torch also provides libtorch",
        p.display()
    );
    p
}

fn script(verb: &str, dir: &Path) {
    let st = Command::new(python())
        .arg(crate::common::fixture("official_variants.py"))
        .arg(verb)
        .arg(dir)
        .status()
        .expect("running official_variants.py");
    assert!(st.success(), "official_variants.py {verb} failed: {st}");
}

struct Case {
    name: String,
    cfg: ArchConfig,
    train_seed: Option<i64>,
}

fn cases(dir: &Path) -> Vec<Case> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_suffix(".json").map(str::to_string)
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap())
                    .unwrap();
            // The script writes the fields a user writes in a pipeline's `arch` map; the
            // same plan-time reader fills in the family defaults.
            let cfg = ugc_kinds::arch::arch_from_map("arch", &v["arch"])
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            Case {
                name,
                cfg,
                train_seed: v["train_seed"].as_i64(),
            }
        })
        .collect()
}

/// A worst-case rounding budget of a case's forward pass, from its architecture: every
/// conv / transposed conv on the longest path as a dot product of at most the widest
/// fan-in, and every norm's two sums (mean, variance) over at most all the values of a
/// channel in the batch (train-mode batch norm; instance norm sums fewer).
fn budget(cfg: &ArchConfig, x: &Tensor) -> ErrorBudget {
    let s = x.size();
    let values = (s[0] * s[2] * s[3]) as u64;
    let ngf = cfg.ngf as u64;
    let (convs, fan_in, norms): (u32, u64, u32) = match cfg.arch {
        // stem 7x7 (input_nc) / head 7x7 (ngf), 2 downs, 2 per block, 2 ups.
        Arch::Pix2PixResnet | Arch::MobileResnet => {
            let b = cfg.n_blocks as u32;
            (
                6 + 2 * b,
                (49 * (cfg.input_nc as u64).max(ngf)).max(9 * 4 * ngf),
                5 + 2 * b,
            )
        }
        // Down and up 4x4 convs per level; the widest up-conv reads 2 x 8 ngf channels.
        Arch::Pix2PixUnet => {
            let d = cfg.num_downs as u32;
            (2 * d, 16 * 16 * ngf, 2 * d)
        }
        Arch::Pix2PixHd => {
            let (d, b) = (cfg.n_downsample as u32, cfg.n_blocks as u32);
            (
                2 + 2 * d + 2 * b,
                (49 * cfg.input_nc as u64).max(9 * (ngf << d)),
                1 + 2 * d + 2 * b,
            )
        }
        // fc, then per SPADE block 3 SPADEs (mlp_shared, gamma/beta: 128 x 3 x 3) and 3
        // convs (at most 16 ngf x 3 x 3), head + 2 middles + 4 or 5 ups, conv_img.
        Arch::Gaugan => {
            let blocks = if cfg.upsampling == ugc_nn::Upsampling::Most {
                8
            } else {
                7
            };
            (2 + 6 * blocks, (9 * 128u64).max(9 * 16 * ngf), 3 * blocks)
        }
    };
    ErrorBudget::uniform(convs, fan_in).sums(values, 2 * norms)
}

fn io_of(dir: &Path, name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir.join(format!("{name}_io.safetensors")))
        .unwrap()
        .into_iter()
        .collect()
}

/// Our output of `case` in `kind` and `mode` (weights as read from the `.pth`); with
/// `seed`, torch's generator is seeded right before the forward (building the model draws
/// its initial weights from it).
fn run(
    case: &Case,
    tensors: &[(String, Tensor)],
    pth: &Path,
    x: &Tensor,
    kind: Kind,
    mode: Mode,
    seed: Option<i64>,
) -> Tensor {
    let mut m = load_tensors(&case.cfg, tensors, pth, Device::Cpu).unwrap();
    convert_vars(&mut m.vs, kind);
    let g = &m.generator;
    let x = x.to_kind(kind);
    if let Some(s) = seed {
        tch::manual_seed(s);
    }
    tch::no_grad(|| g.forward(&x, &g.search_space().largest(), mode)).unwrap()
}

#[test]
fn official_variants_load_strictly_match_pytorch_and_export_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    script("make", d);
    let cases = cases(d);
    assert_eq!(cases.len(), 15, "every case of the script");
    for case in &cases {
        let name = case.name.as_str();
        let pth = d.join(format!("{name}.pth"));
        let (tensors, folded) = read_checkpoint(&case.cfg, &pth).unwrap();
        let spectral = case.cfg.arch == Arch::Gaugan && case.cfg.norm_g.spectral();
        assert_eq!(!folded.is_empty(), spectral, "{name}: folded {folded:?}");
        let report = check_tensors(&case.cfg, &tensors).unwrap();
        assert!(report.is_ok(), "{name}: {report}");
        let io = io_of(d, name);
        let x = &io["input"];
        if case.cfg.arch == Arch::Pix2PixHd {
            // Learnable parameters (norm statistics are buffers): batch norm's weight and
            // bias count, instance norm (affine=False) has none.
            let learnable: i64 = tensors
                .iter()
                .filter(|(k, _)| {
                    !["running_mean", "running_var", "num_batches_tracked"]
                        .iter()
                        .any(|b| k.ends_with(b))
                })
                .map(|(_, t)| t.numel() as i64)
                .sum();
            let s = x.size();
            let cost = ugc_nn::profile(&case.cfg, None, [s[1], s[2], s[3]]).unwrap();
            assert_eq!(cost.params as i64, learnable, "{name}: params");
        }

        // Label-map cases: the official input, made from the PNGs as infer makes it.
        let label = d.join(format!("{name}_label.png"));
        if label.exists() {
            let inst = d.join(format!("{name}_inst.png"));
            let opts = InferOptions {
                instance: inst.exists().then_some(inst),
                ..InferOptions::default()
            };
            let ours = load_input(&case.cfg, &label, &opts).unwrap();
            assert!(
                ours.equal(x),
                "{name}: the label-map input differs from the official one"
            );
        }

        let b = budget(&case.cfg, x);
        let y = &io["output"];
        let scale = y.abs().max().double_value(&[]);
        for p in [Precision::F64, Precision::F32] {
            let got = run(case, &tensors, &pth, x, kind_of(p), Mode::Eval, None);
            // Folded spectral weights are rounded to float32 once (as the official
            // checkpoint's own float32 weight_orig / sigma is): the float64 run of such a
            // model carries float32-sized errors, so it gets the float32 bound.
            let bp = if spectral { Precision::F32 } else { p };
            let bound = b.bound(bp, scale);
            let diff = max_abs_diff(&got, y);
            eprintln!("{name} eval {p:?}: max |diff| {diff:.3e}, bound {bound:.3e}");
            assert!(diff <= bound, "{name} eval {p:?}: {diff:e} > {bound:e}");
            // The bar, in output units ([-1, 1] images): within 1/255.
            assert!(diff <= 1.0 / 255.0, "{name} eval {p:?}: {diff:e} > 1/255");
        }
        if let Some(seed) = case.train_seed {
            // pix2pix test.py without --eval: batch statistics and dropout on. The same
            // libtorch draws the same dropout masks after the same seed, so the float32
            // outputs of the two implementations agree within two float32 evaluations.
            let got = run(
                case,
                &tensors,
                &pth,
                x,
                Kind::Float,
                Mode::Train,
                Some(seed),
            );
            let want = &io["train_output"];
            let bound = b.bound(Precision::F32, want.abs().max().double_value(&[]));
            let diff = max_abs_diff(&got, want);
            eprintln!("{name} train: max |diff| {diff:.3e}, bound {bound:.3e}");
            assert!(
                diff <= bound && diff <= 1.0 / 255.0,
                "{name} train: {diff:e}"
            );
        }

        let m = load_tensors(&case.cfg, &tensors, &pth, Device::Cpu).unwrap();
        let full = m.generator.search_space().largest();
        let meta = export_subnet(
            m.generator.as_ref(),
            &full,
            &d.join(format!("{name}_export")),
        )
        .unwrap();
        // The options survive the export (GauGAN's compact config always lists its widths,
        // and a compact model's skippable-block floor is clamped to its blocks).
        let kept = ArchConfig {
            channels: None,
            space: case.cfg.space.clone(),
            ..meta.arch
        };
        assert_eq!(kept, case.cfg, "{name}: a full export keeps the config");
    }
    // Our exports into the official classes, load_state_dict(strict=True).
    script("strict", d);
}

#[test]
fn defaults_serialise_as_before_and_options_round_trip() {
    // model.json and every key built from a config must not change for existing configs:
    // the new fields are absent at their defaults.
    for a in Arch::ALL {
        let j = serde_json::to_value(ArchConfig::new(a)).unwrap();
        for k in [
            "dropout_rate",
            "label_nc",
            "contain_dontcare_label",
            "no_instance",
            "norm_g",
        ] {
            assert!(j.get(k).is_none(), "{a}: {k} written at its default");
        }
    }
    let cfg = ArchConfig {
        input_nc: 36,
        label_nc: Some(34),
        contain_dontcare_label: true,
        norm_g: NormG::SpectralSpadeInstance3x3,
        upsampling: ugc_nn::Upsampling::Most,
        ..ArchConfig::new(Arch::Gaugan)
    };
    cfg.validate().unwrap();
    let j = serde_json::to_string(&cfg).unwrap();
    assert!(
        j.contains("\"norm_g\":\"spectralspadeinstance3x3\"") && j.contains("\"most\""),
        "{j}"
    );
    assert_eq!(ArchConfig::from_json(&j).unwrap(), cfg);
}

#[test]
fn label_options_that_disagree_are_refused_by_name() {
    let hd = ArchConfig::new(Arch::Pix2PixHd);
    let e = ArchConfig {
        label_nc: Some(35),
        no_instance: true,
        ..hd.clone()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(e.contains("input_nc = 36") && e.contains("make 35"), "{e}");
    let e = ArchConfig {
        contain_dontcare_label: true,
        label_nc: Some(34),
        ..hd.clone()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("contain_dontcare_label") && e.contains("SPADE"),
        "{e}"
    );
    let e = ArchConfig {
        label_nc: Some(3),
        ..ArchConfig::new(Arch::Pix2PixResnet)
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("label_nc = 3") && e.contains("label-map families"),
        "{e}"
    );
    let e = ArchConfig {
        norm_g: NormG::SpadeBatch3x3,
        ..ArchConfig::new(Arch::Pix2PixUnet)
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(e.contains("norm_g = spadebatch3x3"), "{e}");
    let e = ArchConfig {
        dropout_rate: 1.0,
        ..ArchConfig::new(Arch::Pix2PixResnet)
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(e.contains("dropout_rate = 1"), "{e}");
    // A pipeline's arch map: input_nc follows label_nc when not written; a bad norm_g
    // names the field and the choices.
    let v = serde_json::json!({"arch": "gaugan", "label_nc": 150, "no_instance": true});
    assert_eq!(
        ugc_kinds::arch::arch_from_map("arch", &v).unwrap().input_nc,
        150
    );
    let v = serde_json::json!({"arch": "gaugan", "norm_g": "spectralspadesyncbatch5x5"});
    let p = ugc_kinds::arch::arch_from_map("arch", &v).unwrap_err();
    let msg = format!("{p:?}");
    assert!(
        msg.contains("arch.norm_g") && msg.contains("spectralspadeinstance3x3"),
        "{msg}"
    );
}

#[test]
fn instance_edges_are_get_edges() {
    // A 3x4 id map with one 2x2 instance in the lower right: every pixel next to a change
    // (right, left, down or up) is an edge; the instance's corner (2, 3) touches none.
    let ids = Tensor::from_slice(&[1i32, 1, 1, 1, 1, 1, 7, 7, 1, 1, 7, 7]).view([1, 1, 3, 4]);
    let e = ugc_nn::infer::instance_edges(&ids);
    let want =
        Tensor::from_slice(&[0f32, 0., 1., 1., 0., 1., 1., 1., 0., 1., 1., 0.]).view([1, 1, 3, 4]);
    assert!(e.equal(&want), "{e}");
}

#[test]
fn an_instance_map_the_config_has_no_channel_for_and_a_missing_one_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let label = dir.path().join("l.png");
    image::GrayImage::from_raw(4, 2, vec![0, 1, 2, 3, 255, 0, 1, 2])
        .unwrap()
        .save(&label)
        .unwrap();
    let gaugan = |label_nc: i64, dontcare: bool, no_instance: bool| ArchConfig {
        input_nc: label_nc + i64::from(dontcare) + i64::from(!no_instance),
        label_nc: Some(label_nc),
        contain_dontcare_label: dontcare,
        no_instance,
        ..ArchConfig::new(Arch::Gaugan)
    };
    let e = load_input(&gaugan(4, true, false), &label, &InferOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("--instance"), "{e}");
    let opts = InferOptions {
        instance: Some(label.clone()),
        ..InferOptions::default()
    };
    let e = load_input(&gaugan(4, true, true), &label, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no_instance"), "{e}");
    // 255 without the dontcare channel: refused, naming the option.
    let e = load_input(&gaugan(4, false, true), &label, &InferOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("255") && e.contains("contain_dontcare_label"),
        "{e}"
    );
    // With it, 255 is the one-hot channel label_nc.
    let x = load_input(&gaugan(4, true, true), &label, &InferOptions::default()).unwrap();
    assert_eq!(x.size(), [1, 5, 2, 4]);
    assert_eq!(x.double_value(&[0, 4, 1, 0]), 1.0);
}
