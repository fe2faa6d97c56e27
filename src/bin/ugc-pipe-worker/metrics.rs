//! `ugc-pipe metrics ...`: the metrics library on results made elsewhere.

use std::path::Path;

use ugc_pipe::cli::{CliError, CliResult, MetricsVerb};

/// Runs one `metrics` verb.
pub fn run(which: MetricsVerb) -> CliResult {
    match which {
        MetricsVerb::Frechet { a, b, json } => frechet(&a, &b, json),
        MetricsVerb::Miou {
            pred,
            gt,
            num_classes,
            ignore,
            json,
        } => miou(&pred, &gt, num_classes, ignore, json),
    }
}

/// Fréchet distance between two N x D feature arrays (.npy, float32/float64).
pub fn frechet(a: &Path, b: &Path, json: bool) -> CliResult {
    let value = ugc_metrics::frechet_from_npy(a, b).map_err(CliError::usage)?;
    if json {
        println!("{}", serde_json::json!({"value": value}));
    } else {
        println!("{value}");
    }
    Ok(0)
}

/// Mean IoU of predicted label PNGs against ground-truth label PNGs with matching names.
pub fn miou(
    pred: &Path,
    gt: &Path,
    num_classes: usize,
    ignore: Option<u32>,
    json: bool,
) -> CliResult {
    let report =
        ugc_metrics::miou_from_dirs(pred, gt, num_classes, ignore).map_err(CliError::usage)?;
    if json {
        let mut v = serde_json::to_value(&report).map_err(CliError::failed)?;
        v["value"] = serde_json::json!(report.value);
        println!("{v}");
    } else {
        println!(
            "mIoU {:.4} over {} images (pixel accuracy {:.4})",
            report.value, report.num_images, report.pixel_accuracy
        );
    }
    Ok(0)
}
