"""The whole flow, end to end, against the report.json contract."""

import json

import pytest

from boards import load_board
from hwq.flow import run_flow
from hwq.train import TrainConfig


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow")
    run_flow(out, board=load_board("ice40-up5k"), train_cfg=TrainConfig(epochs_float=8, epochs_qat=8),
             samples=120, log=lambda m: None, show_progress=False)
    return out, json.loads((out / "report.json").read_text())


def test_report_contract(report):
    out, r = report
    assert r["format"] == "hwq-report/1"
    assert (r["board"], r["model"], r["dataset"], r["method"]) == ("ice40-up5k", "mlp", "digits", "lsq")
    assert r["bit_exact"]["rtl_vs_golden"] is True
    assert r["bit_exact"]["golden_vs_torch_integer"] is True
    assert r["bit_exact"]["samples"] == r["accuracy"]["rtl_samples"] == 120
    assert r["accuracy"]["rtl"] == r["accuracy"]["golden_on_rtl_samples"]
    for layer in r["layers"]:
        assert layer["estimate"]["cycles"] == layer["sim"]["cycles"]
        assert layer["synth"] is None
    assert r["totals"]["synth"] is None and r["totals"]["fmax_mhz"] is None
    assert r["totals"]["latency_cycles_sim"] == r["totals"]["latency_cycles_estimate"]
    for name in ("run/checkpoint.pt", "run/metrics.json", "ir/manifest.yaml", "ir/tensors.npz", "rtl/top.v",
                 "rtl/rtl.json", "sim.json", "estimate.json", "report.html"):
        assert (out / name).is_file(), name


def test_report_html_shows_the_verdict(report):
    out, _ = report
    page = (out / "report.html").read_text()
    assert "bit-exact" in page and "<table>" in page
