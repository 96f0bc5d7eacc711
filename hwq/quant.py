"""Quantizers: one interface for every method's weight and activation grids. See docs/methods.md.

A quantizer maps a float tensor to integer *codes* (float tensors holding integers) and a *scale*, the
real value of one code step: ``forward(x) == codes(x) * scale``. Training multiplies them (fake-quant);
export takes ``codes`` as the integers and folds ``scale`` into the next requantization. The same
``codes`` function serves training, the PyTorch integer path and export, so the fake-quant grid and the
exported integers are one thing. Rounding is ``torch.round`` (half to even) everywhere.

Forward values are exact (custom autograd functions, never ``x + (q - x).detach()``); the backward pass
is the straight-through estimator (STE) with the clipping each method specifies.

Weight grids (``grid``):

- ``"int"``: two's complement codes ``-2^(b-1) .. 2^(b-1)-1`` (LSQ), or the symmetric subset without the
  most negative code (``symmetric=True``: NbN, TSQ; 2 bits is ternary); 1 bit is binary {-1, +1}.
- ``"odd"``: mid-rise levels, odd codes ``-(2^b-1), ..., -1, +1, ..., 2^b-1`` with ``scale = step/2``
  (UniQ, DoReFa, SINAREQ's fine-tune); 1 bit is again {-1, +1}. Stored in ``b+1`` bits for ``b >= 2``.

Activation codes are unsigned ``0 .. 2^b-1`` after ReLU, signed (the scale-aligned residual branch), or
bipolar {-1, +1} (``SignAct``, BNN/XNOR-Net): see :func:`hwq.intrange.act_levels`.
"""

import math

import torch
from torch import nn

from .intrange import act_levels, check_bits, max_int, weight_codes

__all__ = [
    "AlignedQuant",
    "DoReFaAct",
    "DoReFaWeight",
    "FixedStepAct",
    "FixedStepWeight",
    "LSQAct",
    "LSQWeight",
    "PACTAct",
    "SignAct",
    "SparseAct",
    "UniQAct",
    "UniQWeight",
    "XNORWeight",
    "mmse_step",
    "per_channel",
    "round_ste",
]


# --- differentiable building blocks -------------------------------------------------------------
class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _SignSTE(torch.autograd.Function):
    """sign with 0 -> +1; backward passes the gradient where |x| <= 1 (BNN's hard-tanh STE)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class _GradScale(torch.autograd.Function):
    """Identity forward (bit for bit), gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def round_ste(x):
    """``torch.round`` forward, identity backward."""
    return _RoundSTE.apply(x)


def sign_ste(x):
    return _SignSTE.apply(x)


def grad_scale(x, g):
    return _GradScale.apply(x, g)


def uniform_codes(x, step, lo, hi):
    """``round(clamp(x / step, lo, hi))``: gradient straight through inside, blocked outside."""
    return round_ste(torch.clamp(x / step, lo, hi))


def odd_codes(x, step, bits):
    """Mid-rise odd codes ``2k - (2^b-1)`` with ``k = round(clamp(x/step + c, 0, 2^b-1))``, ``c = (2^b-1)/2``."""
    top = (1 << bits) - 1
    return 2 * round_ste(torch.clamp(x / step + top / 2, 0, top)) - top


def per_channel(t, ndim, cdim=1):
    """Reshape a per-channel vector (or a scalar) to broadcast along dimension ``cdim`` of ``ndim``
    (weights: ``cdim=0``, activations: 1)."""
    t = torch.as_tensor(t)
    if t.dim() == 0:
        return t
    shape = [1] * ndim
    shape[cdim] = -1
    return t.reshape(shape)


# --- weight quantizers ----------------------------------------------------------------------------
class WeightQuantizer(nn.Module):
    """Base: ``quantize(w) -> (codes, scale)``; ``scale`` is a scalar or one value per output channel."""

    grid = "int"
    symmetric = False
    per_channel = False

    def __init__(self, bits):
        super().__init__()
        self.bits = check_bits(bits, name="w_bits")

    @property
    def binary(self):
        return self.bits == 1

    def code_range(self):
        return weight_codes(self.bits, self.grid, symmetric=self.symmetric)

    def init(self, w):
        """Data-based initialisation from the float weights (default: nothing to initialise)."""

    def quantize(self, w):
        raise NotImplementedError

    def forward(self, w):
        codes, scale = self.quantize(w)
        return codes * per_channel(scale, w.dim(), 0)

    @torch.no_grad()
    def integer(self, w):
        """(int64 codes, float32 scale) as export writes them."""
        codes, scale = self.quantize(w)
        if not (bool(torch.isfinite(codes).all()) and bool(torch.isfinite(scale).all())):
            raise ValueError(f"{type(self).__name__}: weights or step are not finite; cannot export")
        return codes.to(torch.int64), scale.detach().to(torch.float32)


class LSQWeight(WeightQuantizer):
    """LSQ (Esser et al., 2020): learned step s, codes ``round(clamp(w/s, -2^(b-1), 2^(b-1)-1))``.

    Init ``s = 2 E|w| / sqrt(Qp)``; gradient of s scaled by ``1/sqrt(N Qp)``. 1 bit: ``sign(w)``, init
    ``s = E|w|``.
    """

    def __init__(self, bits):
        super().__init__(bits)
        self.step = nn.Parameter(torch.tensor(1.0))

    @torch.no_grad()
    def init(self, w):
        mean_abs = w.abs().mean().clamp_min(1e-8)
        qp = max(max_int(self.bits, True), 1)
        self.step.copy_(mean_abs if self.binary else 2 * mean_abs / math.sqrt(qp))

    def quantize(self, w):
        qp = max(max_int(self.bits, True), 1)
        # |s|: the fake-quant weight is the same for s and -s, but the exported integer weights and the
        # integer logits assume a positive scale (Adam moves a small 8-bit step across zero easily).
        s = grad_scale(self.step, 1.0 / math.sqrt(w.numel() * qp)).abs().clamp_min(1e-12)
        if self.binary:
            return sign_ste(torch.clamp(w / s, -1.0, 1.0)), s
        lo, hi = self.code_range()
        return uniform_codes(w, s, lo, hi), s


# UniQ's MSE-optimal steps for a unit Gaussian (weights) and a unit half-Gaussian (activations), b = 1..8.
UNIQ_DELTA_NORMAL = (1.5958, 0.99569, 0.58602, 0.33520, 0.18814, 0.10406, 0.056868, 0.030762)
UNIQ_DELTA_HALF_NORMAL = (1.22399, 0.65077, 0.35341, 0.19325, 0.10549, 0.057266, 0.030871, 0.016529)


class UniQWeight(WeightQuantizer):
    """UniQ (Pham et al., 2021): symmetric mid-rise quantizer with learned step Δ; binary is b = 1.

    ``Q(w) = Δ (k - c)``, ``k = round(clamp(w/Δ + c, 0, 2^b-1))``, ``c = (2^b-1)/2``: codes are the odd
    integers ``2k - (2^b-1)`` at scale ``Δ/2``. Init ``Δ = std(w) * UNIQ_DELTA_NORMAL[b]``; gradient of Δ
    scaled by ``1/sqrt(N Qp)``, ``Qp = max(2^(b-1)-1, 1)``.
    """

    grid = "odd"

    def __init__(self, bits):
        super().__init__(bits)
        self.delta = nn.Parameter(torch.tensor(1.0))

    @torch.no_grad()
    def init(self, w):
        std = w.std() if w.numel() > 1 else w.abs().reshape(())  # one weight: no spread to measure
        self.delta.copy_((std * UNIQ_DELTA_NORMAL[self.bits - 1]).clamp_min(1e-8))

    def quantize(self, w):
        qp = max(max_int(self.bits, True), 1)
        d = grad_scale(self.delta, 1.0 / math.sqrt(w.numel() * qp)).abs().clamp_min(1e-12)  # see LSQWeight
        return odd_codes(w, d, self.bits), d / 2


class DoReFaWeight(WeightQuantizer):
    """DoReFa-Net (Zhou et al., 2016): ``w_q = 2 quantize_b(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1``.

    The levels are the odd codes at scale ``1/(2^b-1)``. 1 bit: ``sign(w) * E|w|`` (E|w| not
    differentiated). No learned parameters.
    """

    grid = "odd"

    def quantize(self, w):
        if self.binary:
            return sign_ste(torch.clamp(w / w.detach().abs().max().clamp_min(1e-8), -1, 1)), \
                w.detach().abs().mean()
        t = torch.tanh(w)
        t = t / (2 * t.detach().abs().max().clamp_min(1e-8)) + 0.5  # in [0, 1]
        top = (1 << self.bits) - 1
        codes = 2 * round_ste(torch.clamp(t * top, 0, top)) - top
        return codes, torch.tensor(1.0 / top)


class XNORWeight(WeightQuantizer):
    """XNOR-Net (Rastegari et al., 2016): ``sign(w)`` with one scale ``E|w|`` per output channel.

    ``per_channel=False`` uses one scale per tensor (the logits layer: a per-channel scale would change
    which logit is largest). Binary only.
    """

    def __init__(self, bits=1, per_channel=True):
        super().__init__(bits)
        if bits != 1:
            raise ValueError("XNOR-Net weights are binary (1 bit)")
        self.per_channel = per_channel

    def quantize(self, w):
        dims = tuple(range(1, w.dim())) if self.per_channel else tuple(range(w.dim()))
        alpha = w.detach().abs().mean(dim=dims)
        norm = w.detach().abs().amax(dim=dims).clamp_min(1e-8)
        return sign_ste(torch.clamp(w / per_channel(norm, w.dim(), 0), -1, 1)), alpha


class FixedStepWeight(WeightQuantizer):
    """Symmetric uniform codes at a fixed (not learned) step, per tensor or per output channel.

    Used by neuron-by-neuron QAT (step chosen by MMSE) and TSQ (step = the least-squares scale α).
    """

    symmetric = True

    def __init__(self, bits, step):
        super().__init__(bits)
        step = torch.as_tensor(step, dtype=torch.float32)
        self.per_channel = step.dim() == 1
        self.register_buffer("step", step.clone())

    def quantize(self, w):
        s = per_channel(self.step, w.dim(), 0)
        if self.binary:
            return sign_ste(torch.clamp(w / s, -1, 1)), self.step
        lo, hi = self.code_range()
        return uniform_codes(w, s, lo, hi), self.step


# --- activation quantizers ------------------------------------------------------------------------
class ActQuantizer(nn.Module):
    """Base: ``codes(x)`` on the levels of :func:`act_levels`; ``scale`` the value of one code step."""

    signed = False

    def __init__(self, bits):
        super().__init__()
        self.bits = check_bits(bits, name="a_bits")

    @property
    def top(self):
        return (1 << self.bits) - 1

    def init(self, x):
        """Data-based initialisation from a batch of float (post-ReLU) activations."""

    def init_done(self):
        """Called after the last calibration batch."""

    @property
    def scale(self):
        raise NotImplementedError

    def codes(self, x):
        raise NotImplementedError

    def levels(self):
        return act_levels(self.bits, self.signed)

    def quant(self, x):
        """(codes, scale) with the method's gradients: ``codes * scale`` is the fake-quant value."""
        return self.codes(x), self.scale

    def forward(self, x):
        codes, scale = self.quant(x)
        return codes * scale


class LSQAct(ActQuantizer):
    """LSQ activations: learned step s, ``round(clamp(x/s, 0, 2^b-1))``, init ``2 E|x| / sqrt(Qp)``."""

    def __init__(self, bits):
        super().__init__(bits)
        self.step = nn.Parameter(torch.tensor(1.0))

    @torch.no_grad()
    def init(self, x):
        self.step.copy_((2 * x.abs().mean() / math.sqrt(self.top)).clamp_min(1e-8))

    @property
    def scale(self):
        return self.step.abs().clamp_min(1e-12)

    def _scaled_step(self, x):
        # |s| as in LSQWeight: a step that Adam moves below zero would map negative inputs to positive
        # codes and flip the monotonicity that export's thresholds rely on.
        return grad_scale(self.step, 1.0 / math.sqrt(x.numel() * self.top)).abs().clamp_min(1e-12)

    def codes(self, x):
        return uniform_codes(x, self._scaled_step(x), 0, self.top)

    def quant(self, x):
        s = self._scaled_step(x)  # the step's whole gradient is scaled, as in LSQ
        return uniform_codes(x, s, 0, self.top), s


class UniQAct(LSQAct):
    """UniQ activations: as LSQ, but Δ initialised as ``sqrt(2 mean(x^2)) * UNIQ_DELTA_HALF_NORMAL[b]``
    (the pre-ReLU std estimated from post-ReLU values), the running maximum over calibration batches;
    gradient scale ``1/sqrt(N (2^b-1))``.
    """

    def __init__(self, bits):
        super().__init__(bits)
        self._calib = 0.0

    @torch.no_grad()
    def init(self, x):
        est = float(torch.sqrt(2 * (x.float() ** 2).mean())) * UNIQ_DELTA_HALF_NORMAL[self.bits - 1]
        self._calib = max(self._calib, est)
        self.step.fill_(max(self._calib, 1e-8))


class PACTAct(ActQuantizer):
    """PACT (Choi et al., 2018): learned clip α, ``round(clamp(x, 0, α) (2^b-1)/α)``.

    Backward as in the paper: dy/dx = 1 on [0, α), dy/dα = 1 where x >= α (STE through the rounding);
    α starts at ``alpha_init`` (the paper: 10) and is L2-regularised by the trainer.
    """

    def __init__(self, bits, alpha_init=10.0):
        super().__init__(bits)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    @property
    def scale(self):
        return self._alpha() / self.top

    def _alpha(self):
        return self.alpha.abs().clamp_min(1e-8)  # a clip below zero would leave no level; see LSQAct

    def codes(self, x):
        return _PACTCodes.apply(x, self._alpha(), self.top)


def _pact_codes(x, alpha, top):
    return torch.round(torch.clamp(x / (alpha / top), 0, top))


class _PACTCodes(torch.autograd.Function):
    """PACT's codes. With ``value = codes * α/(2^b-1)``, the backward gives the paper's gradients of the
    value: 1 for x on [0, α), and for α, 1 where x >= α (STE through the rounding)."""

    @staticmethod
    def forward(ctx, x, alpha, top):
        codes = _pact_codes(x, alpha, top)
        ctx.save_for_backward(x, alpha, codes)
        ctx.top = top
        return codes

    @staticmethod
    def backward(ctx, grad):
        x, alpha, codes = ctx.saved_tensors
        inside = ((x >= 0) & (x < alpha)).to(grad.dtype)
        above = (x >= alpha).to(grad.dtype)
        # d value/d α = codes/top + (α/top) d codes/d α = above  =>  d codes/d α = (above top - codes)/α
        return grad * inside * ctx.top / alpha, (grad * (above * ctx.top - codes) / alpha).sum(), None


class DoReFaAct(ActQuantizer):
    """DoReFa activations: ``round(clamp(x, 0, 1) (2^b-1)) / (2^b-1)``; no learned parameters."""

    @property
    def scale(self):
        return torch.tensor(1.0 / self.top)

    def codes(self, x):
        return round_ste(torch.clamp(x * self.top, 0, self.top))


class FixedStepAct(ActQuantizer):
    """Unsigned codes at a fixed step (neuron-by-neuron QAT: the MMSE step from a histogram)."""

    def __init__(self, bits, step=1.0):
        super().__init__(bits)
        self.register_buffer("step", torch.tensor(float(step)))

    @property
    def scale(self):
        return self.step

    @torch.no_grad()
    def init(self, x):
        self.step.fill_(mmse_step(x, self.bits))

    def codes(self, x):
        return uniform_codes(x, self.step, 0, self.top)


class SparseAct(ActQuantizer):
    """TSQ's sparse quantization (step 1): 0 at or below ε, else ``clamp(round(x/Δ), 1, 2^b-1)``.

    Δ is the MSE-optimal step of a half-Gaussian scaled by the estimated pre-activation std (as HWGQ
    and UniQ); ε is the ``sparsity`` quantile of the positive activations, at least Δ/2. Both fixed
    after calibration. STE passes the gradient where ε < x < (2^b-1)Δ.
    """

    def __init__(self, bits, sparsity=0.3):
        super().__init__(bits)
        self.sparsity = sparsity
        self.register_buffer("step", torch.tensor(1.0))
        self.register_buffer("eps", torch.tensor(0.5))
        self._samples = []

    @property
    def scale(self):
        return self.step

    @torch.no_grad()
    def init(self, x):
        self._samples.append(x.detach().flatten().float())

    @torch.no_grad()
    def init_done(self):
        x = torch.cat(self._samples)
        self._samples = []
        self.step.fill_(max(float(torch.sqrt(2 * (x**2).mean())) * UNIQ_DELTA_HALF_NORMAL[self.bits - 1], 1e-8))
        pos = x[x > 0]
        q = float(torch.quantile(pos[:100000], self.sparsity)) if pos.numel() else 0.0
        self.eps.fill_(max(q, float(self.step) / 2))

    def codes(self, x):
        v = torch.clamp(round_ste(torch.clamp(x / self.step, 1, self.top)), 1, self.top)
        return torch.where(x > self.eps, v, torch.zeros_like(v))


class SignAct(ActQuantizer):
    """BNN / XNOR-Net activations: bipolar codes ``sign(x)`` (0 -> +1), scale 1, hard-tanh STE."""

    signed = True

    def __init__(self, bits=1):
        super().__init__(bits)
        if bits != 1:
            raise ValueError("sign activations are 1 bit")

    @property
    def scale(self):
        return torch.tensor(1.0)

    def codes(self, x):
        return sign_ste(x)


class AlignedQuant(ActQuantizer):
    """Signed codes at another quantizer's step: the residual branch, so the add is an integer add."""

    signed = True

    def __init__(self, bits, source):
        super().__init__(bits)
        self._source = [source]  # a list, so the source is not registered twice as a submodule

    @property
    def scale(self):
        return self._source[0].scale.detach()

    def codes(self, x):
        lo, _, n = act_levels(self.bits, True)
        return uniform_codes(x, self.scale, lo, lo + n - 1)


@torch.no_grad()
def mmse_step(x, bits, *, signed=False, iters=40):
    """The step minimising the quantization MSE of ``x``, by ternary search (neuron-by-neuron QAT).

    Activations (``signed=False``) are histogrammed (256 bins) as in the paper; weights use the values.
    """
    x = x.detach().flatten().float()
    if signed:
        vals, weights = x, None
        qmax = max_int(bits, True) if bits > 1 else 1
        lo_code = -qmax
    else:
        hist = torch.histc(x.clamp_min(0), bins=256, min=0, max=float(x.max().clamp_min(1e-8)))
        edges = torch.linspace(0, float(x.max().clamp_min(1e-8)), 257)
        vals, weights = (edges[:-1] + edges[1:]) / 2, hist
        qmax, lo_code = (1 << bits) - 1, 0

    def mse(step):
        if signed and bits == 1:
            q = torch.where(vals >= 0, 1.0, -1.0) * step
        else:
            q = torch.clamp(torch.round(vals / step), lo_code, qmax) * step
        err = (vals - q) ** 2
        return float((err * weights).sum() / weights.sum()) if weights is not None else float(err.mean())

    a, b = 1e-6, float(vals.abs().max().clamp_min(1e-6)) * (2.0 if bits == 1 else 1.0)
    for _ in range(iters):
        m1, m2 = a + (b - a) / 3, b - (b - a) / 3
        if mse(m1) <= mse(m2):
            b = m2
        else:
            a = m1
    return (a + b) / 2

