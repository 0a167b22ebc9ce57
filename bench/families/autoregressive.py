"""Autoregressive models: a gated PixelCNN on images, a mixture-density chain on points (exact likelihoods).

Images. ``p(x) = prod_i p(x_i | x_<i)`` over pixels in raster order, each conditional a
256-way softmax over the 8-bit value (van den Oord et al. 2016a, PixelRNN/PixelCNN, eq. 1, Sec. 2.2),
so ``log_likelihood`` is the exact discrete log-probability of the 8-bit image: no
dequantization, no bound. The network is the *gated* PixelCNN (van den Oord et al. 2016b,
"Conditional Image Generation with PixelCNN Decoders", Sec. 2.1-2.2, Fig. 2):

* a vertical stack whose output at row i sees only rows above i (all columns within its
  kernel), and a horizontal stack whose output at (i, j) sees row i left of j plus the vertical
  stack: together they cover everything above and to the left, with no blind spot (a test checks
  that each pixel sees its left and above-right neighbours and nothing at or after itself). The
  receptive field reaches ``first_kernel // 2 + layers * (kernel // 2)`` rows up: 8 with the defaults;
* the first layer is "mask A" (excludes the current pixel), the gated layers are "mask B";
  both are realised without masks, by convolving with half-height/half-width kernels on a
  shifted padding (the same receptive field as a masked kernel, at about half its cost);
* gated activations ``tanh(W_f * x) . sigmoid(W_g * x)`` (eq. 2), the vertical stack feeding the
  horizontal one through a 1x1 convolution, and a residual connection on the horizontal stack;
* a 1x1 output head with 256 logits per pixel and channel. On colour images the channels of one
  pixel are conditionally independent given the pixels before it, ``p(x_i | x_<i) = prod_c
  p(x_i,c | x_<i)``: still an exact likelihood, but weaker than PixelCNN's R -> G -> B ordering
  inside a pixel (2016a, Sec. 3.4), which needs channel-group masks in every layer;
* ``conditional: true`` (images): the class-conditional PixelCNN of van den Oord et al. 2016b,
  Sec. 2.3, eq. 4: a learned per-class embedding ``V^T h`` added as a bias to the pre-gate features
  of both stacks in every gated layer, so the model is p(x | y). Its likelihoods are the exact
  log p(x | y) of the test labels (``given="y"``) and the exact marginal
  ``log p(x) = log sum_y p(y) p(x | y)`` with p(y) the training frequencies (K forward passes per
  image), reported under the usual ``exact`` name since it is the model's exact log p(x).

Sampling needs one network evaluation per pixel (NFE = H*W). Recomputing the whole net per
pixel would cost H*W full forward passes; instead ``autoregress`` computes each layer's
activations exactly once, row by row (vertical stack) and pixel by pixel (horizontal stack),
from caches of the activations already computed: every activation a masked net would
compute, and nothing else (the caching idea of Ramachandran et al. 2017, "Fast Generation for
Convolutional Autoregressive Models", for this architecture). A test checks that its logits
equal the full forward pass.

Points. ``p(x) = prod_d p(x_d | x_<d)`` over the coordinates, each conditional a mixture of
Gaussians whose parameters an MLP computes from ``x_<d`` (a mixture density network, Bishop
1994; the chain rule as in MADE/NADE, Uria et al. 2016): an exact continuous density, D network
evaluations per sample.

Outside reference at equal CPU time (issue 14): jzbontar/pixelcnn-pytorch ``main.py`` (eight masked 7x7
convolutions of 64 channels with batch norm, a 256-way softmax, Adam, batch 128), re-implemented in
``scripts/references.py`` and trained for the main suite's 45 s on this 2-core machine (2 threads, idle):
15 steps, test NLL 8.426 bits/dim on the 8-bit protocol (the first 1,000 test images), domain FID 2,416
on 100 samples (one seed; its sampler took 286 s for them). bench's gated PixelCNN as ``suites/mnist.yaml``
ships it (tuned: 16 channels, 6 layers, lr 9.9e-3, batch 16; ``docs/tuning/mnist-2026-12-01``): 736
steps, 1.106 +- 0.002 bits/dim and FID 337 +- 44 on 2,000 samples over 3 seeds. A 64-channel 7x7 network
at batch 128 is a GPU configuration; at 45 CPU-seconds it has not left the uniform model (8 bits/dim).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from bench.engine import TrainSettings
from bench.errors import BenchError
from bench.families.base import DataSpec, FamilyOptions, GenerativeModel, Likelihood, register_family
from bench.families.nets import mlp
from bench.space import Categorical, Float, Int

LOG_2PI = math.log(2 * math.pi)


class AutoregressiveOptions(FamilyOptions):
    channels: int = Field(32, gt=0)  # images: feature maps per stack in each gated layer
    layers: int = Field(5, ge=0)  # images: gated residual layers after the first (mask A) layer
    kernel: int = Field(3, ge=3)  # images: odd kernel width of the gated layers (height k//2+1 in the vertical stack)
    first_kernel: int = Field(7, ge=3)  # images: odd width of the first layer (sees k//2 rows above, k//2 pixels left)
    head: int = Field(64, gt=0)  # images: hidden channels of the 1x1 output head before the 256 logits
    hidden: int = Field(128, gt=0)  # points: MLP width of each conditional
    components: int = Field(10, gt=0)  # points: Gaussian mixture components per conditional
    lr: float = Field(3e-3, gt=0)  # Adam learning rate (3e-3 beat 1e-3 on MNIST over 50 steps: 1.22 vs 1.51 bits/dim)
    conditional: bool = False  # images: class-conditional gated PixelCNN, p(x | y) (van den Oord et al. 2016b, eq. 4)

    @field_validator("kernel", "first_kernel")
    @classmethod
    def _odd(cls, k: int) -> int:
        if k % 2 == 0:
            raise ValueError(f"must be odd, got {k}")
        return k


# ---------------------------------------------------------------------------------- causal convolutions


class CausalConv(nn.Module):
    """A convolution whose output sees only what comes before it in raster order.

    ``direction="down"``: kernel (k//2 + 1, k) ("mask B": rows i-k//2..i) or, with ``exclude``,
    (k//2, k) on rows i-k//2..i-1 ("mask A"); all columns j-k//2..j+k//2.
    ``direction="right"``: kernel (1, k//2 + 1) on columns j-k//2..j of row i, or with ``exclude``
    (1, k//2) on columns j-k//2..j-1.

    ``pad`` + ``conv`` (a valid convolution) is the split the incremental sampler needs: output
    position p of ``conv(pad(x))`` reads padded positions p..p+kernel-1, so one output row/column
    is ``conv`` of a kernel-sized slice of the padded input.
    """

    def __init__(self, c_in: int, c_out: int, k: int, direction: str, exclude: bool):
        super().__init__()
        r = k // 2
        self.direction = direction
        self.depth = r if exclude else r + 1  # kernel extent along the causal axis
        self.before = r  # padding before the causal axis: output p reads inputs p-r .. p-r+depth-1
        self.side = r if direction == "down" else 0  # symmetric padding across (down: columns)
        ks = (self.depth, k) if direction == "down" else (1, self.depth)
        self.conv = nn.Conv2d(c_in, c_out, ks)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.direction == "down":
            return F.pad(x, (self.side, self.side, self.before, 0))  # (B, C, H + before, W + 2 side)
        return F.pad(x, (self.before, 0, 0, 0))  # (B, C, H, W + before)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        return self.conv(self.pad(x))[:, :, :h, :w]  # exclude mode yields one extra row/column: drop it


def gate(x: torch.Tensor) -> torch.Tensor:
    """tanh(a) * sigmoid(b) over the two channel halves (gated PixelCNN, eq. 2)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer: vertical stack -> itself and the horizontal stack; horizontal residual (Fig. 2)."""

    def __init__(self, c: int, k: int, num_classes: int = 0):
        super().__init__()
        self.vconv = CausalConv(c, 2 * c, k, "down", exclude=False)
        self.hconv = CausalConv(c, 2 * c, k, "right", exclude=False)
        self.link = nn.Conv2d(2 * c, 2 * c, 1)  # vertical -> horizontal
        self.hout = nn.Conv2d(c, c, 1)
        # class-conditional bias V^T h of both stacks' pre-gate features (eq. 4): (K,) -> (4C,) = [vertical, horizontal]
        self.label = nn.Embedding(num_classes, 4 * c) if num_classes else None

    def biases(self, y: torch.Tensor | None) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """Per-example (vertical, horizontal) pre-gate biases, (B, 2C) each; 0 without labels."""
        if y is None or self.label is None:
            return 0.0, 0.0
        vb, hb = self.label(y).chunk(2, dim=1)
        return vb, hb

    def forward(self, v: torch.Tensor, h: torch.Tensor,
                y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        vb, hb = self.biases(y)
        if y is not None:
            vb, hb = vb[:, :, None, None], hb[:, :, None, None]  # (B, 2C, 1, 1)
        vf = self.vconv(v) + vb  # (B, 2C, H, W): depends on rows < i of the image (v does)
        hf = self.hconv(h) + self.link(vf) + hb  # (B, 2C, H, W)
        return gate(vf), h + self.hout(gate(hf))


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN: (B, C, H, W) in [-1, 1] [, labels (B,)] -> (B, H, W, C * 256) logits (C = 1 or 3 image
    channels); labels condition a class-conditional net (``num_classes`` > 0)."""

    def __init__(self, o: AutoregressiveOptions, image_channels: int = 1, num_classes: int = 0):
        super().__init__()
        c = o.channels
        self.v0 = CausalConv(image_channels, c, o.first_kernel, "down", exclude=True)  # mask A, rows above
        self.h0 = CausalConv(image_channels, c, o.first_kernel, "right", exclude=True)  # mask A, pixels to the left
        self.link0 = nn.Conv2d(c, c, 1)
        self.layers = nn.ModuleList([GatedLayer(c, o.kernel, num_classes) for _ in range(o.layers)])
        # per-pixel head on channels-last features: the 256 logits of a pixel are contiguous, which makes the
        # softmax / cross-entropy over them several times faster on CPU than over dim 1 of an NCHW tensor
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(c, o.head), nn.ReLU(), nn.Linear(o.head, 256 * image_channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)  # faster oneDNN convolutions on CPU
        v = self.v0(x)  # (B, C, H, W)
        h = self.h0(x) + self.link0(v)
        for layer in self.layers:
            v, h = layer(v, h, y)
        return self.head(h.permute(0, 2, 3, 1))  # (B, H, W, C * 256) logits


def scale_in(v: torch.Tensor) -> torch.Tensor:
    """8-bit values (0..255, any dtype) -> network input in [-1, 1]."""
    return v.float() / 127.5 - 1


@torch.no_grad()
def autoregress(
    net: GatedPixelCNN, shape: tuple[int, int], n: int, generator: torch.Generator | None,
    given: torch.Tensor | None = None, y: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pixel-by-pixel generation with cached activations: ((n, C, H, W) 8-bit values, logits or None).

    Each pixel's logits cost one pass through the horizontal stack and head at one position,
    plus one row of the vertical stack per image row. With ``given`` (8-bit images) the pixels
    are teacher-forced instead of drawn and the (n, H, W, C * 256) logits are returned: the test that
    this equals ``net(x)``. ``y`` (n,) labels condition a class-conditional net (its per-layer biases).
    """
    H, W = shape
    dev = next(net.parameters()).device
    c, ci = net.link0.in_channels, net.v0.conv.in_channels  # hidden channels, image channels
    v0, h0, layers = net.v0, net.h0, net.layers
    kv = layers[0].vconv if len(layers) else None
    kh = layers[0].hconv if len(layers) else None
    # padded caches: the first layer reads the image, gated layer l reads v_{l-1} (vertical) / h_{l-1} (horizontal)
    x_v = torch.zeros(n, ci, H + v0.before, W + 2 * v0.side, device=dev)
    x_h = torch.zeros(n, W + h0.before, ci, device=dev)  # the current row of the image, left-padded, position-major
    v_in = [torch.zeros(n, c, H + kv.before, W + 2 * kv.side, device=dev) for _ in layers] if kv else []
    w_h0 = _position_major(h0.conv)
    w_layers = [(_position_major(ly.hconv.conv), ly.hconv.conv.bias, ly.hout.weight.flatten(1), ly.hout.bias)
                for ly in layers]
    label_bias = [ly.biases(y) for ly in layers]  # (vertical, horizontal) pre-gate biases, (n, 2C) each or 0
    values = torch.zeros(n, ci, H, W, dtype=torch.long, device=dev)
    all_logits = torch.zeros(n, H, W, ci * 256, device=dev) if given is not None else None
    for i in range(H):
        # vertical stack, row i of every layer (needs only rows < i of the image, all known)
        v = v0.conv(x_v[:, :, i : i + v0.depth])  # (n, C, 1, W)
        link0 = net.link0(v)
        links = []
        for layer, cache, (vb, _) in zip(layers, v_in, label_bias):
            cache[:, :, i + kv.before, kv.side : kv.side + W] = v[:, :, 0]
            vf = layer.vconv.conv(cache[:, :, i : i + kv.depth])  # (n, 2C, 1, W)
            if y is not None:
                vf = vf + vb[:, :, None, None]
            links.append(layer.link(vf))
            v = gate(vf)
        # horizontal stack, pixel by pixel along row i. Per pixel each convolution is one matrix product on a
        # contiguous (n, kernel * C) slice of a position-major cache (far less overhead than conv2d per pixel).
        x_h.zero_()
        h_in = [torch.zeros(n, W + kh.before, c, device=dev) for _ in layers] if kh else []
        link0 = link0[:, :, 0].transpose(1, 2).contiguous()  # (n, W, C)
        links = [link[:, :, 0].transpose(1, 2).contiguous() for link in links]  # (n, W, 2C) each
        for j in range(W):
            h = F.linear(x_h[:, j : j + h0.depth].reshape(n, -1), w_h0, h0.conv.bias) + link0[:, j]  # (n, C)
            for (w, b, w_out, b_out), cache, link, (_, hb) in zip(w_layers, h_in, links, label_bias):
                cache[:, j + kh.before] = h
                hf = F.linear(cache[:, j : j + kh.depth].reshape(n, -1), w, b) + link[:, j] + hb  # (n, 2C)
                h = h + F.linear(gate(hf), w_out, b_out)
            logits = net.head(h)  # (n, ci * 256)
            if given is not None:
                all_logits[:, i, j] = logits
                val = given[:, :, i, j].long()  # (n, ci)
            else:
                val = _draw(logits.view(n * ci, 256), generator).view(n, ci)
            values[:, :, i, j] = val
            xv = scale_in(val)
            x_v[:, :, i + v0.before, v0.side + j] = xv
            x_h[:, j + h0.before] = xv
    return values, all_logits


def _position_major(conv: nn.Conv2d) -> torch.Tensor:
    """A (1, k) convolution's weight as a matrix on position-major slices: (C_out, C_in, 1, k) -> (C_out, k C_in)."""
    w = conv.weight[:, :, 0]  # (C_out, C_in, k)
    return w.permute(0, 2, 1).reshape(w.shape[0], -1)


def _draw(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One value per row from softmax(logits) by inverting the CDF: (n, 256) -> (n,).

    Exact like ``torch.multinomial`` but with one uniform per row instead of one exponential per
    category, which made multinomial a third of the sampler's time on CPU.
    """
    cdf = torch.softmax(logits, 1).cumsum(1)  # (n, 256)
    u = torch.rand(logits.shape[0], 1, generator=generator, device=generator.device).to(logits.device)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(max=255)[:, 0]


# ---------------------------------------------------------------------------------- points


def mixture_logp(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """log of a 1-D Gaussian mixture at x (B,), params (B, 3K) = (logits, means, log-stds) -> (B,)."""
    logits, mean, log_std = params.chunk(3, dim=1)
    log_std = log_std.clamp(-7, 3)
    comp = -0.5 * ((x[:, None] - mean) * torch.exp(-log_std)).square() - log_std - 0.5 * LOG_2PI
    return torch.logsumexp(F.log_softmax(logits, 1) + comp, dim=1)


# ---------------------------------------------------------------------------------- the family


class Autoregressive(GenerativeModel):
    """Gated PixelCNN (256-way softmax per pixel) / mixture-density chain on points; exact likelihood."""

    family = "autoregressive"
    Options = AutoregressiveOptions
    search_space = {  # bench tune (bench/space.py)
        "lr": Float(3e-4, 1e-2, log=True),
        "channels": Categorical([16, 32, 64]),
        "layers": Int(2, 8),
        "batch_size": Categorical([16, 32, 64, 128]),
    }
    likelihood_kind = "exact"
    conditional_capable = True  # images, with conditional: true
    watched_loss = "nll"
    train_defaults = TrainSettings(grad_clip=10.0)  # a loose clip on the global gradient norm (the value it always had)

    def __init__(self, spec: DataSpec, options: AutoregressiveOptions):
        super().__init__(spec, options)
        if spec.kind == "image":
            k = spec.num_classes if options.conditional else 0
            self.net = GatedPixelCNN(options, spec.shape[0], k).to(memory_format=torch.channels_last)
        elif options.conditional:
            raise BenchError("autoregressive option conditional=true is for images (the class-conditional "
                             "PixelCNN); on points use conditional: false")
        else:
            # conditional d reads x_<d; the first reads a constant 0 (its output is the marginal p(x_1))
            k, hidden = options.components, options.hidden
            self.conds = nn.ModuleList([mlp(max(d, 1), 3 * k, hidden) for d in range(spec.dim)])
            self.register_buffer("initialized", torch.tensor(False))  # data-dependent init done (saved with weights)

    # ------------------------------------------------------------------ densities
    def _image_logp(self, v: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log P(v [| y]) of 8-bit images (B, C, H, W) in nats: the sum of per-value log-softmax, (B,)."""
        logits = self.net(scale_in(v), y)  # (B, H, W, C * 256), a pixel's channels in order
        target = v.permute(0, 2, 3, 1).reshape(-1).long()  # (B*H*W*C,) in the logits' order
        nll = F.cross_entropy(logits.reshape(-1, 256), target, reduction="none")  # (B*H*W*C,)
        return -nll.view(v.shape[0], -1).sum(1)

    def _cond_input(self, x: torch.Tensor, d: int) -> torch.Tensor:
        return x[:, :d] if d > 0 else x.new_zeros(x.shape[0], 1)

    @torch.no_grad()
    def _init_from_data(self, x: torch.Tensor) -> None:
        """Start every conditional near a mixture fitted crudely to the first batch: component means at K
        random data points, stds at (data std) / K, weights of the output layer shrunk.

        Why: a mixture density network started at unit-scale components needs thousands of steps to
        pull them onto sharp modes (ring8's std is 0.02); this data-dependent start, in the spirit of
        ActNorm's (Kingma & Dhariwal 2018, Sec. 3.1), makes the 20-second toy budget enough.
        """
        k = self.options.components
        for d, net in enumerate(self.conds):
            last = net[-1]  # Linear(hidden, 3K): logits, means, log-stds
            idx = torch.randint(0, x.shape[0], (k,), generator=self.gen, device=x.device)
            last.weight.mul_(0.1)
            last.bias.zero_()
            last.bias[k : 2 * k] = x[idx, d]
            last.bias[2 * k :] = torch.log(x[:, d].std() / k + 1e-3)
        self.initialized.fill_(True)

    def _points_logp(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = sum_d log p(x_d | x_<d), (B, D) -> (B,)."""
        return sum(mixture_logp(x[:, d], net(self._cond_input(x, d))) for d, net in enumerate(self.conds))

    # ------------------------------------------------------------------ interface
    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        image = self.spec.kind == "image"
        if not image and not bool(self.initialized):
            self._init_from_data(x)
        labels = y if self.is_conditional else None
        logp = self._image_logp((x * 255).round(), labels) if image else self._points_logp(x)
        nll = -logp.mean()  # nats per example
        if not image:
            return {"nll": nll}
        return {"nll": nll, "nll_bpd": nll.detach() / (self.spec.dim * math.log(2))}

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator,
                       y: torch.Tensor | None = None) -> list[Likelihood]:
        if not self.is_conditional:
            lp = self._image_logp(x) if self.spec.kind == "image" else self._points_logp(x.float())
            return [Likelihood("exact", "exact", lp)]
        out = []
        if y is not None:
            out.append(Likelihood("exact", "exact", self._image_logp(x, y.to(x.device).long()), given="y"))
        # log p(x) = log sum_y p(y) p(x | y): exact, K forward passes (p(y): training frequencies)
        k = self.spec.num_classes
        log_py = torch.tensor(self.spec.class_frequencies, device=x.device).log()  # (K,)
        per_class = torch.stack([self._image_logp(x, torch.full((x.shape[0],), c, dtype=torch.long, device=x.device))
                                 for c in range(k)])  # (K, B)
        marginal = torch.logsumexp(log_py[:, None] + per_class, 0)
        out.append(Likelihood("exact", "exact", marginal, {"marginal": f"log sum_y p(y) p(x | y), {k} classes"}))
        return out

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.spec.kind == "image":
            labels = self.labels_for(n, generator, y) if self.is_conditional else None
            values, _ = autoregress(self.net, self.spec.shape[1:], n, generator, y=labels)
            return values.float() / 255
        x = torch.zeros(n, self.spec.dim, device=self.device)
        for d, net in enumerate(self.conds):
            logits, mean, log_std = net(self._cond_input(x, d)).chunk(3, dim=1)  # (n, K) each
            k = torch.multinomial(torch.softmax(logits, 1).to(generator.device), 1, generator=generator).to(x.device)
            eps = torch.randn(n, 1, generator=generator, device=generator.device).to(x.device)
            x[:, d] = (mean.gather(1, k) + log_std.clamp(-7, 3).gather(1, k).exp() * eps)[:, 0]
        return x

    @property
    def nfe_per_sample(self) -> float:
        """Images: one network evaluation per pixel (computed incrementally, see ``autoregress``); points: one
        per coordinate."""
        return float(self.spec.shape[1] * self.spec.shape[2]) if self.spec.kind == "image" else float(self.spec.dim)

    def nfe_modules(self) -> list[nn.Module]:
        """Images: the output head, evaluated once per pixel by the incremental sampler; points: the D
        conditionals."""
        return [self.net.head] if self.spec.kind == "image" else list(self.conds)


register_family("autoregressive", Autoregressive)
