//! Shared set-up of the method's stages (stage one and stage two): the split a stage trains
//! on, the architecture from a parameter map, the input encoding the family needs, loaders,
//! evaluation batches, the discriminator, a saved supernet, and JSON files.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{Device, nn::VarStore};
use ugc_data::augment::AugmentConfig;
use ugc_data::{Batch, InputEncoding, Loader, LoaderConfig, SplitManifest, Subset};
use ugc_engine::StageContext;
use ugc_nn::{Arch, ArchConfig, DiscConfig, Generator, build_generator};

use crate::error::MethodError;

/// The split a stage depends on: its manifest and folder.
pub struct SplitData {
    pub manifest: SplitManifest,
    pub dir: PathBuf,
}

/// Loads the manifest of the `split` dependency of `ctx`.
pub fn open_split(ctx: &StageContext<'_>) -> Result<SplitData, MethodError> {
    let input = ctx.input_of_kind("split").ok_or_else(|| {
        MethodError::param(
            "deps",
            ctx.node,
            format!(
                "stage kind {} needs a `split` stage among its deps",
                ctx.kind
            ),
        )
    })?;
    Ok(SplitData {
        manifest: SplitManifest::load(&input.dir)?,
        dir: input.dir.clone(),
    })
}

/// Reads an [`ArchConfig`] from a parameter map: `arch` (family name) is required, every
/// other field defaults to the family's official value (`ArchConfig::new`). When the split
/// feeds one-hot inputs and `input_nc` is not given, it is set from the class table (plus
/// one instance-edge channel unless `no_instance`), so users need not count channels.
pub fn arch_from_param(
    param: &str,
    v: &Value,
    manifest: &SplitManifest,
) -> Result<ArchConfig, MethodError> {
    arch_from_classes(param, v, manifest.classes.as_ref())
}

fn arch_from_classes(
    param: &str,
    v: &Value,
    classes: Option<&ugc_data::ClassTable>,
) -> Result<ArchConfig, MethodError> {
    let map = v
        .as_object()
        .ok_or_else(|| MethodError::param(param, v, "must be a map with at least `arch`"))?;
    let name = map
        .get("arch")
        .and_then(Value::as_str)
        .ok_or_else(|| MethodError::param(&format!("{param}.arch"), v, "is required"))?;
    let family: Arch = name.parse().map_err(|e: ugc_nn::ArchError| {
        MethodError::param(&format!("{param}.arch"), name, e.to_string())
    })?;
    let mut base = serde_json::to_value(ArchConfig::new(family))
        .map_err(|e| MethodError::param(param, v, e.to_string()))?;
    if let (Some(obj), Some(InputEncoding::OneHot { .. }), Some(ct)) =
        (base.as_object_mut(), default_encoding(family), classes)
    {
        // The official `--no_instance` drops the edge channel from the data as well.
        let no_instance = map.get("no_instance").and_then(Value::as_bool) == Some(true);
        obj.insert(
            "input_nc".into(),
            Value::from(ct.onehot_channels as i64 + i64::from(!no_instance)),
        );
    }
    if let Some(obj) = base.as_object_mut() {
        for (k, val) in map {
            if k == "space" {
                // Merge the search-space spec field by field too.
                let mut sp = obj.get("space").cloned().unwrap_or(Value::Null);
                if let (Some(spo), Some(valo)) = (sp.as_object_mut(), val.as_object()) {
                    for (sk, sv) in valo {
                        spo.insert(sk.clone(), sv.clone());
                    }
                    obj.insert("space".into(), sp);
                    continue;
                }
            }
            obj.insert(k.clone(), val.clone());
        }
    }
    let cfg: ArchConfig =
        serde_json::from_value(base).map_err(|e| MethodError::param(param, v, e.to_string()))?;
    cfg.validate()
        .map_err(|e| MethodError::param(param, v, e.to_string()))?;
    Ok(cfg)
}

/// The input encoding a family was designed for: colour images for the pix2pix families,
/// one-hot label maps with an instance-edge channel for pix2pixHD and GauGAN (their
/// official Cityscapes set-up). `None` for pix2pix families = `Rgb`.
pub fn default_encoding(arch: Arch) -> Option<InputEncoding> {
    match arch {
        Arch::Pix2PixHd | Arch::Gaugan => Some(InputEncoding::OneHot {
            instance_edges: true,
        }),
        _ => None,
    }
}

/// The encoding used for `cfg` on `manifest`: one-hot needs a class table; the
/// instance-edge channel is there unless `cfg.no_instance`, and the class table's one-hot
/// channels plus that channel must be the model's `input_nc`.
pub fn encoding_for(
    cfg: &ArchConfig,
    manifest: &SplitManifest,
) -> Result<InputEncoding, MethodError> {
    encoding_with(cfg, manifest.classes.as_ref())
}

fn encoding_with(
    cfg: &ArchConfig,
    classes: Option<&ugc_data::ClassTable>,
) -> Result<InputEncoding, MethodError> {
    match (default_encoding(cfg.arch), classes) {
        (Some(enc), None) => Err(MethodError::param(
            "arch.arch",
            cfg.arch,
            format!(
                "{} takes one-hot label maps ({enc:?}), but the split is in aligned format with no class table",
                cfg.arch
            ),
        )),
        (Some(_), Some(ct)) => {
            let instance_edges = !cfg.no_instance;
            let want = ct.onehot_channels as i64 + i64::from(instance_edges);
            if cfg.input_nc != want {
                return Err(MethodError::param(
                    "arch.input_nc",
                    cfg.input_nc,
                    format!(
                        "class table `{}` gives {} one-hot channels{}: {want} input channels",
                        ct.name,
                        ct.onehot_channels,
                        if instance_edges {
                            " + the instance-edge channel (no_instance unset)"
                        } else {
                            " (no_instance: no edge channel)"
                        }
                    ),
                ));
            }
            Ok(InputEncoding::OneHot { instance_edges })
        }
        (None, _) => Ok(InputEncoding::Rgb),
    }
}

/// Image geometry and batch settings of a training stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DataParams {
    pub batch_size: usize,
    /// Resize to this square size first (`None` = native size).
    pub image_size: Option<u32>,
    /// Random square crop after resizing (`None` = no crop).
    pub crop: Option<u32>,
    pub flip: bool,
    /// Loader worker threads.
    pub threads: usize,
}

/// A shuffled, augmented training loader over `subset`.
pub fn train_loader(
    split: &SplitData,
    subset: Subset,
    data: &DataParams,
    encoding: InputEncoding,
    seed: u64,
    device: Device,
) -> Result<Loader, MethodError> {
    let cfg = train_loader_config(data, encoding, seed, device);
    Ok(Loader::new(&split.manifest, &split.dir, subset, cfg)?)
}

/// The loader settings [`train_loader`] uses (pix2pix augmentation, full batches only).
pub fn train_loader_config(
    data: &DataParams,
    encoding: InputEncoding,
    seed: u64,
    device: Device,
) -> LoaderConfig {
    let mut cfg = LoaderConfig::train(data.batch_size, seed);
    cfg.threads = data.threads.max(1);
    cfg.augment = AugmentConfig {
        load_size: data.image_size.map(|s| (s, s)),
        crop_size: data.crop.map(|s| (s, s)),
        random: true,
        flip: data.flip,
    };
    cfg.encoding = encoding;
    cfg.device = device;
    cfg
}

/// A fixed-order loader without random augmentation (samples, evaluation), resized and
/// centre-cropped like training.
pub fn eval_loader(
    split: &SplitData,
    subset: Subset,
    data: &DataParams,
    encoding: InputEncoding,
    batch_size: usize,
    device: Device,
) -> Result<Loader, MethodError> {
    let cfg = eval_loader_config(data.image_size, data.crop, encoding, batch_size, device);
    Ok(Loader::new(&split.manifest, &split.dir, subset, cfg)?)
}

/// The loader settings of [`eval_loader`] and [`read_batches`]: fixed order, one thread, an
/// optional square resize then an optional centred square crop.
pub fn eval_loader_config(
    image_size: Option<u32>,
    crop: Option<u32>,
    encoding: InputEncoding,
    batch_size: usize,
    device: Device,
) -> LoaderConfig {
    let mut cfg = LoaderConfig::eval(batch_size);
    cfg.threads = 1;
    cfg.augment.load_size = image_size.map(|s| (s, s));
    cfg.augment.crop_size = crop.map(|s| (s, s));
    cfg.encoding = encoding;
    cfg.device = device;
    cfg
}

/// How stage two's evaluation batches are prepared: the generator's input encoding, an
/// optional square resize (as the supernet trained; no crop), and the device.
#[derive(Debug, Clone, Copy)]
pub struct EvalSpec {
    pub encoding: InputEncoding,
    pub image_size: Option<u32>,
    pub device: Device,
}

/// Reads up to `max_batches` batches of a subset (fixed order, no augmentation) into memory.
pub fn read_batches(
    manifest: &SplitManifest,
    split_dir: &Path,
    subset: Subset,
    batch_size: usize,
    max_batches: usize,
    spec: &EvalSpec,
) -> Result<Vec<Batch>, MethodError> {
    let cfg = eval_loader_config(
        spec.image_size,
        None,
        spec.encoding,
        batch_size,
        spec.device,
    );
    let loader = Loader::new(manifest, split_dir, subset, cfg).map_err(MethodError::data_at(
        format!("{subset:?} loader of {}", split_dir.display()),
    ))?;
    loader
        .epoch(0)
        .take(max_batches)
        .map(|b| {
            b.map_err(MethodError::data_at(format!(
                "{subset:?} batch of {}",
                split_dir.display()
            )))
        })
        .collect()
}

/// The discriminator DESIGN §2 pairs with a family: PatchGAN (3 layers) for the pix2pix
/// families, multi-scale (2 x 4 layers) for pix2pixHD / GauGAN; input concat(input, output).
pub fn default_disc(cfg: &ArchConfig, ndf: i64) -> DiscConfig {
    let nc = cfg.input_nc + cfg.output_nc;
    match cfg.arch {
        Arch::Pix2PixHd | Arch::Gaugan => DiscConfig::multiscale(nc, ndf),
        _ => DiscConfig::patchgan(nc, ndf),
    }
}

/// Checks that `h x w` inputs survive the discriminator's convolutions (a 3-layer PatchGAN
/// needs at least 32 px: 16 px shrink to nothing before its last 4x4 conv), so a too-small
/// `crop`/`image_size` is refused by name instead of failing inside libtorch.
pub fn check_disc_input(d: &DiscConfig, h: i64, w: i64) -> Result<(), MethodError> {
    if d.arch != ugc_nn::DiscArch::Patchgan {
        // Multi-scale convs pad by 2: every size >= 1 passes.
        return Ok(());
    }
    let fits = |mut s: i64| -> bool {
        for _ in 0..d.n_layers {
            if s + 2 < 4 {
                return false;
            }
            s = (s + 2 - 4) / 2 + 1;
        }
        for _ in 0..2 {
            if s + 2 < 4 {
                return false;
            }
            s = s + 2 - 4 + 1;
        }
        s >= 1
    };
    if fits(h) && fits(w) {
        Ok(())
    } else {
        Err(MethodError::param(
            "crop",
            format!("{h}x{w}"),
            format!(
                "training images of {h}x{w} are too small for a {}-layer PatchGAN; use crop/image_size >= {}",
                d.n_layers,
                1i64 << (d.n_layers + 2)
            ),
        ))
    }
}

/// Runs `f`, turning a panic raised inside libtorch (tch's infallible ops panic on shape
/// errors; a synchronised batch norm panics when its collective fails because a peer rank
/// died) into an error, so a bad input never brings the whole pipeline down.
pub fn guard_panics<T, E: From<MethodError>>(
    what: &str,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            // Keep the first line: libtorch appends a long C++ backtrace.
            let first = msg.lines().next().unwrap_or("").to_string();
            Err(MethodError::Numeric(format!("{what} failed inside libtorch: {first}")).into())
        }
    }
}

/// A supernet stage's weights, loaded: `supernet/arch.json` + `supernet/generator.safetensors`.
pub struct LoadedSupernet {
    pub arch: ArchConfig,
    pub vs: VarStore,
    pub generator: Box<dyn Generator>,
}

/// Loads the generator supernet from a `supernet` stage output folder.
pub fn load_supernet(dir: &Path, device: Device) -> Result<LoadedSupernet, MethodError> {
    let arch_file = dir.join("supernet/arch.json");
    let arch: ArchConfig = read_json(&arch_file)?;
    let mut vs = VarStore::new(device);
    let generator =
        build_generator(&vs.root(), &arch).map_err(MethodError::nn_at(arch_file.display()))?;
    let w = dir.join("supernet/generator.safetensors");
    vs.load(&w).map_err(|e| MethodError::Weights {
        path: w.clone(),
        reason: e.to_string(),
    })?;
    Ok(LoadedSupernet {
        arch,
        vs,
        generator,
    })
}

/// Reads a JSON file written by an earlier stage.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, MethodError> {
    let text = std::fs::read_to_string(path).map_err(|e| MethodError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| MethodError::Json {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), MethodError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| MethodError::Json {
        path: path.to_path_buf(),
        source: e,
    })?;
    std::fs::write(path, text).map_err(|e| MethodError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ugc_engine::StageError;

    #[test]
    fn no_instance_drops_the_edge_channel_from_the_model_and_the_data() {
        let ct = ugc_data::ClassTable::cityscapes();
        let hd = |extra: Value| {
            let mut m = serde_json::json!({"arch": "pix2pixhd"});
            m.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            m
        };
        let arch = |v: &Value| arch_from_classes("arch", v, Some(&ct));
        // The official Cityscapes input: 35 one-hot channels + instance edges.
        let cfg = arch(&hd(serde_json::json!({}))).unwrap();
        assert_eq!(cfg.input_nc, 36);
        assert_eq!(
            encoding_with(&cfg, Some(&ct)).unwrap(),
            InputEncoding::OneHot {
                instance_edges: true
            }
        );
        // --no_instance, with or without label_nc: 35 channels, no edges in the batches.
        for extra in [
            serde_json::json!({"no_instance": true}),
            serde_json::json!({"no_instance": true, "label_nc": 35}),
        ] {
            let cfg = arch(&hd(extra.clone())).unwrap_or_else(|e| panic!("{extra}: {e}"));
            assert_eq!(cfg.input_nc, 35, "{extra}");
            assert_eq!(
                encoding_with(&cfg, Some(&ct)).unwrap(),
                InputEncoding::OneHot {
                    instance_edges: false
                },
                "{extra}"
            );
        }
        // A model whose channels the class table cannot feed is refused by name.
        let cfg = arch(&hd(serde_json::json!({"input_nc": 20}))).unwrap();
        let e = encoding_with(&cfg, Some(&ct)).unwrap_err().to_string();
        assert!(e.contains("arch.input_nc") && e.contains("36"), "{e}");
        let e = encoding_with(&cfg, None).unwrap_err().to_string();
        assert!(e.contains("no class table"), "{e}");
    }

    #[test]
    fn stage_two_file_errors_keep_their_context_and_stage_error_kind() {
        // load_supernet may build a network (a draw from libtorch's one generator).
        let _rng = ugc_engine::testing::torch_rng();
        let dir = tempfile::tempdir().unwrap();
        // A supernet folder without arch.json: an I/O error naming the file.
        let e = StageError::from(load_supernet(dir.path(), Device::Cpu).err().unwrap());
        assert!(
            matches!(&e, StageError::Io { .. }) && e.to_string().contains("arch.json"),
            "{e:?}"
        );
        // Unparsable JSON: a data error naming the file.
        let p = dir.path().join("bad.json");
        std::fs::write(&p, "{").unwrap();
        let e = StageError::from(read_json::<Value>(&p).unwrap_err());
        assert!(
            matches!(&e, StageError::Data(m) if m.contains("bad.json")),
            "{e:?}"
        );
        // Context adapters: same text as the message, data -> Data, networks -> Failed.
        let io = || std::io::Error::other("gone");
        let data = ugc_data::DataError::Io {
            path: "x.png".into(),
            source: io(),
        };
        let e = StageError::from(MethodError::data_at("unlabeled loader")(data));
        assert!(
            matches!(&e, StageError::Data(m) if m == "unlabeled loader: x.png: gone"),
            "{e:?}"
        );
        let nn = ugc_nn::NnError::InvalidConfig {
            field: "ngf".into(),
            value: "0".into(),
            reason: "must be > 0".into(),
        };
        let e = StageError::from(MethodError::nn_at("exporting the student")(nn));
        assert!(
            matches!(&e, StageError::Failed(m) if m.starts_with("exporting the student: invalid architecture config: ngf")),
            "{e:?}"
        );
    }
}
