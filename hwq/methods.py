"""Quantization methods: which quantizers each uses, and the training procedure after the float warm-up.

Every method ends with a :class:`~hwq.models.QuantNet` in quantized mode whose weights and activations
are on integer grids, so every method exports to the same IR. Equations and sources: docs/methods.md.

- ``lsq``, ``uniq``, ``dorefa``, ``pact``, ``xnor``: calibrate the quantizers on the float model, then
  fine-tune everything with the STE (:func:`qat`).
- ``sinareq``: a sinusoidal regulariser pulls each layer's weights onto the grid of a learnable
  bitwidth and scale; the bitwidths are then rounded and the network fine-tuned at them (:func:`sinareq`).
- ``tsq``: step 1 trains float weights under sparse activation codes; step 2 fits each layer's low-bit
  weights by non-linear least squares, layer by layer; then an optional fine-tune (:func:`tsq`).
- ``nbn``: neuron-by-neuron quantization with STE fine-tuning of the float rest, and the ``direct`` and
  ``layer`` variants the paper compares with (:func:`nbn`).
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .config import METHODS, NBN_VARIANTS
from .intrange import weight_codes
from .quant import FixedStepWeight, UniQWeight, mmse_step, per_channel

__all__ = ["METHODS", "NBN_VARIANTS", "Fitter", "quantizer_names", "run_method"]


_WEIGHT = {"lsq": "lsq", "uniq": "uniq", "dorefa": "dorefa", "pact": "dorefa", "xnor": "xnor",
           "sinareq": "uniq", "tsq": "fixed", "nbn": "fixed"}
_ACT = {"lsq": "lsq", "uniq": "uniq", "dorefa": "dorefa", "pact": "pact", "xnor": "sign",
        "sinareq": "uniq", "tsq": "sparse", "nbn": "fixed"}


def quantizer_names(method, w_bits, a_bits):
    """Per weight layer: (weight quantizer, activation quantizer of its input, per-channel weight scale).

    XNOR-Net's quantizers are binary; layers above 1 bit (the first/last-layer policy) use LSQ's.
    TSQ's last layer (logits) keeps one weight scale and uses LSQ's learned step.
    """
    n = len(w_bits)
    wq, aq, pc = [], [], []
    for i in range(n):
        w, a = _WEIGHT[method], _ACT[method]
        if method == "xnor":
            w = "xnor" if w_bits[i] == 1 else "lsq"
            a = "sign" if a_bits[i] == 1 else "lsq"
        if method == "tsq" and i == n - 1:
            w = "lsq"
        wq.append(w)
        aq.append(a)
        pc.append(method in ("xnor", "tsq"))
    return wq, aq, pc


@dataclass
class Fitter:
    """Mini-batch training loop shared by the methods (Adam, cosine schedule, deterministic order)."""

    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    generator: torch.Generator
    steps_done: int = field(default=0, init=False)  # over every fit call: short stages still tick per epoch
    _epoch: list = field(default_factory=lambda: [0.0, 0, 0], init=False)  # loss sum, correct, samples

    @property
    def steps_per_epoch(self):
        return math.ceil(len(self.x) / self.batch_size)

    def batches(self):
        order = torch.randperm(len(self.x), generator=self.generator)
        for start in range(0, len(self.x), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.x[idx], self.y[idx]

    def fit(self, model, epochs, lr, *, params=None, extra_loss=None, after_step=None, tick=None,
            steps=None):
        """Train for ``epochs`` (or exactly ``steps`` batches); ``extra_loss(epoch_float)`` adds a term."""
        total = steps if steps is not None else epochs * self.steps_per_epoch
        if total <= 0:
            return
        groups = params if params is not None else _param_groups(model)
        opt = torch.optim.Adam(groups, lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
        done = 0
        while done < total:
            model.train()
            for xb, yb in self.batches():
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                if tick is not None:  # the epoch's running loss and training accuracy, for the progress line
                    self._epoch[0] += float(loss.detach()) * len(yb)
                    self._epoch[1] += int((logits.detach().argmax(1) == yb).sum())
                    self._epoch[2] += len(yb)
                if extra_loss is not None:
                    loss = loss + extra_loss(done / self.steps_per_epoch)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                if after_step is not None:
                    after_step()
                done += 1
                self.steps_done += 1
                if tick is not None and self.steps_done % self.steps_per_epoch == 0:
                    loss_sum, correct, seen = self._epoch
                    tick(loss=loss_sum / max(seen, 1), acc=correct / max(seen, 1))
                    self._epoch[:] = [0.0, 0, 0]
                if done >= total:
                    break


def _param_groups(model):
    """Quantizer steps get no weight decay; PACT's clip α gets the paper's L2 term (5e-4)."""
    alpha, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (alpha if name.endswith(".alpha") else rest).append(p)
    groups = [{"params": rest, "weight_decay": 0.0}]
    if alpha:
        groups.append({"params": alpha, "weight_decay": 5e-4})
    return groups


@torch.no_grad()
def accuracy(model, x, y):
    model.eval()
    return int((model(x).argmax(1) == y).sum()) / len(y)


# --- plain QAT ------------------------------------------------------------------------------------
def qat(model, fitter, cfg, tick):
    model.calibrate(fitter.x)
    model.quantized = True
    fitter.fit(model, cfg.epochs_qat, cfg.lr_qat, tick=tick)
    return {}


# --- SINAREQ --------------------------------------------------------------------------------------
class SinusoidalRegulariser(torch.nn.Module):
    """``R_l = mean_i cos^2(pi/2 * (2^B_l - 1) * clamp(w_i / s_l, -1, 1))`` per weight layer l.

    Zero exactly on the mid-rise grid of B_l bits over [-s_l, s_l] (odd multiples of s_l/(2^B_l-1)),
    the grid of UniQ's quantizer with Δ = 2 s_l/(2^B_l - 1). B_l (the bitwidth, through the period) and
    s_l (the scale) are learned with the weights; ``lambda_bits * sum_l B_l`` keeps bitwidths low.
    """

    def __init__(self, layers, bits, learn_bits):
        super().__init__()
        self.layers = layers
        self.bits = torch.nn.Parameter(torch.tensor([float(b) for b in bits]), requires_grad=learn_bits)
        self.scale = torch.nn.Parameter(torch.stack([la.weight.detach().abs().max() for la in layers]))

    def forward(self):
        total = 0.0
        for i, layer in enumerate(self.layers):
            u = torch.clamp(layer.weight / self.scale[i], -1, 1)
            total = total + torch.cos(math.pi / 2 * (2 ** self.bits[i] - 1) * u).pow(2).mean()
        return total


def sinareq_lambda(epoch, epochs):
    """The authors' step-like schedule 0.5 (1 + tanh((epoch - 0.2 E) / s)), with s = 0.02 E."""
    return 0.5 * (1 + math.tanh((epoch - 0.2 * epochs) / max(0.02 * epochs, 1e-6)))


def sinareq(model, fitter, cfg, tick):
    layers = model.qlayers
    learn = cfg.sinareq_learn_bits
    start_bits = [8.0 if learn else float(la.wq.bits) for la in layers]
    reg = SinusoidalRegulariser(layers, start_bits, learn)
    model.calibrate(fitter.x)
    model.quantized = True
    for layer in layers:
        layer.float_weight = True
    phase1 = max(cfg.epochs_qat // 2, 1)
    lambda_bits = cfg.sinareq_lambda_bits

    def extra(epoch):
        loss = sinareq_lambda(epoch, phase1) * cfg.sinareq_lambda * reg()
        return loss + lambda_bits * reg.bits.sum() if learn else loss

    params = [*_param_groups(model), {"params": [reg.scale], "weight_decay": 0.0}]
    if learn:
        params.append({"params": [reg.bits], "lr": cfg.sinareq_lr_bits, "weight_decay": 0.0})
    fitter.fit(model, phase1, cfg.lr_qat, params=params, extra_loss=extra, tick=tick)
    learned = [int(min(max(round(float(b)), 1), 8)) for b in reg.bits.detach()]
    # Fine-tune at the learned (or fixed) bits, UniQ's quantizer started on the regulariser's grid.
    for layer, bits, s in zip(layers, learned, reg.scale.detach(), strict=True):
        layer.wq = UniQWeight(bits)
        with torch.no_grad():
            layer.wq.delta.fill_(float(2 * s / ((1 << bits) - 1)))
        layer.float_weight = False
    model.config.w_bits = learned
    fitter.fit(model, cfg.epochs_qat - phase1, cfg.lr_qat, tick=tick)
    return {"sinareq": {"learned_bits_float": [round(float(b), 3) for b in reg.bits.detach()],
                        "w_bits": learned, "learned": learn}}


# --- TSQ ------------------------------------------------------------------------------------------
def _patches(layer, x):
    """Rows of the layer's input, one per output position: (N * positions, fan_in)."""
    if layer.kind == "conv2d":
        cols = F.unfold(x, layer.kernel, padding=layer.padding, stride=layer.stride)  # N, fan_in, L
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x


def _responses(y):
    """(N * positions, channels) from a layer output (N, O, H, W) or (N, O)."""
    return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]) if y.dim() == 4 else y


@torch.no_grad()
def tsq_fit_layer(x, y, w_init, bits, *, iters=20, lam=0.01, relu=True):
    """TSQ step 2 for one layer: ``min_{α, ŵ, c} ||y - φ(z)||² + λ ||z - (α X ŵ + c)||²``, ŵ on the
    symmetric ``bits`` grid, one (α, c) per output channel, φ = ReLU.

    Alternates the closed-form z-step, a least-squares (α, c) step, and coordinate descent on ŵ.
    ``x``: (M, K) inputs, ``y``: (M, O) targets, ``w_init``: (O, K) float weights. Returns (codes, α, c).
    """
    lo, hi = weight_codes(bits, "int", symmetric=True)
    x = x.double()
    y = y.double()
    w0 = w_init.double()
    alpha = torch.stack([torch.tensor(mmse_step(w, bits, signed=True), dtype=torch.float64) for w in w0])
    codes = torch.clamp(torch.round(w0 / alpha[:, None]), lo, hi)
    if bits == 1:
        codes = torch.where(w0 >= 0, 1.0, -1.0).double()
    c = torch.zeros(len(w0), dtype=torch.float64)
    gram = x.T @ x  # K, K
    diag = gram.diagonal().clamp_min(1e-12)
    allowed = torch.tensor([-1.0, 1.0] if bits == 1 else list(range(lo, hi + 1)), dtype=torch.float64)
    for _ in range(iters):
        v = x @ (codes * alpha[:, None]).T + c  # M, O
        if relu:  # z-step: the better of the z >= 0 and z < 0 branches, elementwise
            zp = torch.clamp((y + lam * v) / (1 + lam), min=0)
            zn = torch.clamp(v, max=0)
            cost_p = (y - zp) ** 2 + lam * (zp - v) ** 2
            cost_n = y**2 + lam * (zn - v) ** 2
            z = torch.where(cost_p <= cost_n, zp, zn)
        else:
            z = y
        # (α, c)-step: per channel, least squares of z on [X ŵ, 1].
        p = x @ codes.T  # M, O
        pm, zm = p.mean(0), z.mean(0)
        var = ((p - pm) ** 2).mean(0).clamp_min(1e-12)
        alpha = (((p - pm) * (z - zm)).mean(0) / var).clamp_min(1e-8)
        c = zm - alpha * pm
        # ŵ-step: coordinate descent on ||(z - c)/α - X ŵ||², one input coordinate at a time for all
        # channels; each coordinate takes the grid value nearest its least-squares optimum.
        h = x.T @ ((z - c) / alpha)  # K, O
        for _sweep in range(2):
            gw = gram @ codes.T  # K, O
            for j in range(x.shape[1]):
                rest = gw[j] - gram[j, j] * codes[:, j]
                target = (h[j] - rest) / diag[j]
                new = allowed[torch.argmin((target[:, None] - allowed[None, :]).abs(), dim=1)]
                gw += gram[:, j:j + 1] * (new - codes[:, j])[None, :]
                codes[:, j] = new
    return codes, alpha, c


def tsq(model, fitter, cfg, tick):
    layers = model.qlayers
    # Step 1: code learning. Float weights, sparse quantized activations.
    model.calibrate(fitter.x)
    model.quantized = True
    for layer in layers:
        layer.float_weight = True
    step1 = max(cfg.epochs_qat // 2, 1)
    fitter.fit(model, step1, cfg.lr_qat, tick=tick)
    model.eval()
    x_all = fitter.x[: cfg.tsq_samples]
    with torch.no_grad():
        _, seen_fp = model(x_all, collect=True)
    targets = {id(n): out for n, (_, out) in zip(model.nodes, seen_fp, strict=True)}
    # Step 2: weights, layer by layer, on the codes of the already quantized layers.
    for layer in layers[:-1]:
        with torch.no_grad():
            _, seen = model(x_all, collect=True)
        x_in = dict(zip([id(n) for n in model.nodes], [s[0] for s in seen], strict=True))[id(layer)]
        y = _pre_quant_target(layer, x_in, targets[id(layer)])
        codes, alpha, c = tsq_fit_layer(_patches(layer, x_in), y, _folded_weight(layer), layer.wq.bits,
                                        iters=cfg.tsq_iters, relu=layer.relu_in_float)
        with torch.no_grad():
            layer.bn = None
            layer.weight.copy_((codes * alpha[:, None]).reshape(layer.weight.shape).float())
            layer.bias.copy_(c.float())
            layer.wq = FixedStepWeight(layer.wq.bits, alpha.float())
            layer.float_weight = False
    model.config.bn = False
    last = layers[-1]
    last.wq.init(last.weight)
    last.float_weight = False
    # Optional end-to-end fine-tune (weights stay on their grids, the STE moves the float shadows).
    fitter.fit(model, cfg.epochs_qat - step1, cfg.lr_qat * 0.2, tick=tick)
    return {}


def _folded_weight(layer):
    w = layer.weight.detach()
    if layer.bn is not None:
        m, _ = layer.bn_affine()
        w = w * per_channel(m, w.dim(), 0)
    return w.reshape(len(w), -1)


@torch.no_grad()
def _pre_quant_target(layer, x_in, out_step1):
    """The step-1 network's layer response before its activation quantizer (ReLU applied)."""
    z = layer._op(x_in, layer.weight, layer.bias)
    if layer.bn is not None:
        z = layer.bn_eval(z)
    if layer.relu_in_float:
        z = F.relu(z)
    return _responses(z)


# --- neuron-by-neuron -----------------------------------------------------------------------------
def nbn(model, fitter, cfg, tick):
    """Neuron-by-neuron QAT (Sher et al., 2023) and its ``direct`` and ``layer`` baselines.

    BN is folded into the weights first; activation steps come from MMSE on histograms; each layer's
    weight step from MMSE on its float weights when the layer's quantization starts. Quantized neurons
    are frozen; the float rest is fine-tuned with gradients through the quantizers (STE). All three
    variants get the same total number of fine-tuning steps.
    """
    layers = model.qlayers
    for layer in layers:
        layer.fold_bn()
    model.config.bn = False
    model.calibrate(fitter.x)
    model.quantized = True
    total = cfg.epochs_qat * fitter.steps_per_epoch
    variant = cfg.nbn_variant
    if variant == "direct":
        for layer in layers:
            _set_weight_step(layer)
        fitter.fit(model, 0, cfg.lr_qat, steps=total, tick=tick)
        return {"nbn": {"variant": variant, "stages": 1}}
    for layer in layers:
        layer.partial = True
    if variant == "layer":
        stages = [(layer, torch.ones(layer.weight.shape[0], dtype=torch.bool)) for layer in layers]
    else:
        stages = []
        for layer in layers:
            n = layer.weight.shape[0]
            groups = torch.tensor_split(torch.arange(n), min(cfg.nbn_groups, n))
            for g in groups:
                m = torch.zeros(n, dtype=torch.bool)
                m[g] = True
                stages.append((layer, m))
    per_stage = max(total // len(stages), 1)
    started = set()
    snapshots = {}
    for k, (layer, mask) in enumerate(stages):
        if id(layer) not in started:
            _set_weight_step(layer)
            started.add(id(layer))
        layer.freeze_mask |= mask
        snapshots[id(layer)] = (layer, layer.weight.detach().clone(), layer.bias.detach().clone())

        def restore():
            with torch.no_grad():
                for la, w, b in snapshots.values():
                    keep = la.freeze_mask
                    la.weight[keep] = w[keep]
                    la.bias[keep] = b[keep]

        steps = per_stage if k < len(stages) - 1 else total - per_stage * (len(stages) - 1)
        if k < len(stages) - 1:  # after the last neuron there is nothing float left to tune
            fitter.fit(model, 0, cfg.lr_qat, steps=steps, after_step=restore, tick=tick)
    for layer in layers:
        layer.partial = False
    return {"nbn": {"variant": variant, "stages": len(stages)}}


@torch.no_grad()
def _set_weight_step(layer):
    step = mmse_step(layer.weight, layer.wq.bits, signed=True)
    layer.wq.step.fill_(step)


def run_method(method, model, fitter, cfg, tick):
    """Quantize a float-pretrained model with ``method``; return method-specific information."""
    if method in ("lsq", "uniq", "dorefa", "pact", "xnor"):
        return qat(model, fitter, cfg, tick)
    return {"sinareq": sinareq, "tsq": tsq, "nbn": nbn}[method](model, fitter, cfg, tick)

