//! The model, metrics and synth verbs through the built CLI.

use crate::common::*;

fn profile(p: &Project, args: &[&str]) -> (u64, u64) {
    let mut all = vec!["profile", "--json"];
    all.extend_from_slice(args);
    let o = p.run(&all);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    (v["macs"].as_u64().unwrap(), v["params"].as_u64().unwrap())
}

fn within(got: u64, want: f64, tol: f64) -> bool {
    ((got as f64) - want).abs() / want <= tol
}

#[test]
fn profile_reproduces_the_design_table_within_half_a_percent() {
    let p = Project::new();
    let rows: &[(&[&str], f64, f64)] = &[
        (
            &["--arch", "pix2pix-resnet", "--input", "3x256x256"],
            56.799e9,
            11.378e6,
        ),
        (
            &["--arch", "pix2pix-unet", "--input", "3x256x256"],
            18.145e9,
            54.414e6,
        ),
        (
            &["--arch", "gaugan", "--input", "36x256x512"],
            281.41e9,
            93.05e6,
        ),
        (
            &["--arch", "pix2pixhd", "--input", "36x256x512"],
            151.32e9,
            182.55e6,
        ),
        (
            &[
                "--arch",
                "mobile-resnet",
                "--ngf",
                "16",
                "--input",
                "3x256x256",
            ],
            1.408e9,
            0.137e6,
        ),
        (
            &[
                "--arch",
                "pix2pix-unet",
                "--ngf",
                "16",
                "--input",
                "3x256x256",
            ],
            1.220e9,
            3.40e6,
        ),
    ];
    for (args, macs, params) in rows {
        let (m, n) = profile(&p, args);
        assert!(within(m, *macs, 0.005), "{args:?}: {m} MACs vs {macs}");
        assert!(
            within(n, *params, 0.005),
            "{args:?}: {n} params vs {params}"
        );
    }
    let (m, _) = profile(
        &p,
        &[
            "--arch",
            "gaugan",
            "--upsampling",
            "normal",
            "--input",
            "36x256x512",
        ],
    );
    assert!(within(m, 292.8e9, 0.005), "{m}");
}

#[test]
fn profile_of_a_subnet_is_smaller_and_bad_configs_are_refused() {
    let p = Project::new();
    let (full, _) = profile(&p, &["--arch", "pix2pix-resnet", "--input", "3x256x256"]);
    let (sub, _) = profile(
        &p,
        &[
            "--arch",
            "pix2pix-resnet",
            "--input",
            "3x256x256",
            "--config",
            "w=16_32_64_64_64_64_64_64_64_64_64_64_32_16;d=1_1_1_1_1_1_1_1_1",
        ],
    );
    assert!(sub < full / 4, "{sub} vs {full}");
    let o = p.run(&[
        "profile",
        "--arch",
        "pix2pix-resnet",
        "--input",
        "3x256x256",
        "--config",
        "w=oops",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("oops"), "{}", stderr(&o));
    let o = p.run(&["profile", "--arch", "nosuch", "--input", "3x256x256"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nosuch"), "{}", stderr(&o));
}

#[test]
fn metrics_frechet_matches_the_scipy_fixture() {
    let p = Project::new();
    let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/metrics/tests/fixtures");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("expected.json")).unwrap()).unwrap();
    let o = p.run(&[
        "metrics",
        "frechet",
        fx.join("frechet_a.npy").to_str().unwrap(),
        fx.join("frechet_b.npy").to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let (got, want) = (
        v["value"].as_f64().unwrap(),
        expected["frechet_ab"].as_f64().unwrap(),
    );
    // The same float64 computation as the metrics crate's reference test, through the CLI
    // and its JSON (17 significant digits round-trip): that test's bound, 2D·sqrt(γ_D·tr),
    // is below 1e-6 relative for this 24-d fixture.
    assert!(((got - want) / want).abs() < 1e-6, "{got} vs {want}");
}

#[test]
fn metrics_miou_on_label_pngs() {
    let p = Project::new();
    std::fs::create_dir_all(p.path("pred")).unwrap();
    std::fs::create_dir_all(p.path("gt")).unwrap();
    // 2x2 images: gt = [0 0; 1 1], pred = [0 1; 1 1] -> IoU0 = 1/2, IoU1 = 2/3.
    let gt = image::GrayImage::from_raw(2, 2, vec![0, 0, 1, 1]).unwrap();
    let pred = image::GrayImage::from_raw(2, 2, vec![0, 1, 1, 1]).unwrap();
    gt.save(p.path("gt/a.png")).unwrap();
    pred.save(p.path("pred/a.png")).unwrap();
    let o = p.run(&[
        "metrics",
        "miou",
        "--pred",
        "pred",
        "--gt",
        "gt",
        "--num-classes",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let want = (0.5 + 2.0 / 3.0) / 2.0;
    // Integer counts, two divisions and a mean of 2 in float64, then JSON: a few ulps of 1.
    assert!(
        (v["value"].as_f64().unwrap() - want).abs() <= 8.0 * f64::EPSILON,
        "{v}"
    );
}

#[test]
fn import_names_a_missing_weights_file() {
    let p = Project::new();
    let o = p.run(&[
        "import",
        "--arch",
        "pix2pix-resnet",
        "--weights",
        "nope.safetensors",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nope.safetensors"), "{}", stderr(&o));
}

#[test]
fn synth_is_deterministic_for_a_seed() {
    let p = Project::new();
    for out in ["a", "b"] {
        let o = p.run(&[
            "synth",
            "--task",
            "edges2photo",
            "--n",
            "6",
            "--size",
            "32",
            "--out",
            out,
            "--seed",
            "7",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let list = |d: &str| {
        let mut v: Vec<_> = walk(&p.path(d))
            .into_iter()
            .map(|f| {
                (
                    f.strip_prefix(p.path(d)).unwrap().to_path_buf(),
                    std::fs::read(&f).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let (a, b) = (list("a"), list("b"));
    assert!(a.len() > 6, "{} files", a.len());
    assert_eq!(a, b);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Runs `crates/nn/tests/fixtures/official_variants.py make` for `cases` into `dir`: official
/// PyTorch classes with random weights, saved as torch.save wrote them (see that script).
fn official_variants(dir: &std::path::Path, cases: &[&str]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = std::process::Command::new(root.join(".venv/bin/python"))
        .arg(root.join("crates/nn/tests/fixtures/official_variants.py"))
        .arg("make")
        .arg(dir)
        .args(cases)
        .status()
        .expect("running official_variants.py");
    assert!(st.success(), "official_variants.py failed");
}

/// An 8-bit image as bytes.
fn png_bytes(p: &std::path::Path) -> Vec<u8> {
    image::open(p).unwrap().to_rgb8().into_raw()
}

#[test]
fn infer_takes_a_raw_spectral_gaugan_pth_with_label_and_instance_maps() {
    let p = Project::new();
    let d = p.path("v");
    std::fs::create_dir_all(&d).unwrap();
    official_variants(&d, &["gaugan_instance"]);
    let f = |n: &str| d.join(n).to_str().unwrap().to_string();
    let arch = [
        "--arch",
        "gaugan",
        "--ngf",
        "2",
        "--upsampling",
        "normal",
        "--label-nc",
        "6",
        "--contain-dontcare-label",
        "--norm-g",
        "spectralspadeinstance3x3",
    ];
    let (w, l, i) = (
        f("gaugan_instance.pth"),
        f("gaugan_instance_label.png"),
        f("gaugan_instance_inst.png"),
    );
    let out = p.path("out.png");
    let mut args = vec!["infer", "--json", "--device", "cpu"];
    args.extend(arch);
    args.extend(["--weights", &w, "--input", &l, "--instance", &i]);
    args.extend(["--output", out.to_str().unwrap()]);
    let o = p.run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["mode"], "eval");
    // The official output through util.tensor2im: (y + 1) / 2 * 255, truncated. Ours is
    // float32 and the reference float64, so a value within the model's error of an integer
    // may truncate to the neighbouring level: at most 1 apart.
    let io: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(d.join("gaugan_instance_io.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let want = ((io["output"].get(0) + 1.0) / 2.0 * 255.0)
        .clamp(0.0, 255.0)
        .floor()
        .permute([1, 2, 0])
        .contiguous()
        .view([-1]);
    let want: Vec<f64> = Vec::try_from(&want).unwrap();
    let got = png_bytes(&out);
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (f64::from(*g) - w).abs())
        .fold(0.0, f64::max);
    assert!(worst <= 1.0, "max level difference {worst}");

    // The instance map is required by these options, and refused with --no-instance.
    let mut args = vec!["infer", "--device", "cpu"];
    args.extend(arch);
    args.extend([
        "--weights",
        &w,
        "--input",
        &l,
        "--output",
        out.to_str().unwrap(),
    ]);
    let o = p.run(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--instance"), "{}", stderr(&o));
    // A plain-weights norm_G does not fold, so the raw triples are unexpected, by name.
    let o = p.run(&[
        "import",
        "--arch",
        "gaugan",
        "--ngf",
        "2",
        "--upsampling",
        "normal",
        "--label-nc",
        "6",
        "--contain-dontcare-label",
        "--norm-g",
        "spadeinstance3x3",
        "--weights",
        &w,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("unexpected: head_0.conv_0.weight_orig"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn dropout_norm_and_label_flags_import_export_and_infer_the_official_variants() {
    let p = Project::new();
    let d = p.path("v");
    std::fs::create_dir_all(&d).unwrap();
    official_variants(&d, &["resnet_dropout", "resnet_batch", "hd_instance"]);
    let f = |n: &str| d.join(n).to_str().unwrap().to_string();
    let resnet = ["--arch", "pix2pix-resnet", "--ngf", "4", "--n-blocks", "2"];
    // Without --dropout the block's second conv is conv_block.5: 2 blocks x 2 tensors each
    // missing and unexpected, by name.
    let w = f("resnet_dropout.pth");
    let mut args = vec!["import"];
    args.extend(resnet);
    args.extend(["--weights", &w]);
    let o = p.run(&args);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("unexpected: model.10.conv_block.6.weight"),
        "{}",
        stdout(&o)
    );
    args.push("--dropout");
    let o = p.run(&args);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));

    // --norm batch (bias-free convs) in eval and in train mode (pix2pix test.py without
    // --eval): batch statistics give another image.
    let w = f("resnet_batch.pth");
    let img = p.path("in.png");
    image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 8) as u8, 128])
    })
    .save(&img)
    .unwrap();
    let mut outs = Vec::new();
    for mode in ["--eval", "--train-mode"] {
        let out = p.path(&format!("out{mode}.png"));
        let mut args = vec!["infer", "--json", "--device", "cpu", mode];
        args.extend(resnet);
        args.extend(["--norm", "batch", "--weights", &w]);
        args.extend([
            "--input",
            img.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        let o = p.run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["mode"], if mode == "--eval" { "eval" } else { "train" });
        outs.push(png_bytes(&out));
    }
    assert_ne!(outs[0], outs[1], "train mode used the running statistics");
    let mut args = vec!["infer", "--eval", "--train-mode"];
    args.extend(resnet);
    args.extend(["--weights", &w, "--input", "a.png", "--output", "b.png"]);
    assert_eq!(p.run(&args).status.code(), Some(2));

    // pix2pixHD with --label-nc: export keeps the options in model.json, and the model
    // folder infers from a label map and an instance map.
    let hd = [
        "--arch",
        "pix2pixhd",
        "--ngf",
        "4",
        "--n-downsample",
        "2",
        "--n-blocks",
        "2",
        "--label-nc",
        "8",
    ];
    let model = p.path("hd_model");
    let w = f("hd_instance.pth");
    let mut args = vec!["export", "--json"];
    args.extend(hd);
    args.extend(["--weights", &w, "--out", model.to_str().unwrap()]);
    let o = p.run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(meta["arch"]["label_nc"], 8);
    assert_eq!(meta["arch"]["input_nc"], 9);
    let out = p.path("hd.png");
    let (l, i) = (f("hd_instance_label.png"), f("hd_instance_inst.png"));
    let mut args = vec!["infer", "--device", "cpu", "--arch", "pix2pixhd"];
    args.extend(["--weights", model.to_str().unwrap(), "--input", &l]);
    args.extend(["--instance", &i, "--output", out.to_str().unwrap()]);
    let o = p.run(&args);
    assert!(o.status.success(), "{}", stderr(&o));

    // Bad option values exit 2 naming the flag and the choices.
    for (extra, needle) in [
        (
            vec!["--norm-g", "spectralspadesyncbatch5x5"],
            "spectralspadeinstance3x3",
        ),
        (vec!["--norm", "group"], "--norm group"),
        (vec!["--input-nc", "5"], "--input-nc gives 5"),
    ] {
        let mut args = vec!["import"];
        args.extend(hd);
        args.extend(["--weights", &w]);
        args.extend(extra);
        let o = p.run(&args);
        assert_eq!(o.status.code(), Some(2), "{needle}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{needle}: {}", stderr(&o));
    }
}
