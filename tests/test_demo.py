"""The demo exactly as `make demo` runs it (default flags), checked against the issue's must-show list."""

import json

import pytest

from hwq.cli import main


@pytest.mark.slow
def test_default_flow_meets_the_demo_contract(tmp_path):
    assert main(["flow", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "report.json").read_text())
    assert r["bit_exact"]["rtl_vs_golden"] is True and r["bit_exact"]["samples"] >= 100
    assert r["bit_exact"]["golden_vs_torch_integer"] is True
    assert r["accuracy"]["rtl"] == r["accuracy"]["golden"]
    assert all(la["estimate"]["cycles"] == la["sim"]["cycles"] for la in r["layers"])
    assert r["accuracy"]["golden"] >= 0.9  # W2/A2 digits MLP; 0.95 with the default seed
