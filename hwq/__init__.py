"""hwq: quantization-aware training, integer export and a bit-exact golden model.

The stages are ``hwq.train`` (QAT), ``hwq.export`` (integers -> IR), ``hwq.golden`` (integer reference),
with ``rtl_gen`` (Amaranth generators), ``sim`` (Verilator + cocotb) and ``boards`` beside this package.
The Python API (``hwq.Design.train``, ``hwq.load``, ``hwq.import_qonnx``, ``hwq.Design.from_model`` and the
:class:`hwq.api.Design` they return) is in :mod:`hwq.api`; docs/api.md shows it.
"""

__version__ = "0.1.0"

__all__ = ["Design", "import_qonnx", "load"]


def __getattr__(name):
    """The Python API (:mod:`hwq.api`), imported on first use so that ``import hwq`` stays light."""
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'hwq' has no attribute {name!r}")
