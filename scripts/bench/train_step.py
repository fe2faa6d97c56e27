"""PyTorch eager side of issue #7 item 1: the same supernet and distillation steps as
`cargo bench --bench train_step` (see that file for what a step is), written in plain
torch (elastic widths by slicing weights with F.conv2d, as GAN Compression's super
networks do), same shapes, same sub-net sequence (read from the Rust run's subnets.json),
same thread count.

    .venv/bin/python scripts/bench/train_step.py --step supernet --threads 2 \
        --subnets target/bench/train_step/subnets.json

Prints one JSON line: median/min/max images/s over --repeats repeats of
--steps-per-repeat steps after --warmup steps.

Data parallel (issue 13 item 6; `scripts/bench/ddp.sh`): under `torchrun --nproc-per-node W`
the supernet step runs with DistributedDataParallel over Gloo (NCCL on CUDA): each rank
takes its rows of the global batch --batch (the same split as ugc-pipe's), the generator
is a DDP module whose first two sandwich sub-nets back-propagate under `no_sync()` and
the last one synchronises (buckets overlapped with that backward, unused blocks found
with `find_unused_parameters`), the discriminator's update goes through its DDP module
and the generators' losses through the plain module (D is frozen then), batch norm is
local statistics per rank (PyTorch's SyncBatchNorm
refuses CPU tensors; `broadcast_buffers=False`, as GAN code under DDP needs, since D runs
twice before its backward). Rank 0 prints the line; images/s counts the global batch.
"""
import argparse
import contextlib
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from models import patchgan, patchgan_features, resnet_generator


class SuperResnet(nn.Module):
    """Elastic pix2pix ResNet generator (instance norm): widths per position
    [stem, down1, trunk, inner x n, up1, up2] and a per-block present flag are arguments."""

    def __init__(self, ngf, n_blocks, input_nc=3, output_nc=3):
        super().__init__()
        p = lambda *s: nn.Parameter(torch.randn(*s) * 0.02)
        z = lambda c: nn.Parameter(torch.zeros(c))
        t = 4 * ngf
        self.stem_w, self.stem_b = p(ngf, input_nc, 7, 7), z(ngf)
        self.d1_w, self.d1_b = p(2 * ngf, ngf, 3, 3), z(2 * ngf)
        self.d2_w, self.d2_b = p(t, 2 * ngf, 3, 3), z(t)
        self.blocks = nn.ParameterList()
        for _ in range(n_blocks):
            self.blocks.extend([p(t, t, 3, 3), z(t), p(t, t, 3, 3), z(t)])
        self.u1_w, self.u1_b = p(t, 2 * ngf, 3, 3), z(2 * ngf)
        self.u2_w, self.u2_b = p(2 * ngf, ngf, 3, 3), z(ngf)
        self.last_w, self.last_b = p(output_nc, ngf, 7, 7), z(output_nc)
        self.n = n_blocks

    def forward(self, x, widths, depth):
        n = self.n
        stem, down1, trunk = widths[0], widths[1], widths[2]
        inner, up1, up2 = widths[3:3 + n], widths[3 + n], widths[4 + n]
        inorm = lambda h: F.instance_norm(h, eps=1e-5)
        pad = lambda h, k: F.pad(h, (k, k, k, k), mode="reflect")
        h = inorm(F.conv2d(pad(x, 3), self.stem_w[:stem], self.stem_b[:stem])).relu()
        h = inorm(F.conv2d(h, self.d1_w[:down1, :stem], self.d1_b[:down1], stride=2, padding=1)).relu()
        h = inorm(F.conv2d(h, self.d2_w[:trunk, :down1], self.d2_b[:trunk], stride=2, padding=1)).relu()
        for i in range(n):
            if i < len(depth) and not depth[i]:
                continue
            w1, b1, w2, b2 = self.blocks[4 * i: 4 * i + 4]
            c = inner[i]
            r = inorm(F.conv2d(pad(h, 1), w1[:c, :trunk], b1[:c])).relu()
            r = inorm(F.conv2d(pad(r, 1), w2[:trunk, :c], b2[:trunk]))
            h = h + r
        h = inorm(F.conv_transpose2d(h, self.u1_w[:trunk, :up1], self.u1_b[:up1], 2, 1, 1)).relu()
        h = inorm(F.conv_transpose2d(h, self.u2_w[:up1, :up2], self.u2_b[:up2], 2, 1, 1)).relu()
        return torch.tanh(F.conv2d(pad(h, 3), self.last_w[:, :up2], self.last_b))


class ComposedLeakyReLU(nn.Module):
    """LeakyReLU(0.2) from several kernels: `where` as ugc-nn writes it, or `relu`."""

    def __init__(self, form):
        super().__init__()
        self.form = form

    def forward(self, x):
        if self.form == "where":
            return torch.where(x >= 0, x, x * 0.2)
        return x * 0.2 + torch.relu(x) * 0.8


def hinge_d_real(p): return F.relu(1 - p).mean()
def hinge_d_fake(p): return F.relu(1 + p).mean()
def hinge_g(p): return -p.mean()


def gauss_window(c, device):
    g = torch.exp(-((torch.arange(11, dtype=torch.float32) - 5) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    return (g[:, None] @ g[None, :]).expand(c, 1, 11, 11).contiguous().to(device)


def ssim(a, b, window):
    c = a.shape[1]
    blur = lambda t: F.conv2d(t, window, padding=5, groups=c)
    x, y = (a + 1) / 2, (b + 1) / 2
    mx, my = blur(x), blur(y)
    sx, sy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sx + sy + c2))).mean()


def gram(f):
    n, c, h, w = f.shape
    v = f.reshape(n, c, h * w)
    return v @ v.transpose(1, 2) / (c * h * w)


def tv(x):
    return (x[:, :, 1:] - x[:, :, :-1]).abs().sum() + (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().sum()


def distill_loss(s, t, fs, ft, window):
    style = sum((gram(a) - gram(b)).abs().mean() for a, b in zip(fs, ft))
    feat = sum((a - b).abs().mean() for a, b in zip(fs, ft))
    return 10 * (1 - ssim(s, t, window)) + 1e4 * style + 10 * feat + 1e-5 * tv(s)


class UgcAdam:
    """ugc_method::optim::Adam's exact op sequence (out-of-place temporaries, a host read of
    the step count and a finiteness probe of the first parameter every step), to measure
    what it costs against torch.optim.Adam."""

    def __init__(self, params, lr=2e-4, b1=0.5, b2=0.999, eps=1e-8):
        self.p = list(params)
        self.m = [torch.zeros_like(p) for p in self.p]
        self.v = [torch.zeros_like(p) for p in self.p]
        self.t = torch.zeros((), dtype=torch.int64)
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps

    def zero_grad(self):
        for p in self.p:
            if p.grad is not None:
                p.grad.detach_()
                p.grad.zero_()

    @torch.no_grad()
    def step(self):
        t = int(self.t.item()) + 1
        self.t.fill_(t)
        bc1, bc2 = 1 - self.b1 ** t, 1 - self.b2 ** t
        for i, p in enumerate(self.p):
            g = p.grad
            if g is None:
                continue
            self.m[i].mul_(self.b1).add_(g * (1 - self.b1))
            self.v[i].mul_(self.b2).add_(g * g * (1 - self.b2))
            denom = self.v[i].sqrt() / bc2 ** 0.5 + self.eps
            p.sub_(self.m[i] / denom * (self.lr / bc1))
            if i == 0:
                p.sum(dtype=torch.float64).item()


ADAM = "torch"


def adam(params):
    if ADAM == "ugc":
        return UgcAdam(params)
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999), fused=(ADAM == "fused"))


LOG_EVERY = 1
PENDING = []


def rd(t):
    """A logged loss: `.item()` at once with --log-every 1 (a plain PyTorch loop), otherwise
    kept on the device and read with the others every LOG_EVERY steps (as ugc-pipe does)."""
    if LOG_EVERY == 1:
        return t.item()
    PENDING.append(t.detach().reshape(1))


def end_step(i):
    if LOG_EVERY > 1 and (i + 1) % LOG_EVERY == 0 and PENDING:
        vals = torch.cat(PENDING).double().cpu()
        PENDING.clear()
        assert torch.isfinite(vals).all(), "non-finite loss"


def d_update(d, opt_d, x, y, fakes):
    """(real + mean over fakes) / 2, hinge; as the Rust d_update / DistillTask / GanTask."""
    opt_d.zero_grad()
    real = hinge_d_real(patchgan_features(d, torch.cat([x, y], 1))[-1])
    fake = sum(hinge_d_fake(patchgan_features(d, torch.cat([x, f.detach()], 1))[-1]) for f in fakes)
    loss = (real + fake / len(fakes)) * 0.5
    loss.backward()
    opt_d.step()
    rd(loss)


def g_loss(d, x, y, fake):
    return hinge_g(patchgan_features(d, torch.cat([x, fake], 1))[-1]) + 100 * F.l1_loss(fake, y)


def set_grad(m, on):
    for p in m.parameters():
        p.requires_grad_(on)


def d_features(d, x, img):
    """Discriminator features without running-statistics drift (momentum 0), as the Rust
    DiscriminatorFeatures does."""
    bns = [m for m in d.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    out = patchgan_features(d, torch.cat([x, img], 1))[:-1]
    for m, mo in zip(bns, saved):
        m.momentum = mo
    return out


def resnet_full(ngf, n):
    return [ngf, 2 * ngf, 4 * ngf] + [4 * ngf] * n + [2 * ngf, ngf]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--step", default="supernet", choices=["supernet", "distill"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--ndf", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps-per-repeat", type=int, default=3)
    p.add_argument("--subnets", default="target/bench/train_step/subnets.json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--freeze-d", default="true", choices=["true", "false"],
                   help="freeze D during the generators' backward passes (as pix2pix, "
                        "GanTask and DistillTask do)")
    p.add_argument("--adam", default="torch", choices=["torch", "fused", "ugc"],
                   help="torch.optim.Adam with its defaults (single-tensor on CPU, foreach on "
                        "CUDA), torch.optim.Adam(fused=True) as ugc_method::optim::Adam runs "
                        "it, or the old out-of-place op sequence")
    p.add_argument("--lrelu", default="native", choices=["native", "where", "relu"],
                   help="LeakyReLU(0.2) form: torch's kernel, where(x >= 0, x, 0.2 x) as "
                        "ugc_nn::elastic::leaky_relu wrote it before the shim, or 0.2 x + 0.8 relu(x)")
    p.add_argument("--log-every", type=int, default=1,
                   help="read logged losses every N steps in one transfer (1 = .item() per loss)")
    a = p.parse_args()
    a.freeze_d = a.freeze_d == "true"
    global ADAM, LOG_EVERY
    ADAM = a.adam
    LOG_EVERY = max(1, a.log_every)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        import torch.distributed as tdist
        from torch.nn.parallel import DistributedDataParallel as DDP
        if a.step != "supernet":
            raise SystemExit(f"--step {a.step} has no data-parallel form; use supernet")
        tdist.init_process_group("nccl" if a.device.startswith("cuda") else "gloo")
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    x = torch.rand(a.batch, 3, a.size, a.size, device=dev) * 2 - 1
    y = torch.rand(a.batch, 3, a.size, a.size, device=dev) * 2 - 1
    # This rank's rows of the global batch, as ugc_data::loader::shard_range splits it.
    base, extra = divmod(a.batch, world)
    start, rows = rank * base + min(rank, extra), base + (1 if rank < extra else 0)
    x, y = x[start:start + rows].contiguous(), y[start:start + rows].contiguous()
    mf = torch.channels_last if a.channels_last else torch.contiguous_format
    x, y = x.contiguous(memory_format=mf), y.contiguous(memory_format=mf)
    d = patchgan(6, a.ndf).to(dev, memory_format=mf).train()
    if a.lrelu != "native":
        for seq in d:
            if isinstance(seq, nn.Sequential) and isinstance(seq[-1], nn.LeakyReLU):
                seq[-1] = ComposedLeakyReLU(a.lrelu)
    opt_d = adam(d.parameters())
    ac = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if a.bf16 else \
        (lambda: torch.autocast(dev.type, enabled=False))

    if a.step == "supernet":
        subs = json.load(open(a.subnets))
        g = SuperResnet(a.ngf, 9).to(dev, memory_format=mf)
        opt_g = adam(g.parameters())
        # The D update runs the whole discriminator as one module (a DDP module runs only as
        # a whole); with one rank these are the plain modules.
        class Prediction(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.d = d

            def forward(self, inp):
                return patchgan_features(self.d, inp)[-1]

        g_run, d_run = g, Prediction(d)
        if world > 1:
            g_run = DDP(g, find_unused_parameters=True)
            # broadcast_buffers=False: the buffer broadcast of the second D forward would
            # modify the running statistics the first forward saved for backward.
            d_run = DDP(d_run, broadcast_buffers=False)
        L, S = subs["largest"], subs["smallest"]
        assert L["widths"] == resnet_full(a.ngf, 9), "subnets.json is for another --ngf"

        def step(i):
            # Mirrors ugc_method::gan::GanTask::step (sandwich): D is frozen during the
            # generator backward, D loss is (real + fake) / 2, every loss is read to the host.
            with ac():
                subs_i = (L, subs["random"][i % len(subs["random"])], S)
                # The first sub-net's forward is also the D step's fake; with DDP it runs
                # under no_sync (its backward is not the step's last).
                ctx0 = g_run.no_sync() if world > 1 else contextlib.nullcontext()
                with ctx0:
                    fake_l = g_run(x, L["widths"], L["depth"])
                opt_d.zero_grad()
                # The whole forward (the prediction map): a DDP module runs only as a whole.
                real = hinge_d_real(d_run(torch.cat([x, y], 1)))
                fake = hinge_d_fake(d_run(torch.cat([x, fake_l.detach()], 1)))
                ((real + fake) * 0.5).backward()
                opt_d.step()
                log = [rd(real), rd(fake)]
                if a.freeze_d:
                    set_grad(d, False)
                opt_g.zero_grad()
                for k, sub in enumerate(subs_i):
                    last = k == len(subs_i) - 1
                    sync_ctx = g_run.no_sync() if world > 1 and not last else contextlib.nullcontext()
                    with sync_ctx:
                        out = fake_l if k == 0 else g_run(x, sub["widths"], sub["depth"])
                        gan = hinge_g(patchgan_features(d, torch.cat([x, out], 1))[-1])
                        rec = 100 * F.l1_loss(out, y)
                        log += [rd(gan), rd(rec)]
                        (gan + rec).backward()
                opt_g.step()
                if a.freeze_d:
                    set_grad(d, True)
    else:
        nets = [(resnet_full(a.ngf, 6), 6), (resnet_full(a.ngf // 2, 12), 12)]
        teachers = [resnet_generator(w, n).to(dev, memory_format=mf).train() for w, n in nets]
        opts_t = [adam(t.parameters()) for t in teachers]
        student = resnet_generator(resnet_full(a.ngf // 2, 6), 6).to(dev, memory_format=mf).train()
        opt_s = adam(student.parameters())
        window = gauss_window(3, dev)

        def step(i):
            # Mirrors ugc_method::distill::DistillTask::step on a labeled batch (no unlabeled
            # stream): D on real vs every teacher's and the student's output, teachers
            # hinge_g + 100 L1, student hinge_g + 100 L1 + KD vs every teacher; D frozen
            # after its update.
            with ac():
                outs = [t(x) for t in teachers]
                s = student(x)
                set_grad(d, True)
                d_update(d, opt_d, x, y, outs + [s])
                if a.freeze_d:
                    set_grad(d, False)
                log = []
                for opt, out in zip(opts_t, outs):
                    opt.zero_grad()
                    rec = F.l1_loss(out, y)
                    g_loss(d, x, y, out).backward()
                    opt.step()
                    log.append(rd(rec))
                opt_s.zero_grad()
                fs = d_features(d, x, s)
                kd = 0
                for out in outs:
                    t = out.detach()
                    with torch.no_grad():
                        ft = d_features(d, x, t)
                    kd = kd + distill_loss(s, t, fs, ft, window)
                gan = hinge_g(patchgan_features(d, torch.cat([x, s], 1))[-1])
                rec = F.l1_loss(s, y)
                (gan + 100 * rec + kd).backward()
                opt_s.step()
                log += [rd(gan), rd(rec), rd(kd)]

    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    for i in range(a.warmup):
        step(i)
        end_step(i)
    sync()
    ips = []
    for r in range(a.repeats):
        if world > 1:
            tdist.barrier()
        t0 = time.perf_counter()
        for k in range(a.steps_per_repeat):
            step(a.warmup + r * a.steps_per_repeat + k)
            end_step(a.warmup + r * a.steps_per_repeat + k)
        sync()
        ips.append(a.steps_per_repeat * a.batch / (time.perf_counter() - t0))
    if rank != 0:
        return
    print(json.dumps({"bench": "train_step", "impl": "pytorch", "step": a.step, "world": world,
                      "images_per_s": statistics.median(ips), "min": min(ips), "max": max(ips),
                      "repeats": a.repeats, "steps_per_repeat": a.steps_per_repeat,
                      "warmup": a.warmup, "batch": a.batch, "size": a.size,
                      "threads": torch.get_num_threads(), "device": a.device,
                      "channels_last": a.channels_last, "bf16": a.bf16,
                      "freeze_d": a.freeze_d, "lrelu": a.lrelu, "adam": a.adam, "log_every": LOG_EVERY,
                      "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
