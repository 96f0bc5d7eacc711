"""The IR as a QONNX model (``IR/model.onnx``), the interchange format of FINN and Brevitas.

The graph computes exactly the golden model's integers, in float32 tensors that hold integers:

- input: codes (see docs/formats.md, "Input conventions"), through a ``Quant`` (unsigned codes:
  scale 1, zero point 0) or ``BipolarQuant`` node that states their format;
- weights: integer codes as initializers, through ``Quant`` (int grid: scale 1, zero point 0,
  ``narrow`` for a symmetric grid; odd grid: scale 2, zero point -0.5, so a b-bit signed integer q
  stands for the odd weight 2q + 1) or ``BipolarQuant`` (1-bit);
- ``linear`` -> ``MatMul``, ``conv2d`` -> ``Conv``, ``maxpool`` -> ``MaxPool``, ``flatten`` ->
  ``Flatten``, ``add`` -> ``Add``, ``avgpool`` -> a depthwise ``Conv`` with weights of 1 (the window
  sums, exact; ``AveragePool``'s float mean is not); every accumulator is an exact integer in float32 because the
  proven ``acc_bits`` is at most 25 (checked: a wider layer is refused);
- requantization -> ``MultiThreshold`` (count of thresholds reached, times the output step, plus the
  lowest code), preceded by a per-channel ``Mul`` by -1/+1 when some channel is decreasing. A
  multiply-shift layer is written as its thresholds (:func:`hwq.ir.requant_thresholds`, the same
  integer function over the proven accumulator range): 2^b - 1 per channel for b output bits, so a layer
  with 16-bit outputs holds 65,535 float32 thresholds per channel;
- logits: ``Add`` of the integer bias.

The tests execute this file with the ``qonnx`` package's own executor and compare every logit with
the golden model.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import UserError
from .intrange import act_levels, is_bipolar, weight_codes
from .ir import requant_thresholds

__all__ = ["FLOAT32_EXACT_ACC_BITS", "QONNX_DOMAIN", "run_qonnx", "to_qonnx", "write_qonnx"]

QONNX_DOMAIN = "qonnx.custom_op.general"
OPSET = 13
FLOAT32_EXACT_ACC_BITS = 25  # |acc| <= 2**24: every integer exact in float32


def _datatype(bits, signed):
    if is_bipolar(bits, signed):
        return "BIPOLAR"
    return f"{'INT' if signed else 'UINT'}{bits}"


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self.dtypes = [], [], {}

    def const(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def node(self, op, inputs, output, domain="", **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attrs))
        return output

    def quant(self, x, out, bits, signed, *, scale=1.0, zeropt=0.0, narrow=False):
        """A QONNX ``Quant`` (or ``BipolarQuant`` for signed 1-bit): identity on valid codes."""
        s = self.const(f"{out}.scale", scale)
        if is_bipolar(bits, signed):
            return self.node("BipolarQuant", [x, s], out, domain=QONNX_DOMAIN)
        z, b = self.const(f"{out}.zeropt", zeropt), self.const(f"{out}.bits", bits)
        return self.node("Quant", [x, s, z, b], out, domain=QONNX_DOMAIN, signed=int(signed), narrow=int(narrow),
                         rounding_mode="ROUND")


def _weights(g, ir, layer):
    w = ir.tensors[layer.weights].astype(np.int64)
    if layer.op == "linear":
        w = w.T  # MatMul: (in, out)
    name = f"{layer.name}.weight"
    if layer.w_bits == 1:
        return g.quant(g.const(f"{name}.codes", w), name, 1, True)
    if layer.w_grid == "odd":  # odd weight 2q + 1 for a b-bit signed q
        return g.quant(g.const(f"{name}.codes", w), name, layer.w_bits, True, scale=2.0, zeropt=-0.5)
    lo, hi = weight_codes(layer.w_bits, layer.w_grid)
    return g.quant(g.const(f"{name}.codes", w), name, layer.w_bits, True, narrow=lo == -hi)


def _requant(g, ir, layer, acc, layout):
    if layer.requant_kind == "bias":
        return g.node("Add", [acc, g.const(f"{layer.name}.bias", ir.tensors[layer.bias])], layer.name)
    thresholds, signs = requant_thresholds(ir, layer)
    if (signs < 0).any():
        shape = (1, -1, 1, 1) if layout == "NCHW" else (1, -1)
        acc = g.node("Mul", [acc, g.const(f"{layer.name}.signs", signs.reshape(shape))], f"{layer.name}.signed_acc")
    lo, step, _ = act_levels(layer.out_bits, layer.out_signed)
    out = g.node("MultiThreshold", [acc, g.const(f"{layer.name}.thresholds", thresholds)], layer.name,
                 domain=QONNX_DOMAIN, out_dtype=_datatype(layer.out_bits, layer.out_signed), out_scale=float(step),
                 out_bias=float(lo), data_layout=layout)
    g.dtypes[out] = _datatype(layer.out_bits, layer.out_signed)
    return out


def to_qonnx(ir, *, batch=1):
    """The QONNX ``onnx.ModelProto`` of an IR, for ``batch`` samples."""
    for layer in ir.layers:
        if layer.acc_bits is not None and layer.acc_bits > FLOAT32_EXACT_ACC_BITS:
            raise UserError(f"layer '{layer.name}': acc_bits {layer.acc_bits} > {FLOAT32_EXACT_ACC_BITS}: its "
                            "accumulators are not exact in the float32 tensors of ONNX; QONNX export refused")
    g = _Graph()
    g.dtypes["input"] = _datatype(ir.input_bits, ir.input_signed)
    produced = {"input": g.quant("input", "input_codes", ir.input_bits, ir.input_signed)}
    for layer, names in ir.wired():
        x = produced[names[0]]
        layout = "NCHW" if len(layer.in_shape) == 3 else "NC"
        if layer.op == "linear":
            out = _requant(g, ir, layer, g.node("MatMul", [x, _weights(g, ir, layer)], f"{layer.name}.acc"), layout)
        elif layer.op == "conv2d":
            (ph, pw) = layer.padding_hw
            acc = g.node("Conv", [x, _weights(g, ir, layer)], f"{layer.name}.acc", kernel_shape=list(layer.kernel_hw),
                         strides=[layer.stride] * 2, pads=[ph, pw, ph, pw])
            out = _requant(g, ir, layer, acc, layout)
        elif layer.op == "add":
            out = _requant(g, ir, layer, g.node("Add", [x, produced[names[1]]], f"{layer.name}.acc"), layout)
        elif layer.op == "maxpool":
            out = g.node("MaxPool", [x], layer.name, kernel_shape=[layer.kernel] * 2, strides=[layer.stride] * 2)
        elif layer.op == "avgpool":
            c, k = layer.channels, layer.kernel
            ones = g.const(f"{layer.name}.ones", np.ones((c, 1, k, k), np.float32))
            acc = g.node("Conv", [x, ones], f"{layer.name}.acc", kernel_shape=[k, k], strides=[layer.stride] * 2,
                         group=c)
            out = _requant(g, ir, layer, acc, layout)
        else:  # flatten: C, H, W order, as the golden model
            out = g.node("Flatten", [x], layer.name, axis=1)
        produced[layer.name] = out
    g.node("Identity", [produced[ir.layers[-1].name]], "logits")
    graph = helper.make_graph(
        g.nodes, f"hwq-{ir.model}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, *ir.input_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, ir.layers[-1].out_features])],
        initializer=g.inits)
    model = helper.make_model(graph, producer_name="hwq", opset_imports=[
        helper.make_opsetid("", OPSET), helper.make_opsetid(QONNX_DOMAIN, 1)])
    for tensor, dtype in g.dtypes.items():
        ann = onnx.StringStringEntryProto(key="finn_datatype", value=dtype)
        model.graph.quantization_annotation.append(
            onnx.TensorAnnotation(tensor_name=tensor, quant_parameter_tensor_names=[ann]))
    # qonnx's shape inference knows its own ops (Quant, MultiThreshold), so the file carries every
    # tensor's shape and runs in qonnx's execute_onnx as written
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    model = ModelWrapper(model).transform(InferShapes()).model
    onnx.checker.check_model(model)
    return model


def write_qonnx(ir, path, *, batch=1):
    """Write ``to_qonnx(ir)`` to ``path`` (callers write into a temporary directory, then rename)."""
    onnx.save(to_qonnx(ir, batch=batch), str(path))


def run_qonnx(path, codes, input_shape):
    """Execute a QONNX file with the ``qonnx`` package's own executor (node by node: onnxruntime for
    standard ops, qonnx's numpy code for Quant/BipolarQuant/MultiThreshold) on all samples at once;
    return the logits as int64 (they are integers held in float32; a non-integer is an error)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes

    x = np.asarray(codes).reshape(-1, *input_shape).astype(np.float32)
    model = ModelWrapper(str(path)).transform(ChangeBatchSize(len(x))).transform(InferShapes())
    out = execute_onnx(model, {"input": x})["logits"]
    if not (out == np.round(out)).all():
        raise ValueError(f"{path}: QONNX logits are not integers")
    return out.astype(np.int64)
