//! Elastic (first-k-channel) layers shared by every supernet family.
//!
//! Each layer owns its *full* tensors, created under an [`nn::Path`] with PyTorch's state-dict
//! names (`weight`, `bias`, `running_mean`, ...). A forward call takes the active widths as
//! arguments: the input width is read from the input tensor, the output width is passed in.
//! Slicing uses `narrow` views, so gradients flow into the first-k block of the full weight
//! and the remaining entries get zero gradient (GAN Compression / OFA convention).
//!
//! Initialisation follows the official pix2pix `init_weights(init_type="normal", gain=0.02)`:
//! conv weights ~ N(0, 0.02), biases 0, norm scales ~ N(1, 0.02), norm shifts 0.

use tch::{Kind, Tensor, nn};
use ugc_torch_ext::dist::{ProcessGroup, all_reduce_sum_autograd};

use crate::arch::NormKind;

/// The differentiable sum over ranks of a synchronised batch norm. A failed collective (a
/// peer died or timed out) cannot be returned through `forward`'s tensor result, so it
/// panics with the cause; the stages turn a panic into a typed stage error naming it.
fn all_reduce(pg: &ProcessGroup, x: &Tensor) -> Tensor {
    match all_reduce_sum_autograd(pg, x) {
        Ok(t) => t,
        Err(e) => panic!(
            "synchronised batch norm: the all-reduce of rank {} of {} failed: {e}",
            pg.rank(),
            pg.world()
        ),
    }
}

/// How a forward pass treats batch-norm statistics and dropout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Batch statistics; running statistics updated with momentum 0.1; dropout on.
    Train,
    /// Running statistics; dropout off.
    Eval,
    /// Batch statistics; running statistics updated with the given momentum; dropout off.
    /// Used by BN recalibration (momentum 1/(i+1) on batch i gives the plain average).
    Calibrate { momentum: f64 },
    /// Batch statistics, running statistics untouched, dropout off, like
    /// `Calibrate { momentum: 0 }`, but inside a training step on every rank: a synchronised
    /// batch norm ([`ElasticBatchNorm2d::sync_over`]) uses the global batch's statistics, as
    /// in `Train`. For features of a network taken during the step (the discriminator's
    /// perceptual features of the distillation loss).
    Features,
}

impl Mode {
    /// Whether normalisation uses batch statistics.
    pub fn batch_stats(self) -> bool {
        !matches!(self, Mode::Eval)
    }
    /// Whether dropout is active.
    pub fn dropout(self) -> bool {
        matches!(self, Mode::Train)
    }
}

/// First `k_out` output and `k_in` input channels of a conv weight `[out, in, kh, kw]`.
pub fn slice_conv_weight(w: &Tensor, k_in: i64, k_out: i64) -> Tensor {
    w.narrow(0, 0, k_out).narrow(1, 0, k_in)
}

/// First `k_in` input and `k_out` output channels of a transposed-conv weight
/// `[in, out, kh, kw]`.
pub fn slice_conv_transpose_weight(w: &Tensor, k_in: i64, k_out: i64) -> Tensor {
    w.narrow(0, 0, k_in).narrow(1, 0, k_out)
}

/// First `k` entries of a per-channel vector.
pub fn slice_vec(v: &Tensor, k: i64) -> Tensor {
    v.narrow(0, 0, k)
}

/// Reflection padding on all four sides (the official ResNet/pix2pixHD padding).
pub fn reflection_pad(x: &Tensor, p: i64) -> Tensor {
    x.reflection_pad2d([p, p, p, p])
}

/// `nn.LeakyReLU(slope)`: libtorch's kernel through the shim (tch's own `leaky_relu` has
/// PyTorch's fixed 0.01 slope).
pub use ugc_torch_ext::leaky_relu;

fn normal_init(p: &nn::Path, name: &str, dims: &[i64], mean: f64) -> Tensor {
    p.var(name, dims, nn::Init::Randn { mean, stdev: 0.02 })
}

/// Convolution hyper-parameters (square kernels; PyTorch defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvOpts {
    pub stride: i64,
    pub padding: i64,
    pub dilation: i64,
    /// 1, or equal to the input width for a depthwise conv.
    pub groups: i64,
    pub bias: bool,
}

impl Default for ConvOpts {
    fn default() -> Self {
        ConvOpts {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: true,
        }
    }
}

/// `nn.Conv2d` with elastic input and output widths.
#[derive(Debug)]
pub struct ElasticConv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub in_channels: i64,
    pub out_channels: i64,
    pub kernel: i64,
    pub opts: ConvOpts,
}

impl ElasticConv2d {
    /// Creates `weight` `[c_out, c_in/groups, k, k]` (and `bias` `[c_out]`) under `p`.
    pub fn new(p: &nn::Path, c_in: i64, c_out: i64, k: i64, opts: ConvOpts) -> Self {
        let weight = normal_init(p, "weight", &[c_out, c_in / opts.groups, k, k], 0.0);
        let bias = opts.bias.then(|| p.zeros("bias", &[c_out]));
        ElasticConv2d {
            weight,
            bias,
            in_channels: c_in,
            out_channels: c_out,
            kernel: k,
            opts,
        }
    }

    /// Whether this is a depthwise conv (one group per input channel).
    pub fn depthwise(&self) -> bool {
        self.opts.groups > 1 && self.opts.groups == self.in_channels
    }

    /// Runs on the first `x.size()[1]` input channels producing `c_out` channels. For a
    /// depthwise conv `c_out` must equal the input width (channel multiplier 1).
    pub fn forward(&self, x: &Tensor, c_out: i64) -> Tensor {
        let c_in = x.size()[1];
        let o = &self.opts;
        let (w, groups) = if self.depthwise() {
            (self.weight.narrow(0, 0, c_in), c_in)
        } else {
            (
                slice_conv_weight(&self.weight, c_in / o.groups, c_out),
                o.groups,
            )
        };
        let b = self.bias.as_ref().map(|b| slice_vec(b, c_out));
        x.conv2d(
            &w,
            b.as_ref(),
            [o.stride, o.stride],
            [o.padding, o.padding],
            [o.dilation, o.dilation],
            groups,
        )
    }

    /// The sliced weights as a compact layer's tensors: `(suffix, tensor)` pairs with
    /// contiguous copies, for export.
    pub fn extract(&self, c_in: i64, c_out: i64) -> Vec<(&'static str, Tensor)> {
        let w = if self.depthwise() {
            self.weight.narrow(0, 0, c_in)
        } else {
            slice_conv_weight(&self.weight, c_in / self.opts.groups, c_out)
        };
        let mut v = vec![("weight", w.detach().contiguous().copy())];
        if let Some(b) = &self.bias {
            v.push(("bias", slice_vec(b, c_out).detach().contiguous().copy()));
        }
        v
    }
}

/// Transposed-conv hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvTransposeOpts {
    pub stride: i64,
    pub padding: i64,
    pub output_padding: i64,
    pub bias: bool,
}

/// `nn.ConvTranspose2d` (groups 1) with elastic widths; weight `[in, out, k, k]`.
#[derive(Debug)]
pub struct ElasticConvTranspose2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub in_channels: i64,
    pub out_channels: i64,
    pub kernel: i64,
    pub opts: ConvTransposeOpts,
}

impl ElasticConvTranspose2d {
    pub fn new(p: &nn::Path, c_in: i64, c_out: i64, k: i64, opts: ConvTransposeOpts) -> Self {
        let weight = normal_init(p, "weight", &[c_in, c_out, k, k], 0.0);
        let bias = opts.bias.then(|| p.zeros("bias", &[c_out]));
        ElasticConvTranspose2d {
            weight,
            bias,
            in_channels: c_in,
            out_channels: c_out,
            kernel: k,
            opts,
        }
    }

    pub fn forward(&self, x: &Tensor, c_out: i64) -> Tensor {
        let c_in = x.size()[1];
        let o = &self.opts;
        let w = slice_conv_transpose_weight(&self.weight, c_in, c_out);
        let b = self.bias.as_ref().map(|b| slice_vec(b, c_out));
        x.conv_transpose2d(
            &w,
            b.as_ref(),
            [o.stride, o.stride],
            [o.padding, o.padding],
            [o.output_padding, o.output_padding],
            1,
            [1, 1],
        )
    }

    /// Input-channel rows `segments` (`(offset, len)` pairs, concatenated) and the first
    /// `c_out` outputs of the weight. For layers whose input is a concatenation of two
    /// elastic tensors, such as a UNet up-conv fed `cat(skip, up)`: the active channels of
    /// each part start at that part's offset in the full weight.
    pub fn weight_rows(&self, segments: &[(i64, i64)], c_out: i64) -> Tensor {
        let parts: Vec<Tensor> = segments
            .iter()
            .map(|&(off, len)| self.weight.narrow(0, off, len))
            .collect();
        Tensor::cat(&parts, 0).narrow(1, 0, c_out)
    }

    /// Forward with input rows chosen by [`Self::weight_rows`].
    pub fn forward_rows(&self, x: &Tensor, segments: &[(i64, i64)], c_out: i64) -> Tensor {
        let o = &self.opts;
        let w = self.weight_rows(segments, c_out);
        let b = self.bias.as_ref().map(|b| slice_vec(b, c_out));
        x.conv_transpose2d(
            &w,
            b.as_ref(),
            [o.stride, o.stride],
            [o.padding, o.padding],
            [o.output_padding, o.output_padding],
            1,
            [1, 1],
        )
    }

    /// Compact tensors for [`Self::forward_rows`].
    pub fn extract_rows(&self, segments: &[(i64, i64)], c_out: i64) -> Vec<(&'static str, Tensor)> {
        let mut v = vec![(
            "weight",
            self.weight_rows(segments, c_out)
                .detach()
                .contiguous()
                .copy(),
        )];
        if let Some(b) = &self.bias {
            v.push(("bias", slice_vec(b, c_out).detach().contiguous().copy()));
        }
        v
    }

    pub fn extract(&self, c_in: i64, c_out: i64) -> Vec<(&'static str, Tensor)> {
        let mut v = vec![(
            "weight",
            slice_conv_transpose_weight(&self.weight, c_in, c_out)
                .detach()
                .contiguous()
                .copy(),
        )];
        if let Some(b) = &self.bias {
            v.push(("bias", slice_vec(b, c_out).detach().contiguous().copy()));
        }
        v
    }
}

/// A norm layer's affine `weight` (N(1, 0.02), pix2pix's init) and `bias` (zeros), or
/// neither.
fn affine_params(p: &nn::Path, c: i64, affine: bool) -> (Option<Tensor>, Option<Tensor>) {
    if affine {
        (
            Some(normal_init(p, "weight", &[c], 1.0)),
            Some(p.zeros("bias", &[c])),
        )
    } else {
        (None, None)
    }
}

/// The first `c` entries of a norm layer's affine parameters (where present).
fn slice_affine(
    w: &Option<Tensor>,
    b: &Option<Tensor>,
    c: i64,
) -> (Option<Tensor>, Option<Tensor>) {
    (
        w.as_ref().map(|t| slice_vec(t, c)),
        b.as_ref().map(|t| slice_vec(t, c)),
    )
}

/// The process group a batch norm synchronises its training statistics over: set once on
/// every layer of a network (`Generator::batch_norms`, `Discriminator::batch_norms`) by a
/// data-parallel stage, as PyTorch's `SyncBatchNorm` holds its group. A handle rather than
/// a `forward` argument: the group is fixed for the whole run, and an argument would have
/// to pass through every family's forward and every block in it.
#[derive(Default)]
pub struct BnSync(std::sync::OnceLock<ProcessGroup>);

impl std::fmt::Debug for BnSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.get() {
            None => write!(f, "BnSync(local)"),
            Some(pg) => write!(f, "BnSync(world {})", pg.world()),
        }
    }
}

/// `nn.BatchNorm2d` with an elastic width. Running statistics of the first `k` channels are
/// read and updated in place through `narrow` views.
#[derive(Debug)]
pub struct ElasticBatchNorm2d {
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
    pub channels: i64,
    pub eps: f64,
    /// Synchronised statistics in [`Mode::Train`] when set ([`ElasticBatchNorm2d::sync_over`]).
    pub sync: BnSync,
}

impl ElasticBatchNorm2d {
    /// `affine = false` gives SPADE's parameter-free batch norm (buffers only).
    pub fn new(p: &nn::Path, c: i64, affine: bool) -> Self {
        let (weight, bias) = affine_params(p, c, affine);
        let running_mean = p.zeros_no_train("running_mean", &[c]);
        let running_var = p.ones_no_train("running_var", &[c]);
        let num_batches_tracked = p.add(
            "num_batches_tracked",
            Tensor::zeros([], (Kind::Int64, p.device())),
            false,
        );
        ElasticBatchNorm2d {
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            channels: c,
            eps: 1e-5,
            sync: BnSync::default(),
        }
    }

    /// From now on, [`Mode::Train`] and [`Mode::Features`] forwards normalise with the
    /// statistics of the global batch over the ranks of `pg` (SyncBatchNorm). Only in
    /// those: the other modes run on one rank alone (samples, calibration, evaluation),
    /// where a collective would wait forever. Returns false when the layer was already synchronised (the first group stays).
    pub fn sync_over(&self, pg: ProcessGroup) -> bool {
        self.sync.0.set(pg).is_ok()
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        if matches!(mode, Mode::Train | Mode::Features)
            && let Some(pg) = self.sync.0.get()
        {
            let momentum = if mode == Mode::Train { 0.1 } else { 0.0 };
            return self.forward_synced(pg, x, momentum);
        }
        let c = x.size()[1];
        let (w, b) = slice_affine(&self.weight, &self.bias, c);
        let rm = slice_vec(&self.running_mean, c);
        let rv = slice_vec(&self.running_var, c);
        let momentum = match mode {
            Mode::Calibrate { momentum } => momentum,
            Mode::Features => 0.0,
            Mode::Train | Mode::Eval => 0.1,
        };
        if mode.batch_stats() {
            tch::no_grad(|| {
                let mut n = self.num_batches_tracked.shallow_clone();
                let _ = n.g_add_scalar_(1);
            });
        }
        x.batch_norm(
            w.as_ref(),
            b.as_ref(),
            Some(&rm),
            Some(&rv),
            mode.batch_stats(),
            momentum,
            self.eps,
            false,
        )
    }

    /// Training forward with global-batch statistics from **one** differentiable all-reduce
    /// per layer (and so one in its backward): each rank packs its count `n_r`, per-channel
    /// mean `m_r` and sum of squared deviations `M2_r` (two passes over its own rows) into
    /// its row of a `[W, 2C + 1]` zero tensor, the sum over ranks gathers every rank's row,
    /// and Chan's combination gives the global mean `sum n_r m_r / n` and
    /// `M2 = sum M2_r + sum n_r (m_r - m)^2`: no `E[x^2] - E[x]^2` cancellation, as
    /// `SyncBatchNorm`'s gather of per-rank statistics. A blocking collective costs about
    /// 0.6 ms with Gloo on this kind of machine, so the count matters (docs/benchmarks.md).
    /// Normalises with the biased variance and updates the running statistics with the
    /// unbiased one, as `SyncBatchNorm` does. Computed in float32 at least (a half-precision
    /// input under autocast too, as libtorch's kernel). `momentum` 0 leaves the running
    /// statistics as they are.
    fn forward_synced(&self, pg: &ProcessGroup, x: &Tensor, momentum: f64) -> Tensor {
        let s = x.size();
        let c = s[1];
        let kind = match x.kind() {
            Kind::Double => Kind::Double,
            _ => Kind::Float,
        };
        let dev = x.device();
        let xf = x.to_kind(kind);
        let dims: &[i64] = &[0, 2, 3];
        let n_local = (s[0] * s[2] * s[3]) as f64;
        let m_local = xf.mean_dim(dims, false, kind);
        let m2_local = (&xf - m_local.view([1, c, 1, 1]))
            .square()
            .sum_dim_intlist(dims, false, kind);
        let count = Tensor::from_slice(&[n_local]).to_kind(kind).to_device(dev);
        let row = Tensor::cat(&[m_local, m2_local, count], 0);
        let (world, rank) = (pg.world() as i64, pg.rank() as i64);
        let rows = Tensor::zeros([world, 2 * c + 1], (kind, dev)).index_put(
            &[Some(Tensor::from_slice(&[rank]).to_device(dev))],
            &row.unsqueeze(0),
            false,
        );
        let all = all_reduce(pg, &rows);
        let counts = all.narrow(1, 2 * c, 1).detach(); // [W, 1]
        let n = counts.sum(kind);
        let means = all.narrow(1, 0, c); // [W, C]
        let mean = (&means * &counts).sum_dim_intlist(&[0i64][..], false, kind) / &n;
        let between = ((&means - mean.unsqueeze(0)).square() * &counts).sum_dim_intlist(
            &[0i64][..],
            false,
            kind,
        );
        let m2 = all
            .narrow(1, c, c)
            .sum_dim_intlist(&[0i64][..], false, kind)
            + between;
        let var = &m2 / &n;
        let centred = &xf - mean.view([1, c, 1, 1]);
        let y = &centred * (&var + self.eps).rsqrt().view([1, c, 1, 1]);
        let (w, b) = slice_affine(&self.weight, &self.bias, c);
        let y = match (&w, &b) {
            (Some(w), Some(b)) => y * w.view([1, c, 1, 1]) + b.view([1, c, 1, 1]),
            _ => y,
        };
        tch::no_grad(|| {
            // Once per forward, as the one-process path counts it.
            let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
            if momentum == 0.0 {
                return;
            }
            let unbiased = (&m2 / (&n - 1.0).clamp_min(1.0))
                .detach()
                .to_kind(self.running_var.kind());
            let mean = mean.detach().to_kind(self.running_mean.kind());
            let mut rm = slice_vec(&self.running_mean, c);
            let mut rv = slice_vec(&self.running_var, c);
            let _ = rm.g_mul_scalar_(1.0 - momentum).g_add_(&(mean * momentum));
            let _ = rv
                .g_mul_scalar_(1.0 - momentum)
                .g_add_(&(unbiased * momentum));
        });
        y.to_kind(x.kind())
    }

    /// Zero mean, unit variance, zero batches (PyTorch's `reset_running_stats`).
    pub fn reset_running_stats(&self) {
        tch::no_grad(|| {
            let _ = self.running_mean.shallow_clone().zero_();
            let _ = self.running_var.shallow_clone().fill_(1.0);
            let _ = self.num_batches_tracked.shallow_clone().zero_();
        });
    }

    pub fn extract(&self, c: i64) -> Vec<(&'static str, Tensor)> {
        let s = |t: &Tensor| slice_vec(t, c).detach().contiguous().copy();
        let mut v = Vec::new();
        if let (Some(w), Some(b)) = (&self.weight, &self.bias) {
            v.push(("weight", s(w)));
            v.push(("bias", s(b)));
        }
        v.push(("running_mean", s(&self.running_mean)));
        v.push(("running_var", s(&self.running_var)));
        v.push((
            "num_batches_tracked",
            self.num_batches_tracked.detach().copy(),
        ));
        v
    }
}

/// `nn.InstanceNorm2d(affine=False)` with its defaults: per-sample statistics, eps 1e-5, no
/// parameters and no running statistics (pix2pixhd's norm, the separable conv's inner norm).
pub fn instance_norm(x: &Tensor) -> Tensor {
    x.instance_norm(
        None::<&Tensor>,
        None::<&Tensor>,
        None::<&Tensor>,
        None::<&Tensor>,
        true,
        0.1,
        1e-5,
        false,
    )
}

/// `nn.InstanceNorm2d` (no running statistics), optionally affine.
#[derive(Debug)]
pub struct ElasticInstanceNorm2d {
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub channels: i64,
    pub eps: f64,
}

impl ElasticInstanceNorm2d {
    pub fn new(p: &nn::Path, c: i64, affine: bool) -> Self {
        let (weight, bias) = affine_params(p, c, affine);
        ElasticInstanceNorm2d {
            weight,
            bias,
            channels: c,
            eps: 1e-5,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let c = x.size()[1];
        let (w, b) = slice_affine(&self.weight, &self.bias, c);
        x.instance_norm(
            w.as_ref(),
            b.as_ref(),
            None::<&Tensor>,
            None::<&Tensor>,
            true,
            0.1,
            self.eps,
            false,
        )
    }

    pub fn extract(&self, c: i64) -> Vec<(&'static str, Tensor)> {
        let s = |t: &Tensor| slice_vec(t, c).detach().contiguous().copy();
        match (&self.weight, &self.bias) {
            (Some(w), Some(b)) => vec![("weight", s(w)), ("bias", s(b))],
            _ => Vec::new(),
        }
    }
}

/// The norm layer the official code builds for a `--norm` value (pix2pix `get_norm_layer`):
/// `instance` = InstanceNorm2d(affine=False), `batch` = BatchNorm2d(affine=True).
#[derive(Debug)]
pub enum Norm2d {
    Instance(ElasticInstanceNorm2d),
    Batch(ElasticBatchNorm2d),
    Identity,
}

impl Norm2d {
    /// Spectral kinds map to their plain norm (spectral norm wraps the conv, not the norm).
    pub fn new(p: &nn::Path, kind: NormKind, c: i64) -> Self {
        match kind {
            NormKind::Instance | NormKind::SpectralInstance => {
                Norm2d::Instance(ElasticInstanceNorm2d::new(p, c, false))
            }
            NormKind::Batch | NormKind::SpectralBatch => {
                Norm2d::Batch(ElasticBatchNorm2d::new(p, c, true))
            }
            NormKind::None => Norm2d::Identity,
        }
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        match self {
            Norm2d::Instance(n) => n.forward(x),
            Norm2d::Batch(n) => n.forward(x, mode),
            Norm2d::Identity => x.shallow_clone(),
        }
    }

    /// Whether the layer has an affine transform (counts MACs under torchprofile).
    pub fn affine(&self) -> bool {
        match self {
            Norm2d::Instance(n) => n.weight.is_some(),
            Norm2d::Batch(n) => n.weight.is_some(),
            Norm2d::Identity => false,
        }
    }

    pub fn batch_norm(&self) -> Option<&ElasticBatchNorm2d> {
        match self {
            Norm2d::Batch(n) => Some(n),
            _ => None,
        }
    }

    pub fn extract(&self, c: i64) -> Vec<(&'static str, Tensor)> {
        match self {
            Norm2d::Instance(n) => n.extract(c),
            Norm2d::Batch(n) => n.extract(c),
            Norm2d::Identity => Vec::new(),
        }
    }
}

/// Whether `--norm` gives conv layers a bias in the official pix2pix code: `use_bias` is
/// true exactly for instance norm (`norm_layer.func == nn.InstanceNorm2d`); batch norm has
/// its own shift, and `none` also builds bias-free convs there.
pub fn conv_bias_for(kind: NormKind) -> bool {
    matches!(kind, NormKind::Instance | NormKind::SpectralInstance)
}

/// Prefixes `suffix` tensors with `prefix.` and appends them to `out` (export helper).
pub fn push_named(
    out: &mut Vec<(String, Tensor)>,
    prefix: &str,
    items: Vec<(&'static str, Tensor)>,
) {
    for (s, t) in items {
        out.push((format!("{prefix}.{s}"), t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, nn::VarStore};

    #[test]
    fn sliced_conv_grads_reach_only_first_k() {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let conv = ElasticConv2d::new(
            &(vs.root() / "c"),
            6,
            8,
            3,
            ConvOpts {
                padding: 1,
                ..Default::default()
            },
        );
        let x = Tensor::randn([2, 4, 5, 5], (Kind::Float, Device::Cpu));
        let y = conv.forward(&x, 3);
        assert_eq!(y.size(), vec![2, 3, 5, 5]);
        y.sum(Kind::Float).backward();
        let g = conv.weight.grad();
        assert!(
            g.narrow(0, 0, 3)
                .narrow(1, 0, 4)
                .abs()
                .sum(Kind::Float)
                .double_value(&[])
                > 0.0
        );
        assert_eq!(
            g.narrow(0, 3, 5).abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
        assert_eq!(
            g.narrow(1, 4, 2).abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
        let gb = conv.bias.as_ref().unwrap().grad();
        assert_eq!(
            gb.narrow(0, 3, 5).abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
    }

    #[test]
    fn transposed_and_depthwise_slices() {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let t = ElasticConvTranspose2d::new(
            &(vs.root() / "t"),
            8,
            4,
            3,
            ConvTransposeOpts {
                stride: 2,
                padding: 1,
                output_padding: 1,
                bias: true,
            },
        );
        let x = Tensor::randn([1, 5, 4, 4], (Kind::Float, Device::Cpu));
        assert_eq!(t.forward(&x, 2).size(), vec![1, 2, 8, 8]);
        let d = ElasticConv2d::new(
            &(vs.root() / "d"),
            8,
            8,
            3,
            ConvOpts {
                groups: 8,
                padding: 1,
                ..Default::default()
            },
        );
        assert!(d.depthwise());
        let y = d.forward(&x, 5);
        assert_eq!(y.size(), vec![1, 5, 4, 4]);
        // equals a standalone depthwise conv built from the extracted tensors
        let ex = d.extract(5, 5);
        let y2 = x.conv2d(&ex[0].1, Some(&ex[1].1), [1, 1], [1, 1], [1, 1], 5);
        assert!(y.allclose(&y2, 1e-6, 1e-6, false));
    }

    #[test]
    fn batch_norm_updates_only_active_running_stats() {
        let vs = VarStore::new(Device::Cpu);
        let bn = ElasticBatchNorm2d::new(&(vs.root() / "bn"), 6, true);
        let x = Tensor::randn([4, 3, 5, 5], (Kind::Float, Device::Cpu)) + 2.0;
        let _ = bn.forward(&x, Mode::Calibrate { momentum: 1.0 });
        let rm = bn.running_mean.shallow_clone();
        let expect = x.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Float);
        assert!(rm.narrow(0, 0, 3).allclose(&expect, 1e-5, 1e-5, false));
        assert_eq!(
            rm.narrow(0, 3, 3).abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
        assert_eq!(bn.num_batches_tracked.int64_value(&[]), 1);
        bn.reset_running_stats();
        assert_eq!(
            bn.running_mean.abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
    }
}
