//! `ugc-pipe metrics ...`: the metrics library on results made elsewhere (feature arrays,
//! label maps, image folders). Values go to stdout (one JSON object with --json), the
//! progress bar to stderr.

use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ugc_metrics::MetricsError;
use ugc_metrics::drn::{DrnConfig, DrnSeg};
use ugc_metrics::folders::{self, Paired, PairedReport, Progress};
use ugc_metrics::inception::FidInception;
use ugc_metrics::kid::KidConfig;
use ugc_metrics::lpips::{Lpips, LpipsBackbone};
use ugc_metrics::npz::write_fid_stats;
use ugc_pipe::cli::metrics::{LpipsNet, NetArgs};
use ugc_pipe::cli::{CliError, CliResult, MetricsVerb};
use ugc_pipe::runtime::DeviceChoice;

/// Runs one `metrics` verb.
pub fn run(which: MetricsVerb) -> CliResult {
    match which {
        MetricsVerb::Frechet { a, b, json } => frechet(&a, &b, json),
        MetricsVerb::Fid {
            paths,
            weights,
            dims,
            save_stats,
            net,
        } => fid(&paths[0], &paths[1], &weights, dims, save_stats, &net),
        MetricsVerb::Kid {
            a,
            b,
            weights,
            subsets,
            subset_size,
            seed,
            net,
        } => {
            let cfg = KidConfig {
                num_subsets: subsets as usize,
                max_subset_size: subset_size as usize,
                seed,
            };
            kid(&a, &b, &weights, &cfg, &net)
        }
        MetricsVerb::Psnr { a, b, json, quiet } => paired(&a, &b, Paired::Psnr, json, quiet),
        MetricsVerb::Ssim { a, b, json, quiet } => paired(&a, &b, Paired::Ssim, json, quiet),
        MetricsVerb::Lpips {
            a,
            b,
            weights,
            net,
            backbone,
            common,
        } => lpips(&a, &b, &weights, net, backbone.as_deref(), &common),
        MetricsVerb::Miou {
            pred,
            gt,
            num_classes,
            ignore,
            label_ids,
            images,
            drn,
            batch_size,
            device,
            quiet,
            json,
        } => {
            if let (Some(images), Some(drn)) = (&images, &drn) {
                if pred.is_some() || label_ids || num_classes.is_some_and(|n| n != 19) {
                    return Err(CliError::usage(
                        "--images/--drn segment generated Cityscapes images (19 classes); \
                         --pred, --label-ids and another --num-classes do not apply",
                    ));
                }
                return drn_miou(images, &gt, drn, batch_size, device, quiet, json);
            }
            let Some(pred) = pred else {
                return Err(CliError::usage(
                    "metrics miou needs --pred DIR (label maps) or --images DIR --drn WEIGHTS \
                     (generated Cityscapes images)",
                ));
            };
            if label_ids {
                if num_classes.is_some_and(|n| n != 19) || ignore.is_some() {
                    return Err(CliError::usage(
                        "--label-ids evaluates the 19 Cityscapes train ids with 255 ignored; \
                         --num-classes and --ignore do not apply",
                    ));
                }
                let report = ugc_metrics::cityscapes_tree::miou_label_ids(&pred, &gt)
                    .map_err(metrics_err)?;
                return print_miou(&report, json);
            }
            let Some(num_classes) = num_classes else {
                return Err(CliError::usage(
                    "metrics miou --pred needs --num-classes N (or --label-ids for Cityscapes \
                     label ids)",
                ));
            };
            miou(&pred, &gt, num_classes, ignore, json)
        }
    }
}

/// Bad input (files, names, sizes, parameters) exits 2; libtorch and numerical failures 1.
fn metrics_err(e: MetricsError) -> CliError {
    match e {
        MetricsError::Torch(_) | MetricsError::Numerical(_) => CliError::failed(e),
        e => CliError::usage(e),
    }
}

/// `--device` as libtorch sees it: asking for CUDA without it is an error, not a CPU run.
fn device(choice: DeviceChoice) -> Result<tch::Device, CliError> {
    let cuda = tch::Cuda::is_available();
    match choice {
        DeviceChoice::Cpu => Ok(tch::Device::Cpu),
        DeviceChoice::Auto if cuda => Ok(tch::Device::Cuda(0)),
        DeviceChoice::Auto => Ok(tch::Device::Cpu),
        DeviceChoice::Cuda if cuda => Ok(tch::Device::Cuda(0)),
        DeviceChoice::Cuda => Err(CliError::usage(
            "--device cuda: no CUDA device is visible to libtorch (use --device cpu or auto)",
        )),
    }
}

/// A progress bar on stderr, one per phase (hidden with --quiet or when stderr is not a
/// terminal, as indicatif decides).
struct Bar {
    quiet: bool,
    bar: Option<ProgressBar>,
}

impl Bar {
    fn new(quiet: bool) -> Self {
        Bar { quiet, bar: None }
    }
}

impl Progress for Bar {
    fn start(&mut self, what: &str, total: u64) {
        let target = if self.quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        if let Ok(style) =
            ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} images, {elapsed} (eta {eta})")
        {
            bar.set_style(style);
        }
        bar.set_message(what.to_string());
        self.bar = Some(bar);
    }
    fn advance(&mut self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

fn print_value(name: &str, value: f64, mut extra: serde_json::Value, json: bool) -> CliResult {
    if json {
        extra["metric"] = serde_json::json!(name);
        // JSON has no infinity: identical images (PSNR) are reported as the string.
        extra["value"] = if value.is_finite() {
            serde_json::json!(value)
        } else {
            serde_json::json!(value.to_string())
        };
        println!("{extra}");
    } else {
        println!("{}: {value}", name.to_uppercase());
    }
    Ok(0)
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

fn load_inception(weights: &Path, net: &NetArgs) -> Result<FidInception, CliError> {
    FidInception::load(weights, device(net.device)?).map_err(metrics_err)
}

fn fid(a: &Path, b: &Path, weights: &Path, dims: i64, save: bool, net: &NetArgs) -> CliResult {
    if save {
        if !a.is_dir() {
            return Err(CliError::usage(format!(
                "--save-stats {}: not a folder of images",
                a.display()
            )));
        }
        if b.exists() {
            return Err(CliError::usage(format!(
                "--save-stats: {} exists already (pytorch-fid refuses to overwrite it too)",
                b.display()
            )));
        }
    }
    let model = load_inception(weights, net)?;
    let mut bar = Bar::new(net.quiet);
    if save {
        let stats = folders::fid_stats_of_path(&model, a, net.batch_size, dims, &mut bar)
            .map_err(metrics_err)?;
        write_fid_stats(b, &stats).map_err(metrics_err)?;
        if net.json {
            println!(
                "{}",
                serde_json::json!({"stats": b, "dims": dims, "n_images": stats.n})
            );
        } else {
            println!(
                "statistics of {} images written to {}",
                stats.n,
                b.display()
            );
        }
        return Ok(0);
    }
    let r =
        folders::fid_of_paths(&model, a, b, net.batch_size, dims, &mut bar).map_err(metrics_err)?;
    if r.offset_applied {
        eprintln!(
            "fid calculation produces singular product; adding 1e-06 to diagonal of cov estimates"
        );
    }
    let extra = serde_json::to_value(&r).map_err(CliError::failed)?;
    print_value("fid", r.value, extra, net.json)
}

fn kid(a: &Path, b: &Path, weights: &Path, cfg: &KidConfig, net: &NetArgs) -> CliResult {
    let model = load_inception(weights, net)?;
    let mut bar = Bar::new(net.quiet);
    let r =
        folders::kid_of_dirs(&model, a, b, net.batch_size, cfg, &mut bar).map_err(metrics_err)?;
    if net.json {
        let mut v = serde_json::to_value(r).map_err(CliError::failed)?;
        v["metric"] = serde_json::json!("kid");
        v["value"] = serde_json::json!(r.mean);
        v["seed"] = serde_json::json!(cfg.seed);
        println!("{v}");
    } else {
        println!(
            "KID: {} ± {} ({} subsets of {} images)",
            r.mean, r.std, r.num_subsets, r.subset_size
        );
    }
    Ok(0)
}

fn print_paired(name: &str, r: &PairedReport, json: bool) -> CliResult {
    let per_image: serde_json::Map<String, serde_json::Value> = r
        .per_image
        .iter()
        .map(|(n, v)| {
            let v = if v.is_finite() {
                serde_json::json!(v)
            } else {
                serde_json::json!(v.to_string())
            };
            (n.clone(), v)
        })
        .collect();
    let extra = serde_json::json!({"n_images": r.n_images, "per_image": per_image});
    print_value(name, r.value, extra, json)
}

fn paired(a: &Path, b: &Path, which: Paired, json: bool, quiet: bool) -> CliResult {
    let mut bar = Bar::new(quiet);
    let r = folders::paired_of_dirs(a, b, which, &mut bar).map_err(metrics_err)?;
    let name = match which {
        Paired::Psnr => "psnr",
        Paired::Ssim => "ssim",
    };
    print_paired(name, &r, json)
}

fn lpips(
    a: &Path,
    b: &Path,
    weights: &Path,
    net: LpipsNet,
    backbone: Option<&Path>,
    common: &NetArgs,
) -> CliResult {
    let kind = match net {
        LpipsNet::Alex => LpipsBackbone::Alex,
        LpipsNet::Vgg => LpipsBackbone::Vgg,
    };
    let model =
        Lpips::load(kind, weights, backbone, device(common.device)?).map_err(metrics_err)?;
    let mut bar = Bar::new(common.quiet);
    let r =
        folders::lpips_of_dirs(&model, a, b, common.batch_size, &mut bar).map_err(metrics_err)?;
    print_paired("lpips", &r, common.json)
}

fn print_miou(report: &ugc_metrics::MiouReport, json: bool) -> CliResult {
    if json {
        let mut v = serde_json::to_value(report).map_err(CliError::failed)?;
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

fn drn_miou(
    images: &Path,
    gt: &Path,
    weights: &Path,
    batch_size: i64,
    dev: DeviceChoice,
    quiet: bool,
    json: bool,
) -> CliResult {
    let drn = DrnSeg::load(weights, &DrnConfig::d105(19), device(dev)?).map_err(metrics_err)?;
    let mut bar = Bar::new(quiet);
    let report =
        folders::drn_miou_of_dirs(&drn, images, gt, batch_size, &mut bar).map_err(metrics_err)?;
    print_miou(&report, json)
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
    print_miou(&report, json)
}
