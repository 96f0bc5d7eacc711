"""hwq: quantization-aware training, integer export and a bit-exact golden model.

The stages are ``hwq.train`` (QAT), ``hwq.export`` (integers -> IR), ``hwq.golden`` (integer reference),
with ``rtl_gen`` (Amaranth generators), ``sim`` (Verilator + cocotb) and ``boards`` beside this package.
"""

__version__ = "0.1.0"
