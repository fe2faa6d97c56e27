"""PyTorch eager twins of the ugc-pipe networks the benchmarks time (issue #7).

Same layer sequence and shapes as `crates/nn/src/{resnet,patchgan}.rs` (which follow
pytorch-CycleGAN-and-pix2pix's ResnetGenerator / NLayerDiscriminator), written with
torch.nn so the PyTorch side is an ordinary eager implementation. Widths come from an
exported `model.json` (`arch.channels`, or derived from `ngf`) so both sides time the
same architecture.
"""
import json

import torch
from torch import nn


def resnet_widths(arch):
    """Per-position widths [stem, down1, trunk, inner x n, up1, up2] of a ResNet config."""
    if arch.get("channels"):
        return list(arch["channels"])
    ngf, n = arch["ngf"], arch["n_blocks"]
    return [ngf, 2 * ngf, 4 * ngf] + [4 * ngf] * n + [2 * ngf, ngf]


class Block(nn.Module):
    """Residual block with an elastic inner width (`trunk -> inner -> trunk`)."""

    def __init__(self, trunk, inner, norm):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(trunk, inner, 3, bias=True), norm(inner), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(inner, trunk, 3, bias=True), norm(trunk))

    def forward(self, x):
        return x + self.body(x)


def resnet_generator(widths, n_blocks, depth=None, input_nc=3, output_nc=3):
    """pix2pix ResnetGenerator with instance norm and explicit widths. `depth` (optional list
    of bools) skips blocks, as a sub-net of the supernet does."""
    norm = lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
    stem, down1, trunk = widths[0], widths[1], widths[2]
    inner = widths[3:3 + n_blocks]
    up1, up2 = widths[3 + n_blocks], widths[4 + n_blocks]
    layers = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, stem, 7, bias=True), norm(stem), nn.ReLU(True),
              nn.Conv2d(stem, down1, 3, stride=2, padding=1, bias=True), norm(down1), nn.ReLU(True),
              nn.Conv2d(down1, trunk, 3, stride=2, padding=1, bias=True), norm(trunk), nn.ReLU(True)]
    for i, c in enumerate(inner):
        if depth is None or depth[i]:
            layers.append(Block(trunk, c, norm))
    layers += [nn.ConvTranspose2d(trunk, up1, 3, stride=2, padding=1, output_padding=1, bias=True),
               norm(up1), nn.ReLU(True),
               nn.ConvTranspose2d(up1, up2, 3, stride=2, padding=1, output_padding=1, bias=True),
               norm(up2), nn.ReLU(True),
               nn.ReflectionPad2d(3), nn.Conv2d(up2, output_nc, 7), nn.Tanh()]
    return nn.Sequential(*layers)


def load_exported_arch(model_dir):
    with open(f"{model_dir}/model.json") as f:
        return json.load(f)["arch"]


def patchgan(input_nc, ndf, n_layers=3):
    """NLayerDiscriminator with batch norm; returns the module list so features can be
    read after every LeakyReLU (as `PatchGan::features` does)."""
    w = lambda n: ndf * min(2 ** n, 8)
    layers = [nn.Sequential(nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True))]
    for n in range(1, n_layers + 1):
        stride = 2 if n < n_layers else 1
        layers.append(nn.Sequential(nn.Conv2d(w(n - 1), w(n), 4, stride, 1, bias=False),
                                    nn.BatchNorm2d(w(n)), nn.LeakyReLU(0.2, True)))
    layers.append(nn.Conv2d(w(n_layers), 1, 4, 1, 1))
    return nn.ModuleList(layers)


def patchgan_features(d, x):
    out = []
    h = x
    for layer in d:
        h = layer(h)
        out.append(h)
    return out
