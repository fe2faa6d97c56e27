//! End-to-end tests of the report on synthetic evaluate outputs written here.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use ugc_engine::testing::{input, with_defaults};
use ugc_engine::{KindSchema, StageError, StageInput};
use ugc_report::{ReportParams, ReportStage, TableKind, build_report, load_records, tables};

fn schema() -> KindSchema {
    ugc_kinds::Kind::Report.schema()
}

/// Schema defaults merged with `over` (what the engine hands a stage), typed.
fn params(over: Value) -> ReportParams {
    serde_json::from_value(with_defaults(&schema(), over)).unwrap()
}

/// One fake evaluate output, in the format the `evaluate` stage writes.
struct Eval<'a> {
    name: &'a str,
    point: Value,
    model_stage: &'a str,
    model_kind: &'a str,
    macs: f64,
    params: f64,
    metrics: Value,
    label_fraction: f64,
    /// Colour of the output panel of its sample strips (None: no samples).
    color: Option<[u8; 3]>,
}

fn node_id(name: &str, point: &Value) -> String {
    let obj = point.as_object().unwrap();
    if obj.is_empty() {
        return name.to_string();
    }
    let mut parts: Vec<String> = obj
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    parts.sort();
    format!("{name}[{}]", parts.join(","))
}

fn write_eval(root: &Path, e: &Eval<'_>) -> StageInput {
    let node = node_id(e.name, &e.point);
    let dir = root.join(node.replace(['[', ']', '=', ','], "_"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut metrics = e.metrics.as_object().unwrap().clone();
    metrics.insert("macs".into(), json!(e.macs));
    metrics.insert("params".into(), json!(e.params));
    metrics.insert("label_fraction".into(), json!(e.label_fraction));
    std::fs::write(dir.join("metrics.json"), Value::Object(metrics).to_string()).unwrap();
    let eval = json!({
        "split": {"subset": "test", "label_fraction": e.label_fraction},
        "n_images": 4,
        "resolution": [16, 16],
        "device": "cpu",
        "model": {
            "reference": false, "stage": e.model_stage, "kind": e.model_kind,
            "arch": "pix2pix-unet", "config": "w=8_8;d=", "macs": e.macs, "params": e.params
        },
        "not_computed": {"fid": "`fid_inception_weights` is not configured"},
    });
    std::fs::write(dir.join("eval.json"), eval.to_string()).unwrap();
    if let Some(c) = e.color {
        let s = dir.join("samples");
        std::fs::create_dir_all(&s).unwrap();
        for i in 0..3u8 {
            let img = image::RgbImage::from_fn(48, 16, |x, y| match x / 16 {
                0 => image::Rgb([(x * 15) as u8, (y * 15) as u8, 40 * i]),
                1 => image::Rgb(c),
                _ => image::Rgb([200, 200, (y * 15) as u8]),
            });
            img.save(s.join(format!("img{i}.png"))).unwrap();
        }
    }
    StageInput {
        name: e.name.into(),
        node,
        point: e
            .point
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        kind: "evaluate".into(),
        dir,
    }
}

/// The quickstart shape: an original model, a NAS sub-net and a distilled student.
pub(crate) fn quickstart(root: &Path) -> Vec<StageInput> {
    vec![
        write_eval(
            root,
            &Eval {
                name: "eval_original",
                point: json!({}),
                model_stage: "original",
                model_kind: "train",
                macs: 18.145e9,
                params: 54.414e6,
                metrics: json!({"miou": 0.425, "psnr": 20.25, "ssim": 0.5}),
                label_fraction: 1.0,
                color: Some([255, 0, 0]),
            },
        ),
        write_eval(
            root,
            &Eval {
                name: "eval_nas",
                point: json!({}),
                model_stage: "teachers",
                model_kind: "teachers",
                macs: 1.5e9,
                params: 2.0e6,
                metrics: json!({"miou": 0.38, "psnr": 19.0, "ssim": 0.4}),
                label_fraction: 0.5,
                color: Some([0, 255, 0]),
            },
        ),
        write_eval(
            root,
            &Eval {
                name: "eval_student",
                point: json!({}),
                model_stage: "distill",
                model_kind: "distill",
                macs: 0.866e9,
                params: 0.106e6,
                metrics: json!({"miou": 0.3778, "psnr": 18.5, "ssim": 0.45}),
                label_fraction: 0.5,
                color: Some([0, 0, 255]),
            },
        ),
    ]
}

/// Minimal RFC 4180 reader, to check the CSV parses back.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    rows
}

fn col(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

#[test]
fn models_table_has_paper_formats_and_csv_parses_back() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = quickstart(tmp.path());
    let p = params(json!({"extra_metrics": ["psnr"]}));
    let records = load_records(&inputs, "label_ratio").unwrap();
    let t = tables::models_table(&records, &p).unwrap();
    assert_eq!(
        t.md_header,
        [
            "Labels",
            "Model",
            "Arch",
            "MACs (256×256)",
            "MACs (16×16, evaluated)",
            "Params",
            "mIoU (%) ↑",
            "PSNR ↑"
        ]
    );
    // Sorted by label fraction, then model order of appearance; method names; MACs at
    // 256x256 are the evaluated ones x 256 (pixel ratio); mIoU in percent.
    assert_eq!(
        t.md_rows,
        vec![
            vec![
                "50%",
                "teacher",
                "pix2pix-unet",
                "384G",
                "1.500G",
                "2.000M",
                "38.00",
                "19.00"
            ],
            vec![
                "50%",
                "UGC",
                "pix2pix-unet",
                "222G",
                "0.866G",
                "0.106M",
                "37.78",
                "18.50"
            ],
            vec![
                "100%",
                "original",
                "pix2pix-unet",
                "4645G",
                "18.145G",
                "54.414M",
                "42.50",
                "20.25"
            ],
        ]
    );
    assert!(
        t.notes.iter().any(|n| n.contains("MACs at 256×256")),
        "{:?}",
        t.notes
    );
    let csv = parse_csv(&t.to_csv());
    assert_eq!(csv.len(), 4);
    let h = &csv[0];
    let orig = &csv[3];
    assert_eq!(orig[col(h, "macs")].parse::<f64>().unwrap(), 18.145e9);
    // x100 for display and /100 back for the CSV: a few ulps (1e-15 relative) at most.
    assert!((orig[col(h, "miou_mean")].parse::<f64>().unwrap() - 0.425).abs() < 1e-12);
    assert_eq!(
        orig[col(h, "macs_at_size")].parse::<f64>().unwrap(),
        18.145e9 * 256.0
    );
    assert_eq!(orig[col(h, "method")], "original");
    assert_eq!(orig[col(h, "config")], "w=8_8;d=");
    assert_eq!(orig[col(h, "nodes")], "eval_original");
    assert_eq!(
        csv[1][col(h, "label_fraction")].parse::<f64>().unwrap(),
        0.5
    );
}

#[test]
fn seeds_are_averaged_as_mean_and_sample_std() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs: Vec<StageInput> = [(0, 0.44), (1, 0.45), (2, 0.46)]
        .into_iter()
        .map(|(seed, miou)| {
            write_eval(
                tmp.path(),
                &Eval {
                    name: "eval_student",
                    point: json!({"seed": seed, "label_ratio": 0.25}),
                    model_stage: "distill",
                    model_kind: "distill",
                    macs: 1.229e9,
                    params: 1.071e6,
                    metrics: json!({"miou": miou}),
                    label_fraction: 0.25,
                    color: None,
                },
            )
        })
        .collect();
    let records = load_records(&inputs, "label_ratio").unwrap();
    let t = tables::models_table(&records, &params(json!({}))).unwrap();
    assert_eq!(t.md_rows.len(), 1, "{:?}", t.md_rows);
    assert_eq!(t.md_rows[0][0], "25%");
    assert_eq!(t.md_rows[0][6], "45.00 ± 1.00");
    let csv = parse_csv(&t.to_csv());
    assert_eq!(csv[1][col(&csv[0], "n")], "3");
    // The CSV keeps the evaluate stage's unit; the scaling round trip costs a few ulps.
    assert!((csv[1][col(&csv[0], "miou_std")].parse::<f64>().unwrap() - 0.01).abs() < 1e-12);
    assert_eq!(
        csv[1][col(&csv[0], "nodes")].split(';').count(),
        3,
        "every seed's node is listed"
    );
}

/// The ablation matrix label_ratio x adf x teachers of one distilled student.
fn ablation(root: &Path) -> Vec<StageInput> {
    let mut v = Vec::new();
    for (lr, base) in [(0.1, 0.44), (0.25, 0.48)] {
        for adf in [true, false] {
            for teachers in ["largest", "wide", "multi"] {
                let t_off = match teachers {
                    "multi" => 0.005,
                    "wide" => -0.0025,
                    _ => 0.0,
                };
                let a_off = if adf { 0.0 } else { -0.01 };
                v.push(write_eval(
                    root,
                    &Eval {
                        name: "evaluate",
                        point: json!({"label_ratio": lr, "adf": adf, "teachers": teachers}),
                        model_stage: "distill",
                        model_kind: "distill",
                        macs: 1.2e9,
                        params: 1.0e6,
                        metrics: json!({"miou": base + t_off + a_off}),
                        label_fraction: lr,
                        color: Some([0, 0, 200]),
                    },
                ));
            }
        }
    }
    v
}

#[test]
fn adf_and_teacher_tables_pivot_label_ratio_at_the_other_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = ablation(tmp.path());
    let records = load_records(&inputs, "label_ratio").unwrap();
    let p = params(json!({}));
    let adf = tables::ablation_table(&records, &p, TableKind::Adf).unwrap();
    assert_eq!(adf.md_header, ["Method", "10%", "25%"]);
    // teachers fixed at multi (+0.5); w/o ADF is -1.
    assert_eq!(
        adf.md_rows,
        vec![
            vec!["Ours w/o ADF", "43.50", "47.50"],
            vec!["Ours", "44.50", "48.50"],
        ]
    );
    let teach = tables::ablation_table(&records, &p, TableKind::Teachers).unwrap();
    // Declared order of row_labels; adf fixed at true.
    assert_eq!(
        teach.md_rows,
        vec![
            vec!["Largest Teacher", "44.00", "48.00"],
            vec!["Wide Teacher", "43.75", "47.75"],
            vec!["Multi Teachers", "44.50", "48.50"],
        ]
    );
    let csv = parse_csv(&teach.to_csv());
    assert_eq!(csv.len(), 1 + 6);
    assert_eq!(csv[0][0], "teachers");

    // The models table keeps every matrix point apart (12 rows, adf/teachers columns).
    let models = tables::models_table(&records, &p).unwrap();
    assert_eq!(models.md_rows.len(), 12);
    assert_eq!(models.md_header[..3], ["Labels", "adf", "teachers"]);
}

#[test]
fn ablation_table_without_its_variable_says_which_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = quickstart(tmp.path());
    let records = load_records(&inputs, "label_ratio").unwrap();
    let err = tables::ablation_table(&records, &params(json!({})), TableKind::Adf)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("table `adf`") && err.contains("`adf`"),
        "{err}"
    );
}

#[test]
fn missing_metric_names_the_input_node_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = ablation(tmp.path());
    let p = params(json!({"metric": "fid", "tables": ["models"], "grid_rows": 0}));
    let out = tempfile::tempdir().unwrap();
    let err = build_report(&p, &inputs, out.path())
        .unwrap_err()
        .to_string();
    // No input has it: the first input is named.
    assert!(
        err.contains("evaluate[adf=true,label_ratio=0.1,teachers=largest]"),
        "{err}"
    );
    assert!(
        err.contains("`fid`") && err.contains("metrics.json"),
        "{err}"
    );
    assert!(
        err.contains("not configured"),
        "eval.json's reason is passed on: {err}"
    );
}

#[test]
fn missing_metrics_file_names_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    let mut inputs = quickstart(tmp.path());
    std::fs::remove_file(inputs[1].dir.join("metrics.json")).unwrap();
    inputs[1].node = "eval_nas[x=1]".into();
    let err = load_records(&inputs, "label_ratio")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("eval_nas[x=1]") && err.contains("metrics.json"),
        "{err}"
    );
}

#[test]
fn a_hold_out_evaluation_is_refused_naming_its_node() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = quickstart(tmp.path());
    let file = inputs[2].dir.join("eval.json");
    let mut eval: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    eval["split"]["subset"] = json!("holdout");
    std::fs::write(&file, eval.to_string()).unwrap();
    let err = load_records(&inputs, "label_ratio")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("eval_student") && err.contains("`holdout` images"),
        "{err}"
    );
}

/// Runs the report stage on `inputs` with `p` over the schema's defaults.
fn run_stage(p: Value, inputs: &[StageInput], out: &Path) -> Result<(), StageError> {
    ugc_engine::testing::run_quick(&ReportStage::new(schema()), p, inputs, out)
}

fn non_white(img: &image::RgbImage, x0: u32, y0: u32, x1: u32, y1: u32) -> usize {
    let mut n = 0;
    for y in y0..y1 {
        for x in x0..x1 {
            if img.get_pixel(x, y).0 != [255, 255, 255] {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn stage_writes_tables_plot_grid_and_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = quickstart(tmp.path());
    let out = tempfile::tempdir().unwrap();
    run_stage(
        json!({"title": "Quickstart", "grid_rows": 2}),
        &inputs,
        out.path(),
    )
    .unwrap();
    let o = out.path();
    for f in [
        "report.md",
        "tables/models.md",
        "tables/models.csv",
        "tables/tradeoff.md",
        "tables/tradeoff.csv",
        "tables/models.tex",
        "tables/tradeoff.tex",
        "tradeoff.png",
        "tradeoff.svg",
        "tradeoff.pdf",
        "grid.png",
        "report.html",
        "metrics.json",
    ] {
        assert!(o.join(f).is_file(), "{f} missing");
    }
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(o.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["inputs"], 3);
    assert_eq!(m["rows_models"], 3);
    assert_eq!(m["rows_tradeoff"], 3);
    assert_eq!(m["curves"], 3);
    assert_eq!(m["grid_rows"], 2);
    assert!(m.as_object().unwrap().values().all(Value::is_number));

    let svg = std::fs::read_to_string(o.join("tradeoff.svg")).unwrap();
    for label in [
        "UGC",
        "original",
        "teacher",
        "MACs at 256×256 (G)",
        "mIoU (%)",
        "Quickstart",
    ] {
        assert!(svg.contains(label), "SVG lacks {label}");
    }
    let png = image::open(o.join("tradeoff.png")).unwrap().to_rgb8();
    // Default 6.5 x 4 in at 200 dpi.
    assert_eq!(png.dimensions(), (1300, 800));
    // Title text is drawn (the embedded font works without system fonts).
    assert!(non_white(&png, 300, 0, 900, 60) > 200, "no title pixels");
    let pdf = std::fs::read(o.join("tradeoff.pdf")).unwrap();
    assert!(pdf.starts_with(b"%PDF-"), "not a PDF");
    // The curves' palette colours appear.
    let coloured = png
        .pixels()
        .filter(|p| {
            let [r, g, b] = p.0;
            r.abs_diff(g) > 60 || g.abs_diff(b) > 60 || r.abs_diff(b) > 60
        })
        .count();
    assert!(coloured > 500, "only {coloured} coloured pixels");

    // Grid: input | original | student | target; 16px panels enlarged 10x to 160px.
    let grid = image::open(o.join("grid.png")).unwrap().to_rgb8();
    let (w, h) = grid.dimensions();
    let footer = 19 + 8;
    assert!(
        h > 2 * 160 + footer && h < 2 * 160 + 120 + footer,
        "height {h}"
    );
    assert!(w >= 4 * 160 + 5 * 8, "width {w}");
    // Original is red, UGC blue, in that column order; the teacher (not in grid_columns)
    // absent.
    let row_y = h - footer - 8 - 80;
    let reds: Vec<u32> = (0..w)
        .filter(|&x| grid.get_pixel(x, row_y).0 == [255, 0, 0])
        .collect();
    let blues: Vec<u32> = (0..w)
        .filter(|&x| grid.get_pixel(x, row_y).0 == [0, 0, 255])
        .collect();
    assert_eq!(reds.len(), 160);
    assert_eq!(blues.len(), 160);
    assert!(reds[0] < blues[0]);
    assert!(!(0..w).any(|x| grid.get_pixel(x, row_y).0 == [0, 255, 0]));
    // Captions are drawn above the panels.
    assert!(non_white(&grid, 0, 0, w, 50) > 300, "no caption pixels");

    let md = std::fs::read_to_string(o.join("report.md")).unwrap();
    assert!(md.starts_with("# Quickstart"));
    assert!(
        md.contains("| 50% | UGC | pix2pix-unet | 222G | 0.866G | 0.106M | 37.78 |"),
        "{md}"
    );
    assert!(md.contains("![trade-off](tradeoff.png)") && md.contains("![grid](grid.png)"));
    assert!(
        md.contains("16×16 px panels shown ×10 (nearest-neighbour"),
        "{md}"
    );
    // One seed: the headline is set against the spread (UGC 37.78 vs original 42.50 is
    // 4.72 points, above the default 2.1).
    assert!(
        md.contains("UGC 37.78 vs original 42.50 mIoU: behind by 4.72 points, one seed."),
        "{md}"
    );
}

#[test]
fn grid_caption_gives_ratios_against_the_original() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = quickstart(tmp.path());
    let records = load_records(&inputs, "label_ratio").unwrap();
    let c = ugc_report::grid::GridColumn {
        label: "UGC".into(),
        record: &records[2],
    };
    assert_eq!(
        ugc_report::grid::caption(&c, Some(&records[0])),
        ["UGC", "MACs: 866M (21.0×)", "Labels: 50% (2×)"]
    );
}

#[test]
fn ablation_report_plots_only_the_default_points() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = ablation(tmp.path());
    let out = tempfile::tempdir().unwrap();
    run_stage(
        json!({"tables": ["models", "adf", "teachers", "tradeoff"], "grid_rows": 1}),
        &inputs,
        out.path(),
    )
    .unwrap();
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(m["rows_models"], 12);
    assert_eq!(m["rows_adf"], 2);
    assert_eq!(m["rows_teachers"], 3);
    // adf=true, teachers=multi at two label ratios: one curve per label fraction.
    assert_eq!(m["rows_tradeoff"], 2);
    assert_eq!(m["curves"], 2);
    let svg = std::fs::read_to_string(out.path().join("tradeoff.svg")).unwrap();
    assert!(
        svg.contains("UGC (10% labels)"),
        "legend per label fraction"
    );
}

#[test]
fn a_report_without_evaluate_deps_is_refused() {
    let out = tempfile::tempdir().unwrap();
    let inputs = vec![input("split", "split", Path::new("/nonexistent"))];
    let err = run_stage(json!({}), &inputs, out.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("evaluate") && err.contains("split (split)"),
        "{err}"
    );
}

#[test]
fn schema_documents_every_parameter() {
    let s = schema();
    assert_eq!(s.kind, "report");
    assert!(!s.gpu);
    for (name, p) in &s.params {
        assert!(!p.doc.is_empty(), "{name} has no doc");
    }
    // The defaults deserialize into the typed parameters.
    let p = params(json!({}));
    assert_eq!(
        p.tables,
        [TableKind::Models, TableKind::Ablations, TableKind::Tradeoff]
    );
    assert_eq!(ugc_kinds::KindParams::check(&p), []);
}

#[test]
fn row_labels_must_be_an_ordered_list() {
    // The planner refuses it (ugc-kinds' tests); a library caller of build_report too.
    let p = params(json!({"row_labels": {"adf": {"true": "Ours"}}}));
    let out = tempfile::tempdir().unwrap();
    let err = build_report(&p, &[], out.path()).unwrap_err().to_string();
    assert!(err.contains("`row_labels.adf`"), "{err}");
}

#[test]
fn models_table_is_not_an_ablation_table() {
    let tmp = tempfile::tempdir().unwrap();
    let records = load_records(&quickstart(tmp.path()), "label_ratio").unwrap();
    let err = tables::ablation_table(&records, &params(json!({})), TableKind::Models)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`models`"), "{err}");
}

#[test]
fn reference_evaluation_is_listed_without_cost_and_not_plotted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut inputs = quickstart(tmp.path());
    let dir = tmp.path().join("eval_real");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("metrics.json"),
        r#"{"miou": 0.6, "psnr": 100.0, "seg_fd": -3.95e-9, "label_fraction": 0.25}"#,
    )
    .unwrap();
    std::fs::write(dir.join("eval.json"), r#"{"model": {"reference": true}}"#).unwrap();
    inputs.push(input("eval_real", "evaluate", &dir));
    let records = load_records(&inputs, "label_ratio").unwrap();
    let p = params(json!({"extra_metrics": ["psnr", "seg_fd", "latency_ms"]}));
    let t = tables::models_table(&records, &p).unwrap();
    let real = t.md_rows.last().unwrap();
    // Honest: no labels, arch, cost, PSNR of the photos against themselves, seg_fd of
    // ~0 or latency; only the mIoU ceiling.
    assert_eq!(
        real,
        &[
            "–",
            "real photos (reference)",
            "–",
            "–",
            "–",
            "–",
            "60.00",
            "–",
            "–",
            "–"
        ]
    );
    // The models have no seg_fd or latency: a dash, not an error.
    assert_eq!(t.md_rows[0][8..], ["–", "–"]);
    assert!(
        t.notes.iter().any(|n| n.contains("reference row")),
        "{:?}",
        t.notes
    );
    let (trade, series, _) = tables::tradeoff(&records, &p).unwrap();
    assert_eq!(trade.md_rows.len(), 3);
    assert!(series.iter().all(|s| s.name != "reference"));
}
