"""Small building blocks shared by families (STYLE.md #1: shared blocks live here, not copied).

Convolutional nets are sized from the image shape: they halve the resolution with
stride-2 convolutions while it stays even and above 7, so 28x28 MNIST goes
28 -> 14 -> 7 and 8x8 digits go 8 -> 4. Points (toy2d) use MLPs.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from bench.errors import BenchError


def downsample_plan(h: int) -> list[int]:
    """Resolutions after each stride-2 conv: 28 -> [14, 7]; 8 -> [4]; 32 -> [16, 8, 4]."""
    sizes = []
    while h % 2 == 0 and h > 7:
        h //= 2
        sizes.append(h)
    return sizes


def mlp(d_in: int, d_out: int, hidden: int = 256, depth: int = 3, act: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth - 1):
        layers += [nn.Linear(d, hidden), act()]
        d = hidden
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    """(B, C, H, W) -> (B, out_dim): stride-2 4x4 convolutions straight from the input (DCGAN-style,
    Radford et al. 2016), no full-resolution layer, which is where a small CPU net spends its time.

    ``features`` and ``head`` are usable apart: a caller may append ``extra_feature_maps`` maps to the
    features before the head (a discriminator's minibatch std), and the head is sized for them.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        out_dim: int,
        width: int = 32,
        norm: str = "none",
        act: type[nn.Module] = nn.SiLU,
        extra_in_channels: int = 0,
        extra_feature_maps: int = 0,
    ):
        super().__init__()
        c, h, _ = shape
        sizes = downsample_plan(h)
        layers: list[nn.Module] = []
        ch_in, ch = c + extra_in_channels, width
        for i, _ in enumerate(sizes):
            layers.append(nn.Conv2d(ch_in, ch, 4, 2, 1))
            if norm == "batch" and i > 0:
                layers.append(nn.BatchNorm2d(ch))
            layers.append(act())
            ch_in, ch = ch, ch * 2
        if not sizes:  # odd or tiny images: one full-resolution layer
            layers += [nn.Conv2d(ch_in, ch, 3, 1, 1), act()]
            ch_in = ch
        self.features = nn.Sequential(*layers)
        self.flat_dim = (ch_in + extra_feature_maps) * (sizes[-1] if sizes else h) ** 2
        self.head = nn.Linear(self.flat_dim, out_dim)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))  # (B, out_dim)


class ConvDecoder(nn.Module):
    """(B, in_dim) -> (B, out_channels, H, W) pre-activations; the mirror of ConvEncoder (the last
    transposed convolution emits the output channels directly)."""

    def __init__(
        self,
        in_dim: int,
        shape: tuple[int, int, int],
        out_channels: int | None = None,
        width: int = 32,
        norm: str = "none",
        act: type[nn.Module] = nn.SiLU,
    ):
        super().__init__()
        c, h, _ = shape
        out_c = out_channels or c
        sizes = downsample_plan(h)
        n = max(len(sizes), 1)
        ch = width * 2 ** (n - 1)
        self.base = (ch, sizes[-1] if sizes else h)
        self.fc = nn.Linear(in_dim, ch * self.base[1] ** 2)
        layers: list[nn.Module] = []
        if norm == "batch":
            layers.append(nn.BatchNorm2d(ch))
        layers.append(act())
        if not sizes:
            layers.append(nn.Conv2d(ch, out_c, 3, 1, 1))
        for i in range(len(sizes)):
            last = i == len(sizes) - 1
            layers.append(nn.ConvTranspose2d(ch, out_c if last else ch // 2, 4, 2, 1))
            if not last:
                if norm == "batch":
                    layers.append(nn.BatchNorm2d(ch // 2))
                layers.append(act())
                ch //= 2
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        ch, s = self.base
        return self.net(self.fc(z).view(-1, ch, s, s))  # (B, C_out, H, W)



# ---------------------------------------------------------------------- time-conditioned nets
# Shared by the diffusion and flow-matching families: a network of (x_t, t) that predicts noise
# (DDPM) or a velocity (flow matching). Time t is continuous in [0, 1]; the DDPM family passes
# its step index as t / T.


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """Sinusoidal embedding of t in [0, 1] (Vaswani et al. 2017 sec. 3.5; as used by Ho et al. 2020).

    t is scaled by 1000 first so that the usual frequency range covers both a 1000-step DDPM
    and a continuous flow-matching time. (B,) -> (B, dim).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (1000.0 * t.float())[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb  # (B, dim)


def _groups(ch: int) -> int:
    """GroupNorm groups: 8 channels per group (or fewer groups for narrow layers)."""
    return max(1, min(32, ch // 8))


class TimeResBlock(nn.Module):
    """GN-SiLU-conv, + per-channel time shift, GN-SiLU-conv, residual (Ho et al. 2020 appendix B, no dropout)."""

    def __init__(self, c_in: int, c_out: int, t_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.temb = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stabler early training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x, temb):
        h = self.conv1(self.act(self.norm1(x)))  # (B, c_out, H, W)
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        return self.skip(x) + h


class TimeUNet(nn.Module):
    """A small time-conditioned U-Net for 28x28 and 8x8 images: (B, C, H, W), (B,) -> (B, C, H, W).

    ``patch`` > 1 first folds p x p pixel patches into channels (pixel unshuffle; 28x28x1 ->
    14x14x4) and unfolds them at the end: a lossless way to skip the costliest full-resolution
    convolutions on a CPU. There are ``len(mults)`` resolution levels, each half the previous
    (rounded up: 14 -> 7 -> 4, 8 -> 4); ``mults[i]`` scales the width at level i. One
    residual block per level on the way down, one on the way up after concatenating the skip,
    one in the middle; no attention (it costs much on a CPU at these sizes). The output layer
    starts at zero, so an untrained net predicts 0 (the families' known-answer tests use this).
    """

    def __init__(self, shape: tuple[int, int, int], width: int = 32, mults: tuple[int, ...] = (1, 2, 2),
                 patch: int = 1, t_dim: int | None = None, num_classes: int = 0):
        super().__init__()
        c, h, w = shape
        if h % patch or w % patch:
            raise ValueError(f"patch={patch} does not divide the image size {h}x{w}")
        self.patch = patch
        c, h = c * patch * patch, h // patch
        levels = [h]  # resolutions: stride-2 convs halve them (rounding up), e.g. 14 -> 7 -> 4, 8 -> 4 -> 2
        while len(levels) < len(mults) and levels[-1] >= 4:
            levels.append((levels[-1] + 1) // 2)
        chs = [width * m for m in mults[: len(levels)]]
        self.t_freq = max(width, 32)  # sinusoidal features of t
        t_dim = t_dim or 4 * width
        self.time_mlp = nn.Sequential(nn.Linear(self.t_freq, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.inp = nn.Conv2d(c, chs[0], 3, 1, 1)
        self.down_blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i in range(len(levels) - 1):
            self.down_blocks.append(TimeResBlock(chs[i], chs[i], t_dim))
            self.downs.append(nn.Conv2d(chs[i], chs[i + 1], 3, 2, 1))  # H -> ceil(H / 2)
        self.mid = TimeResBlock(chs[-1], chs[-1], t_dim)
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(len(levels) - 1)):
            self.ups.append(nn.Sequential(nn.Upsample(size=(levels[i], levels[i]), mode="nearest"),
                                          nn.Conv2d(chs[i + 1], chs[i], 3, 1, 1)))
            self.up_blocks.append(TimeResBlock(2 * chs[i], chs[i], t_dim))
        self.out = nn.Sequential(nn.GroupNorm(_groups(chs[0]), chs[0]), nn.SiLU(), nn.Conv2d(chs[0], c, 3, 1, 1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        # created last, so an unconditional net draws the same initial weights as before labels existed
        self.label_emb = label_embedding(num_classes, t_dim)

    def forward(self, x, t, y=None):
        temb = self.time_mlp(timestep_embedding(t, self.t_freq))  # (B, t_dim)
        if y is not None:
            temb = temb + self.label_emb(y)  # class embedding added to the time embedding (Ho & Salimans 2022)
        if self.patch > 1:
            x = nn.functional.pixel_unshuffle(x, self.patch)  # (B, C p^2, H/p, W/p)
        h = self.inp(x)
        skips = []
        for block, down in zip(self.down_blocks, self.downs):
            h = block(h, temb)
            skips.append(h)
            h = down(h)
        h = self.mid(h, temb)
        for up, block in zip(self.ups, self.up_blocks):
            h = block(torch.cat([up(h), skips.pop()], dim=1), temb)
        h = self.out(h)
        return nn.functional.pixel_shuffle(h, self.patch) if self.patch > 1 else h  # (B, C, H, W)


class TimeMLP(nn.Module):
    """Time-conditioned MLP for points: (B, D), (B,) -> (B, D); the time embedding is concatenated to x."""

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, t_dim: int = 32, num_classes: int = 0):
        super().__init__()
        self.t_dim = t_dim
        self.net = mlp(dim + t_dim, dim, hidden, depth)
        nn.init.zeros_(self.net[-1].weight)  # an untrained net predicts 0, as TimeUNet does
        nn.init.zeros_(self.net[-1].bias)
        self.label_emb = label_embedding(num_classes, t_dim)

    def forward(self, x, t, y=None):
        temb = timestep_embedding(t, self.t_dim)  # (B, t_dim)
        if y is not None:
            temb = temb + self.label_emb(y)
        return self.net(torch.cat([x, temb], dim=1))  # (B, D)


def label_embedding(num_classes: int, dim: int) -> nn.Embedding | None:
    """Learned class embeddings for labels 0..K-1 plus index K, the "null" label of classifier-free
    guidance (Ho & Salimans 2022, sec. 3.2: one net, trained with labels dropped to null); None if K = 0."""
    return nn.Embedding(num_classes + 1, dim) if num_classes else None


def time_conditioned_net(spec, family: str, width: int, mults, patch: int | None, hidden: int,
                         num_classes: int = 0) -> nn.Module:
    """The denoiser / velocity net of diffusion and flow matching: a TimeUNet on images, a TimeMLP on points.

    ``num_classes`` > 0 adds a class embedding (K classes and the null label K); ``net(x, t, y)`` then
    conditions on y, and ``net(x, t)`` is the plain unconditional net.

    ``patch=None`` folds 2x2 pixels into channels on images of 16 px and more (skips the costly
    full-resolution convolutions on a CPU) and works at full resolution otherwise.
    """
    if spec.kind != "image":
        return TimeMLP(spec.dim, hidden, num_classes=num_classes)
    _, h, w = spec.shape
    p = patch if patch is not None else (2 if h >= 16 and h % 2 == 0 and w % 2 == 0 else 1)
    if h % p or w % p:
        raise BenchError(f"{family} option patch={patch} does not divide the {h}x{w} images; "
                         "use a divisor of the image size (or null for the default)")
    return TimeUNet(spec.shape, width, tuple(mults), p, num_classes=num_classes)
