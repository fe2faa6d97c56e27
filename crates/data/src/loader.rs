//! Multi-threaded loader: worker threads decode and augment examples, a bounded window of
//! batches is prefetched, and batches come out in a deterministic order on a device.
//!
//! Determinism: the epoch order is a shuffle seeded by `(seed, epoch)` and each example's
//! augmentation by `(seed, epoch, position)`, so results do not depend on the number of
//! threads or on which worker finished first (batches are re-ordered before being yielded).
//!
//! Shards (data-parallel training): [`Loader::shard`] makes rank `r` of `W` yield only its
//! rows `[start_r, start_r + n_r)` of every global batch ([`shard_range`]), decoding only
//! those. The order, the batch boundaries and each example's augmentation seed are those of
//! the whole batch, so the `W` shards together are exactly the unsharded batch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, unbounded};
use image::RgbImage;
use tch::{Device, Tensor};

use crate::augment::{AugmentConfig, Transform};
use crate::classes::ClassTable;
use crate::dataset::Half;
use crate::error::{DataError, Result};
use crate::image_io::{IdMap, decode_ids, decode_rgb, read};
use crate::manifest::{InputRef, SplitManifest, TargetRef};
use crate::rng::Rng;
use crate::split::crop_half;
use crate::synth::labels2photo::color_map;

/// Which part of a split to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subset {
    Labeled,
    Unlabeled,
    Holdout,
    Test,
}

/// How semantic inputs become the generator's input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputEncoding {
    /// Three channels in [-1, 1]: the image itself, or the colour map of a label map
    /// (pix2pix on Cityscapes).
    Rgb,
    /// One channel per class (`onehot_channels`), plus an instance-boundary channel when
    /// `instance_edges` (GauGAN / pix2pixHD).
    OneHot { instance_edges: bool },
}

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub threads: usize,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub drop_last: bool,
    pub augment: AugmentConfig,
    pub encoding: InputEncoding,
    pub device: Device,
}

impl LoaderConfig {
    /// Training defaults as pix2pix: shuffled, random crop + flip (sizes set by the caller).
    pub fn train(batch_size: usize, seed: u64) -> Self {
        LoaderConfig {
            batch_size,
            threads: 2,
            prefetch: 4,
            shuffle: true,
            seed,
            drop_last: true,
            augment: AugmentConfig {
                load_size: None,
                crop_size: None,
                random: true,
                flip: true,
            },
            encoding: InputEncoding::Rgb,
            device: Device::Cpu,
        }
    }

    /// Evaluation defaults: fixed order, no random augmentation, keep the last batch.
    pub fn eval(batch_size: usize) -> Self {
        LoaderConfig {
            shuffle: false,
            drop_last: false,
            augment: AugmentConfig {
                load_size: None,
                crop_size: None,
                random: false,
                flip: false,
            },
            ..Self::train(batch_size, 0)
        }
    }
}

/// One batch. `target` is `None` for unlabeled data; `labels` (class ids, `[B, H, W]`
/// int64) is present for semantic inputs, for mIoU and label-aware losses.
#[derive(Debug)]
pub struct Batch {
    pub ids: Vec<String>,
    pub input: Tensor,
    pub target: Option<Tensor>,
    pub labels: Option<Tensor>,
}

#[derive(Debug, Clone)]
struct Item {
    id: String,
    input: InputRef,
    target: Option<TargetRef>,
}

/// Loads one subset of a split.
pub struct Loader {
    items: Arc<Vec<Item>>,
    root: Arc<PathBuf>,
    classes: Option<Arc<ClassTable>>,
    cfg: LoaderConfig,
    /// `(rank, world)`: which rows of every global batch this loader yields; `(0, 1)` = all.
    shard: (usize, usize),
}

/// Rows `[start, start + n)` of a global batch of `rows` that rank `rank` of `world` takes:
/// contiguous, disjoint, covering every row, sizes differing by at most one (the first
/// `rows mod world` ranks one larger), so an uneven remainder is used, not dropped.
pub fn shard_range(rows: usize, rank: usize, world: usize) -> (usize, usize) {
    let world = world.max(1);
    let (base, extra) = (rows / world, rows % world);
    let start = rank * base + rank.min(extra);
    (start, base + usize::from(rank < extra))
}

impl Loader {
    /// A loader over `subset` of the split whose output folder is `dir`.
    pub fn new(
        manifest: &SplitManifest,
        dir: &Path,
        subset: Subset,
        cfg: LoaderConfig,
    ) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(DataError::param("batch_size", "must be at least 1"));
        }
        let pairs = |v: &[crate::manifest::LabeledPair]| -> Vec<Item> {
            v.iter()
                .map(|p| Item {
                    id: p.id.clone(),
                    input: p.input.clone(),
                    target: Some(p.target.clone()),
                })
                .collect()
        };
        let items = match subset {
            Subset::Labeled => pairs(manifest.labeled()),
            Subset::Holdout => pairs(manifest.holdout()),
            Subset::Test => pairs(manifest.test()),
            Subset::Unlabeled => manifest
                .unlabeled()
                .iter()
                .map(|u| Item {
                    id: u.id.clone(),
                    input: u.input.clone().into(),
                    target: None,
                })
                .collect(),
        };
        if matches!(cfg.encoding, InputEncoding::OneHot { .. }) && manifest.classes.is_none() {
            return Err(DataError::param(
                "encoding",
                "one-hot inputs need a class table; this split has none (aligned format)",
            ));
        }
        Ok(Loader {
            items: Arc::new(items),
            root: Arc::new(dir.to_path_buf()),
            classes: manifest.classes.clone().map(Arc::new),
            cfg,
            shard: (0, 1),
        })
    }

    /// This loader as rank `rank` of `world`: every batch it yields is the rank's rows of the
    /// global batch (see [`shard_range`]); the batch count stays the global one. Refused
    /// when some batch would leave a rank without rows (a loss over zero rows is undefined
    /// and a rank without a forward pass would miss the batch-norm collectives): the batch
    /// size, and a kept short last batch, must have at least `world` rows.
    pub fn shard(mut self, rank: usize, world: usize) -> Result<Self> {
        if world == 0 || rank >= world {
            return Err(DataError::param(
                "shard",
                format!("rank {rank} is not below the world size {world}"),
            ));
        }
        let (n, b) = (self.items.len(), self.cfg.batch_size);
        // Full batches, or a kept short last one (the only one when n < b).
        let smallest = if self.cfg.drop_last || n % b == 0 {
            b
        } else {
            n % b
        };
        if world > 1 && smallest < world {
            return Err(DataError::param(
                "batch_size",
                format!(
                    "a batch of {smallest} rows (batch_size {b}, {n} examples) cannot be \
                     shared by {world} ranks: every rank needs at least one row"
                ),
            ));
        }
        self.shard = (rank, world);
        Ok(self)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.items.len(), self.cfg.batch_size);
        if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Rows of global batch `i` of an epoch (before sharding): the batch size, or fewer
    /// for a kept short last batch.
    pub fn global_rows(&self, i: usize) -> usize {
        let (n, b) = (self.items.len(), self.cfg.batch_size);
        b.min(n.saturating_sub(i * b))
    }

    /// Iterates over one epoch. Dropping the iterator stops and joins the workers.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let epoch_seed = self.cfg.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        if self.cfg.shuffle {
            Rng::derive(epoch_seed, 0).shuffle(&mut order);
        }
        let batches: Vec<Vec<usize>> = order
            .chunks(self.cfg.batch_size)
            .filter(|c| !self.cfg.drop_last || c.len() == self.cfg.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        let (rank, world) = self.shard;
        // Each job: the global batch index, this rank's row offset in it, and its rows.
        let batches: Vec<(usize, Vec<usize>)> = batches
            .into_iter()
            .map(|idx| {
                let (start, n) = shard_range(idx.len(), rank, world);
                (start, idx[start..start + n].to_vec())
            })
            .collect();
        let (job_tx, job_rx) = unbounded::<(usize, ShardRows)>();
        let (res_tx, res_rx) = unbounded();
        let workers = (0..self.cfg.threads.max(1))
            .map(|_| {
                let ctx = WorkerCtx {
                    items: self.items.clone(),
                    root: self.root.clone(),
                    classes: self.classes.clone(),
                    augment: self.cfg.augment,
                    encoding: self.cfg.encoding,
                    seed: epoch_seed,
                    batch_size: self.cfg.batch_size,
                };
                let (rx, tx) = (job_rx.clone(), res_tx.clone());
                std::thread::spawn(move || {
                    for (bi, (offset, idx)) in rx.iter() {
                        if tx.send((bi, ctx.load_batch(bi, offset, &idx))).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        let mut e = Epoch {
            batches,
            job_tx: Some(job_tx),
            results: res_rx,
            workers,
            pending: BTreeMap::new(),
            next: 0,
            submitted: 0,
            window: self.cfg.prefetch.max(1) + self.cfg.threads.max(1),
            device: self.cfg.device,
        };
        e.fill();
        e
    }
}

struct CpuBatch {
    ids: Vec<String>,
    shape: [i64; 4],
    input: Vec<f32>,
    target: Option<Vec<f32>>,
    labels: Option<Vec<i64>>,
}

struct WorkerCtx {
    items: Arc<Vec<Item>>,
    root: Arc<PathBuf>,
    classes: Option<Arc<ClassTable>>,
    augment: AugmentConfig,
    encoding: InputEncoding,
    seed: u64,
    batch_size: usize,
}

fn push_rgb(out: &mut Vec<f32>, im: &RgbImage) {
    let (w, h) = im.dimensions();
    let n = (w * h) as usize;
    let base = out.len();
    out.resize(base + 3 * n, 0.0);
    for (i, p) in im.pixels().enumerate() {
        for c in 0..3 {
            out[base + c * n + i] = p[c] as f32 / 127.5 - 1.0;
        }
    }
}

/// Instance boundaries as in SPADE: a pixel is an edge when its instance id differs from
/// its right or lower neighbour (both pixels of the pair are marked).
pub fn instance_edges(m: &IdMap) -> Vec<f32> {
    let (w, h) = (m.width as usize, m.height as usize);
    let mut e = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if x + 1 < w && m.data[i] != m.data[i + 1] {
                e[i] = 1.0;
                e[i + 1] = 1.0;
            }
            if y + 1 < h && m.data[i] != m.data[i + w] {
                e[i] = 1.0;
                e[i + w] = 1.0;
            }
        }
    }
    e
}

struct Loaded {
    input: Vec<f32>,
    channels: i64,
    size: (u32, u32),
    target: Option<Vec<f32>>,
    labels: Option<Vec<i64>>,
}

impl WorkerCtx {
    fn rgb(&self, rel: &Path) -> Result<RgbImage> {
        let p = self.root.join(rel);
        decode_rgb(&p, &read(&p)?)
    }

    fn ids(&self, rel: &Path) -> Result<IdMap> {
        let p = self.root.join(rel);
        decode_ids(&p, &read(&p)?)
    }

    fn load_item(&self, item: &Item, rng: &mut Rng) -> Result<Loaded> {
        // Decode each file once, even when input and target share an aligned image.
        let mut whole: Option<(PathBuf, RgbImage)> = None;
        let mut half = |path: &PathBuf, h: Half| -> Result<RgbImage> {
            if whole.as_ref().is_none_or(|(p, _)| p != path) {
                whole = Some((path.clone(), self.rgb(path)?));
            }
            Ok(crop_half(&whole.as_ref().expect("set above").1, h))
        };
        enum Raw {
            Rgb(RgbImage),
            Sem(IdMap, Option<IdMap>, Option<RgbImage>),
        }
        let raw = match &item.input {
            InputRef::Rgb { path } => Raw::Rgb(self.rgb(path)?),
            InputRef::AlignedHalf { path, half: h } => Raw::Rgb(half(path, *h)?),
            InputRef::Semantic {
                label_ids,
                instance_ids,
                color,
            } => {
                let inst = match (self.encoding, instance_ids) {
                    (
                        InputEncoding::OneHot {
                            instance_edges: true,
                        },
                        None,
                    ) => {
                        return Err(DataError::bad(
                            self.root.join(label_ids),
                            "instance edges requested but this example has no instanceIds map",
                        ));
                    }
                    (
                        InputEncoding::OneHot {
                            instance_edges: true,
                        },
                        Some(p),
                    ) => Some(self.ids(p)?),
                    _ => None,
                };
                let col = match (self.encoding, color) {
                    (InputEncoding::Rgb, Some(p)) => Some(self.rgb(p)?),
                    _ => None,
                };
                Raw::Sem(self.ids(label_ids)?, inst, col)
            }
        };
        let target_raw = match &item.target {
            None => None,
            Some(TargetRef::Rgb { path }) => Some((path.clone(), self.rgb(path)?)),
            Some(TargetRef::AlignedHalf { path, half: h }) => Some((path.clone(), half(path, *h)?)),
        };
        let (w, h) = match &raw {
            Raw::Rgb(im) => im.dimensions(),
            Raw::Sem(l, _, _) => (l.width, l.height),
        };
        if let Some((p, t)) = &target_raw
            && t.dimensions() != (w, h)
        {
            return Err(DataError::bad(
                self.root.join(p),
                format!(
                    "target size {:?} differs from input size {:?}",
                    t.dimensions(),
                    (w, h)
                ),
            ));
        }
        let (tf, size) = Transform::sample(w, h, &self.augment, rng);
        let npx = (size.0 * size.1) as usize;
        let mut input = Vec::new();
        let (channels, labels) = match raw {
            Raw::Rgb(im) => {
                push_rgb(&mut input, &tf.apply_rgb(&im));
                (3, None)
            }
            Raw::Sem(l, inst, col) => {
                let classes = self.classes.as_deref().ok_or_else(|| {
                    DataError::param("encoding", "semantic inputs need a class table")
                })?;
                let lt = tf.apply_ids(&l);
                match self.encoding {
                    InputEncoding::Rgb => {
                        let c = col.unwrap_or_else(|| color_map(&l, classes));
                        push_rgb(&mut input, &tf.apply_rgb(&c));
                        (3, Some(lt))
                    }
                    InputEncoding::OneHot { instance_edges: e } => {
                        let nc = classes.onehot_channels;
                        input.resize(nc * npx, 0.0);
                        for (i, &v) in lt.data.iter().enumerate() {
                            if (v as usize) >= nc {
                                return Err(DataError::bad(
                                    &*self.root,
                                    format!("{}: label id {v} >= onehot_channels {nc}", item.id),
                                ));
                            }
                            input[v as usize * npx + i] = 1.0;
                        }
                        if e {
                            let it = tf.apply_ids(&inst.expect("loaded above when edges are on"));
                            input.extend(instance_edges(&it));
                        }
                        (nc as i64 + i64::from(e), Some(lt))
                    }
                }
            }
        };
        let target = target_raw.map(|(_, t)| {
            let mut v = Vec::with_capacity(3 * npx);
            push_rgb(&mut v, &tf.apply_rgb(&t));
            v
        });
        Ok(Loaded {
            input,
            channels,
            size,
            target,
            labels: labels.map(|l| l.data.into_iter().map(i64::from).collect()),
        })
    }

    /// Decodes the rows `idx` of global batch `bi`, the first of them at row `offset` of it
    /// (a shard's start): augmentation is seeded by the position in the global batch.
    fn load_batch(&self, bi: usize, offset: usize, idx: &[usize]) -> Result<CpuBatch> {
        let mut b = CpuBatch {
            ids: Vec::with_capacity(idx.len()),
            shape: [idx.len() as i64, 0, 0, 0],
            input: Vec::new(),
            target: None,
            labels: None,
        };
        for (k, &i) in idx.iter().enumerate() {
            let item = &self.items[i];
            let pos = (bi * self.batch_size + offset + k) as u64;
            let l = self.load_item(item, &mut Rng::derive(self.seed, pos + 1))?;
            let shape = [
                idx.len() as i64,
                l.channels,
                l.size.1 as i64,
                l.size.0 as i64,
            ];
            if k == 0 {
                b.shape = shape;
            } else if shape != b.shape {
                return Err(DataError::bad(
                    self.root.join("manifest.json"),
                    format!(
                        "example `{}` has shape {:?} but the batch has {:?}: images batched together need one size; set the stage parameter `image_size` (resize, optionally with `crop`) where the stage has it, or give the dataset images of one size",
                        item.id,
                        &shape[1..],
                        &b.shape[1..]
                    ),
                ));
            }
            b.ids.push(item.id.clone());
            b.input.extend(l.input);
            if let Some(t) = l.target {
                b.target.get_or_insert_with(Vec::new).extend(t);
            }
            if let Some(t) = l.labels {
                b.labels.get_or_insert_with(Vec::new).extend(t);
            }
        }
        Ok(b)
    }
}

/// A batch's rows for this loader: the offset of the first in the global batch (a
/// shard's start) and the example indices.
type ShardRows = (usize, Vec<usize>);

/// One epoch of batches, in order.
pub struct Epoch {
    batches: Vec<ShardRows>,
    job_tx: Option<Sender<(usize, ShardRows)>>,
    results: Receiver<(usize, Result<CpuBatch>)>,
    workers: Vec<JoinHandle<()>>,
    pending: BTreeMap<usize, Result<CpuBatch>>,
    next: usize,
    submitted: usize,
    window: usize,
    device: Device,
}

impl Epoch {
    /// Keeps at most `window` batches submitted but not yet yielded.
    fn fill(&mut self) {
        while self.submitted < self.batches.len() && self.submitted < self.next + self.window {
            let job = (self.submitted, self.batches[self.submitted].clone());
            if let Some(tx) = &self.job_tx {
                let _ = tx.send(job);
            }
            self.submitted += 1;
        }
    }

    fn to_batch(&self, b: CpuBatch) -> Result<Batch> {
        let [n, _, h, w] = b.shape;
        let dev = self.device;
        let img = |v: Vec<f32>, c: i64| -> Result<Tensor> {
            Ok(Tensor::from_slice(&v)
                .f_view([n, c, h, w])?
                .f_to_device(dev)?)
        };
        Ok(Batch {
            input: img(b.input, b.shape[1])?,
            target: b.target.map(|t| img(t, 3)).transpose()?,
            labels: b
                .labels
                .map(|l| -> Result<Tensor> {
                    Ok(Tensor::from_slice(&l).f_view([n, h, w])?.f_to_device(dev)?)
                })
                .transpose()?,
            ids: b.ids,
        })
    }
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.batches.len() {
            return None;
        }
        let got = loop {
            if let Some(b) = self.pending.remove(&self.next) {
                break b;
            }
            match self.results.recv() {
                Ok((i, b)) => {
                    self.pending.insert(i, b);
                }
                Err(_) => break Err(DataError::Worker("all loader workers stopped".into())),
            }
        };
        self.next += 1;
        self.fill();
        Some(got.and_then(|b| self.to_batch(b)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.batches.len() - self.next;
        (n, Some(n))
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.job_tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
