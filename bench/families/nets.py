"""Small building blocks shared by families (STYLE.md #1: shared blocks live here, not copied).

Convolutional nets are sized from the image shape: they halve the resolution with
stride-2 convolutions while it stays even and above 7, so 28x28 MNIST goes
28 -> 14 -> 7 and 8x8 digits go 8 -> 4. Points (toy2d) use MLPs.
"""
from __future__ import annotations

from torch import nn


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
    """(B, C, H, W) -> (B, out_dim). ``norm`` in {"batch", "none"}; ``act`` e.g. LeakyReLU for a GAN critic."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        out_dim: int,
        width: int = 32,
        norm: str = "none",
        act: type[nn.Module] = nn.SiLU,
        extra_in_channels: int = 0,
    ):
        super().__init__()
        c, h, _ = shape
        sizes = downsample_plan(h)
        layers: list[nn.Module] = [nn.Conv2d(c + extra_in_channels, width, 3, 1, 1), act()]
        ch = width
        for _ in sizes:
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1)]
            if norm == "batch":
                layers.append(nn.BatchNorm2d(ch * 2))
            layers.append(act())
            ch *= 2
        self.features = nn.Sequential(*layers)
        self.flat_dim = ch * (sizes[-1] if sizes else h) ** 2
        self.head = nn.Linear(self.flat_dim, out_dim)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))  # (B, out_dim)


class ConvDecoder(nn.Module):
    """(B, in_dim) -> (B, out_channels, H, W) logits/pre-activations; mirror of ConvEncoder."""

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
        sizes = downsample_plan(h)
        ch = width * 2 ** len(sizes)
        self.base = (ch, sizes[-1] if sizes else h)
        self.fc = nn.Linear(in_dim, ch * self.base[1] ** 2)
        layers: list[nn.Module] = []
        if norm == "batch":
            layers.append(nn.BatchNorm2d(ch))
        layers.append(act())
        for _ in sizes:
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1)]
            if norm == "batch":
                layers.append(nn.BatchNorm2d(ch // 2))
            layers.append(act())
            ch //= 2
        layers.append(nn.Conv2d(ch, out_channels or c, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        ch, s = self.base
        return self.net(self.fc(z).view(-1, ch, s, s))  # (B, C_out, H, W)
