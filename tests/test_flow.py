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


@pytest.mark.synth
def test_report_html_renders_in_headless_chromium_with_its_figures(tmp_path):
    """A small flow with synthesis and place and route: report.html has at least five figures, refers to
    nothing on the network (every image is inline), shows the measured Fmax, and renders in Chromium."""
    import shutil
    import subprocess
    from html.parser import HTMLParser

    if shutil.which("yosys") is None:
        pytest.skip("yosys is not installed (make installs it as root; else: sudo apt-get install -y yosys)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (`make test-all` installs it as root; else: sudo apt-get install -y chromium)")
    from hwq.cli import main

    out = tmp_path / "flow"
    assert main(["flow", "--epochs-float", "2", "--epochs-qat", "1", "--samples", "20", "--synth", "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    report = json.loads((out / "report.json").read_text())

    class Refs(HTMLParser):
        def __init__(self):
            super().__init__()
            self.urls, self.figures = [], 0

        def handle_starttag(self, tag, attrs):
            self.figures += tag == "figure"
            self.urls += [v for k, v in attrs if k in ("src", "href", "srcset", "data", "action") and v]

    refs = Refs()
    refs.feed(page)
    assert refs.figures >= 5
    assert all(u.startswith("data:") or u.startswith("#") for u in refs.urls), refs.urls
    assert "url(" not in page and "@import" not in page
    fmax = report["totals"]["fmax_mhz"]
    assert fmax and f"measured Fmax of {fmax} MHz" in page
    shot = tmp_path / "report.png"
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1300,2600",
                           f"--screenshot={shot}", (out / "report.html").as_uri()], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and shot.stat().st_size > 50_000, proc.stderr[-2000:]


def test_a_second_flow_on_another_board_reuses_the_training(report):
    """Training does not depend on the board: re-running with only the board changed reuses the run (its
    key says it was trained by this hwq with the same options); changed options train again."""
    out, first = report
    logs = []
    again = run_flow(out, board=load_board("xc7a35t"), train_cfg=TrainConfig(epochs_float=8, epochs_qat=8),
                     samples=120, log=logs.append, show_progress=False)
    assert any(m.startswith(f"reusing {out / 'run'}") for m in logs), logs
    assert any(m.startswith(f"reusing {out / 'ir'}") for m in logs), logs  # and the export, with its checks
    assert again["board"] == "xc7a35t"
    assert all(again["accuracy"][k] == first["accuracy"][k] for k in ("float", "fake_quant", "golden"))
    assert again["bit_exact"]["golden_vs_torch_integer"] and again["bit_exact"]["fake_quant_prediction_mismatches"] \
        == first["bit_exact"]["fake_quant_prediction_mismatches"]
    assert again["timings_s"]["train"] < 1.0 and again["bit_exact"]["rtl_vs_golden"]
    # an IR that is not the one recorded (changed since it was exported) is exported and checked again
    record = json.loads((out / "export-check.json").read_text())
    (out / "export-check.json").write_text(json.dumps({**record, "ir_sha256": "0" * 64}))
    logs.clear()
    run_flow(out, board=load_board("xc7a35t"), train_cfg=TrainConfig(epochs_float=8, epochs_qat=8), samples=20,
             log=logs.append, show_progress=False)
    assert any(m.startswith(f"reusing {out / 'run'}") for m in logs) and not any(f"reusing {out / 'ir'}" in m
                                                                                  for m in logs), logs
    assert json.loads((out / "export-check.json").read_text()) == record
    logs.clear()
    run_flow(out, board=load_board("ice40-up5k"), train_cfg=TrainConfig(epochs_float=8, epochs_qat=7),
             samples=20, log=logs.append, show_progress=False)
    assert not any(m.startswith("reusing") for m in logs)
