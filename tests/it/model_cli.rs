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
