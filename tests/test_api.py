"""docs/api.md's examples, run as written: every ```python block, in order, in one namespace, in an empty folder."""

import re
from pathlib import Path

import hwq

API_DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def test_api_doc_examples_run(tmp_path, monkeypatch):
    import importlib

    for stage in ("hwq.export", "hwq.train"):  # imported, as in any session that used them: no name clash
        importlib.import_module(stage)

    blocks = re.findall(r"```python\n(.*?)```", API_DOC.read_text(), re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for k, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md block {k + 1}", "exec"), namespace)
    d = namespace["d"]
    assert isinstance(d, hwq.Design) and d.report()["sim"]["bit_exact"]
    assert (tmp_path / "out" / "rtl" / "rtl.json").is_file() and (tmp_path / "out" / "imported" / "import.json").is_file()


def test_import_hwq_is_light():
    """`import hwq` does not import torch or Amaranth (the API loads them on first use)."""
    import subprocess
    import sys

    code = "import sys, hwq; print('torch' in sys.modules, 'amaranth' in sys.modules, callable(hwq.load))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True"]
