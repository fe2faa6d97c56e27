//! Model verbs: `profile`, `infer`, `import`, `export` (thin layers over `ugc_nn`).

use std::path::{Path, PathBuf};

use ugc_nn::{Arch, ArchConfig, Mode, NormG, NormKind, SubnetConfig, Upsampling};

use ugc_pipe::cli::args::ArchArgs;
use ugc_pipe::cli::{CliError, CliResult, EXIT_FAILED, print_json_or};
use ugc_pipe::runtime::DeviceChoice;

/// The configured architecture; `input_nc` comes from the input shape when known (and
/// must then agree with `--input-nc` / `--label-nc`).
pub fn arch_config(a: &ArchArgs, input_nc: Option<i64>) -> Result<ArchConfig, CliError> {
    let arch: Arch = a.arch.parse().map_err(CliError::usage)?;
    let mut cfg = ArchConfig::new(arch);
    if let Some(v) = a.ngf {
        cfg.ngf = v;
    }
    if let Some(v) = a.n_blocks {
        cfg.n_blocks = v;
    }
    if let Some(v) = a.num_downs {
        cfg.num_downs = v;
    }
    if let Some(v) = a.n_downsample {
        cfg.n_downsample = v;
    }
    if let Some(v) = a.output_nc {
        cfg.output_nc = v;
    }
    if let Some(u) = &a.upsampling {
        cfg.upsampling = match u.as_str() {
            "more" => Upsampling::More,
            "normal" => Upsampling::Normal,
            "most" => Upsampling::Most,
            other => {
                return Err(CliError::usage(format!(
                    "--upsampling {other}: expected `more`, `normal` or `most`"
                )));
            }
        };
    }
    if let Some(n) = &a.norm {
        if arch == Arch::Gaugan {
            return Err(CliError::usage(format!(
                "--norm {n}: gaugan's normalisation is --norm-g (SPADE's --norm_G)"
            )));
        }
        cfg.norm = match n.as_str() {
            "instance" => NormKind::Instance,
            "batch" => NormKind::Batch,
            "none" => NormKind::None,
            other => {
                return Err(CliError::usage(format!(
                    "--norm {other}: expected `instance`, `batch` or `none`"
                )));
            }
        };
    }
    if let Some(n) = &a.norm_g {
        cfg.norm_g = n
            .parse::<NormG>()
            .map_err(|e| CliError::usage(format!("--norm-g: {e}")))?;
    }
    cfg.use_dropout = a.dropout;
    if let Some(r) = a.dropout_rate {
        cfg.dropout_rate = r;
    }
    cfg.label_nc = a.label_nc;
    cfg.contain_dontcare_label = a.contain_dontcare_label;
    cfg.no_instance = a.no_instance;
    let label_nc = cfg.label_input_nc().map_err(CliError::usage)?;
    // One source of the input channels, or several that agree.
    let sources = [
        ("--input-nc", a.input_nc),
        ("--label-nc", label_nc),
        ("--input's channels", input_nc),
    ];
    let mut given = sources.iter().filter_map(|(n, v)| v.map(|v| (*n, v)));
    if let Some((first, v)) = given.next() {
        if let Some((other, w)) = given.find(|(_, w)| *w != v) {
            return Err(CliError::usage(format!(
                "{first} gives {v} input channels but {other} gives {w}"
            )));
        }
        cfg.input_nc = v;
    }
    cfg.validate().map_err(CliError::usage)?;
    Ok(cfg)
}

/// `--config`, parsed.
pub fn subnet(a: &ArchArgs) -> Result<Option<SubnetConfig>, CliError> {
    a.config
        .as_deref()
        .map(|s| {
            s.parse::<SubnetConfig>()
                .map_err(|e| CliError::usage(format!("--config: {e}")))
        })
        .transpose()
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

pub fn profile(a: &ArchArgs, input: &str, json: bool) -> CliResult {
    let shape = ugc_nn::parse_input_shape(input).map_err(CliError::usage)?;
    let cfg = arch_config(a, Some(shape[0]))?;
    let sub = subnet(a)?;
    let report = ugc_nn::profile_report(&cfg, sub.as_ref(), shape).map_err(CliError::usage)?;
    print_json_or(json, &report, || {
        println!(
            "{} {}x{}x{}: {:.3}G MACs, {:.3}M params\nconfig: {}",
            report.arch,
            shape[0],
            shape[1],
            shape[2],
            report.macs as f64 / 1e9,
            report.params as f64 / 1e6,
            report.config
        );
    })?;
    Ok(0)
}

pub struct InferArgs<'a> {
    pub arch: &'a ArchArgs,
    pub weights: &'a Path,
    pub input: &'a Path,
    pub output: &'a Path,
    pub load_size: Option<u32>,
    /// `--instance`: the instance map of a label-map input.
    pub instance: Option<PathBuf>,
    /// `--train-mode` (pix2pix test.py without --eval); eval otherwise.
    pub train_mode: bool,
    pub device: DeviceChoice,
    pub json: bool,
}

pub fn infer(a: InferArgs<'_>) -> CliResult {
    let cfg = arch_config(a.arch, None)?;
    let sub = subnet(a.arch)?;
    let dev = device(a.device)?;
    if let Some(p) = &a.instance
        && !p.is_file()
    {
        return Err(CliError::usage(format!(
            "--instance {}: no such file",
            p.display()
        )));
    }
    let opts = ugc_nn::infer::InferOptions {
        load_size: a.load_size,
        instance: a.instance,
        mode: if a.train_mode {
            Mode::Train
        } else {
            Mode::Eval
        },
    };
    let report =
        ugc_nn::infer::infer_image(&cfg, sub.as_ref(), a.weights, a.input, a.output, dev, &opts)
            .map_err(CliError::usage)?;
    print_json_or(a.json, &report, || {
        println!(
            "{} -> {} ({} {}x{}, {})",
            report.input.display(),
            report.output.display(),
            report.arch,
            report.size[1],
            report.size[0],
            report.device
        );
    })?;
    Ok(0)
}

/// Checks an official checkpoint against an architecture and, with `out`, writes it as a
/// model directory. GauGAN checkpoints with spectral norm (a spectral `--norm-g`, the
/// default) are folded first.
pub fn import(a: &ArchArgs, weights: &Path, out: Option<&PathBuf>, json: bool) -> CliResult {
    let cfg = arch_config(a, None)?;
    if !weights.exists() {
        return Err(CliError::usage(format!(
            "--weights {}: no such file",
            weights.display()
        )));
    }
    let (tensors, folded) =
        ugc_nn::export::read_checkpoint(&cfg, weights).map_err(CliError::usage)?;
    let report = ugc_nn::export::check_tensors(&cfg, &tensors).map_err(CliError::usage)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": report.is_ok(), "report": report, "spectral_norm_folded": folded})
        );
    } else {
        if !folded.is_empty() {
            println!("folded spectral norm of {} layers", folded.len());
        }
        println!("{report}");
    }
    if !report.is_ok() {
        return Ok(EXIT_FAILED);
    }
    if let Some(out) = out {
        let loaded = ugc_nn::export::load_tensors(&cfg, &tensors, weights, tch::Device::Cpu)
            .map_err(CliError::usage)?;
        let full = loaded.generator.search_space().largest();
        let meta = ugc_nn::export::export_subnet(loaded.generator.as_ref(), &full, out)
            .map_err(CliError::failed)?;
        if !json {
            println!("wrote {} ({} params)", out.display(), meta.params);
        }
    }
    Ok(0)
}

/// Exports sub-net `--config` of a supernet weights file as a compact model directory.
pub fn export(a: &ArchArgs, weights: &Path, out: &Path, json: bool) -> CliResult {
    let cfg = arch_config(a, None)?;
    let loaded =
        ugc_nn::export::load_weights(&cfg, weights, tch::Device::Cpu).map_err(CliError::usage)?;
    let sub = match subnet(a)? {
        Some(s) => s,
        None => loaded.generator.search_space().largest(),
    };
    let meta = ugc_nn::export::export_subnet(loaded.generator.as_ref(), &sub, out)
        .map_err(CliError::usage)?;
    print_json_or(json, &meta, || {
        println!(
            "exported {} sub-net {} to {} ({} params)",
            meta.arch.arch,
            meta.source_subnet,
            out.display(),
            meta.params
        );
    })?;
    Ok(0)
}
