"""Untrusted files stay data, and outputs never destroy what a user had: each test reproduces an attack or a
fault that once worked (issue 22) and checks that it now ends in a one-line error, or recovers."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hwq.cli import main
from hwq.fileio import cache_dir, read_cache, write_cache
from hwq.ir import OUTPUT_MARKER, save_ir

from .conftest import edit_manifest, random_ir


def _one_line_error(capsys, code, *parts):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, err
    return err


def _rename_layer(ir_dir, new):
    edit_manifest(ir_dir, lambda m: m["layers"][0].update(name=new))


@pytest.mark.parametrize("name", ["../../evil", "fc 1", "fc;1", 'fc"1', "1fc", "input", "x" * 65, "fc1/../x"])
def test_layer_names_are_identifiers(tmp_path, ir_dir, capsys, name):
    """An IR layer named ``../../evil`` once made `hwq rtl` write ``evil.v`` outside --out; names with a
    space, ``;`` or a quote crashed or broke the Verilog."""
    _rename_layer(ir_dir, name)
    out = tmp_path / "a" / "b" / "rtl"
    code = main(["rtl", str(ir_dir), "--out", str(out)])
    _one_line_error(capsys, code, "manifest.yaml", "field 'name'", "a name of ASCII letters")
    assert not (tmp_path / "a").exists() and not list(tmp_path.rglob("evil*"))


def test_duplicate_layer_names_are_refused(ir_dir, tmp_path, capsys):
    def rename(m):
        m["layers"][1]["name"] = m["layers"][0]["name"]
        m["layers"][1].pop("inputs", None)
    edit_manifest(ir_dir, rename)
    code = main(["estimate", str(ir_dir)])
    _one_line_error(capsys, code, "manifest.yaml", "unique layer names")


def test_rtl_json_cannot_inject_into_yosys_or_leave_the_folder(ir_dir, tmp_path, capsys, monkeypatch):
    """Layer names from rtl.json once went into the yosys script (``setattr ... keep_hierarchy``)."""
    monkeypatch.chdir(tmp_path)
    rtl = tmp_path / "rtl"
    assert main(["rtl", str(ir_dir), "--out", str(rtl)]) == 0
    capsys.readouterr()
    info_path = rtl / "rtl.json"
    good = json.loads(info_path.read_text())
    for edit, part in [
        (lambda i: i["layers"][0].update(name="l0; exec -- touch M;"), "field 'layers'"),
        (lambda i: i.update(top="hwq_top; exec -- touch M"), "field 'top'"),
        (lambda i: i["files"].append("../../outside.v"), "field 'files'"),
        (lambda i: i["memory_files"].append("/etc/passwd"), "field 'memory_files'"),
    ]:
        info = json.loads(json.dumps(good))
        edit(info)
        info_path.write_text(json.dumps(info))
        code = main(["synth", str(rtl)])
        _one_line_error(capsys, code, "rtl.json", part)
        assert not (tmp_path / "M").exists()


def test_a_folder_hwq_did_not_write_is_not_replaced_without_force(ir_dir, tmp_path, capsys, monkeypatch):
    """`hwq rtl --out d` and `hwq export --out d` once deleted everything in d."""
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    code = main(["rtl", str(ir_dir), "--out", str(mine)])
    _one_line_error(capsys, code, "not empty and not written by hwq", "--force")
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ir", "mine"]  # no temporary folder left behind
    # an empty folder is fine, and so is replacing what hwq wrote itself
    (tmp_path / "empty").mkdir()
    assert main(["rtl", str(ir_dir), "--out", str(tmp_path / "empty")]) == 0
    assert (tmp_path / "empty" / OUTPUT_MARKER).is_file()
    assert main(["rtl", str(ir_dir), "--out", str(tmp_path / "empty")]) == 0
    # --force replaces it whole
    assert main(["rtl", str(ir_dir), "--out", str(mine), "--force"]) == 0
    assert not (mine / "thesis.tex").exists() and (mine / "top.v").is_file()


def test_out_dot_is_refused_and_leaves_nothing(ir_dir, tmp_path, capsys, monkeypatch):
    """`--out .` once crashed and left a ``..old.*`` folder."""
    work = tmp_path / "w"
    work.mkdir()
    (work / OUTPUT_MARKER).write_text("")  # even a folder hwq wrote is not replaced while it is the current one
    monkeypatch.chdir(work)
    code = main(["rtl", str(ir_dir), "--out", "."])
    _one_line_error(capsys, code, "is the current folder")
    assert sorted(p.name for p in work.iterdir()) == [OUTPUT_MARKER]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ir", "w"]


def test_an_interrupted_flow_leaves_no_report_of_an_earlier_run(tmp_path, monkeypatch):
    """A second flow killed mid-way once left the first flow's report claiming bit-exactness."""
    import hwq.flow

    out = tmp_path / "flow"
    out.mkdir()
    for name in hwq.flow.FLOW_RESULTS:
        (out / name).write_text('{"bit_exact": {"rtl_vs_golden": true}}')

    def killed(*a, **k):
        raise KeyboardInterrupt

    import hwq.train

    monkeypatch.setattr(hwq.train, "train", killed)  # the flow imports it when it trains
    from boards import load_board
    from hwq.train import TrainConfig

    with pytest.raises(KeyboardInterrupt):
        hwq.flow.run_flow(out, board=load_board("ice40-up5k"), train_cfg=TrainConfig(), log=lambda m: None,
                          show_progress=False)
    assert not any((out / name).exists() for name in hwq.flow.FLOW_RESULTS)


@pytest.mark.parametrize("damage", ["truncate", "edit", "garbage"])
def test_a_damaged_cache_entry_is_rebuilt(tmp_path, capsys, damage):
    path = tmp_path / "entry.json"
    write_cache(path, {"lut": 100, "cells": {"SB_LUT4": 100}})
    assert read_cache(path) == {"lut": 100, "cells": {"SB_LUT4": 100}}
    text = path.read_text()
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "edit":
        path.write_text(text.replace("100", "1"))  # a figure changed by hand is not trusted
    else:
        path.write_bytes(b"\xff\xfe\x00garbage")
    assert read_cache(path) is None
    assert "damaged cache entry; rebuilding it" in capsys.readouterr().err
    assert not path.exists()


def test_an_unwritable_cache_falls_back_with_a_warning(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HWQ_CACHE", str(blocker / "cache"))
    path = cache_dir("synth")
    assert path.is_dir() and not path.is_relative_to(blocker)
    assert "is not writable; using" in capsys.readouterr().err


@pytest.mark.synth
def test_a_truncated_synthesis_cache_entry_is_rebuilt(ir_dir, tmp_path, monkeypatch):
    if shutil.which("yosys") is None:
        pytest.skip("yosys is not installed (make installs it as root; else: sudo apt-get install -y yosys)")
    from boards import load_board
    from hwq.synth import synth_rtl

    monkeypatch.setenv("HWQ_CACHE", str(tmp_path / "cache"))
    assert main(["rtl", str(ir_dir), "--out", str(tmp_path / "rtl")]) == 0
    first = synth_rtl(tmp_path / "rtl", load_board("ice40-up5k"), show_progress=False)
    (entry,) = (tmp_path / "cache" / "synth").glob("*.json")
    entry.write_text(entry.read_text()[:40])
    again = synth_rtl(tmp_path / "rtl", load_board("ice40-up5k"), show_progress=False)
    assert again["total"] == first["total"] and not again["cached"]


def test_exported_onnx_runs_in_qonnx_as_written(ir_dir, tmp_path):
    """model.onnx once needed the user to run qonnx's InferShapes before execute_onnx would take it."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    from hwq import golden
    from hwq.ir import load_ir
    from hwq.qonnx_export import write_qonnx

    ir = load_ir(ir_dir)
    write_qonnx(ir, tmp_path / "model.onnx")
    x = np.random.default_rng(0).integers(0, 16, size=(1, *ir.input_shape))
    out = execute_onnx(ModelWrapper(str(tmp_path / "model.onnx")), {"input": x.astype(np.float32)})["logits"]
    assert np.array_equal(out.astype(np.int64), golden.run(ir, x.reshape(1, -1)))


def _sim_cli(ir_dir, rtl, x_path, cache):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HWQ_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "hwq", "sim", str(ir_dir), str(rtl), "--inputs", str(x_path),
                             "--out", str(rtl.parent / f"sim-{os.urandom(4).hex()}.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.fixture
def sim_design(ir_dir, tmp_path):
    rtl = tmp_path / "rtl"
    assert main(["rtl", str(ir_dir), "--out", str(rtl)]) == 0
    x = np.random.default_rng(1).integers(0, 16, size=(30, 12))
    np.save(tmp_path / "x.npy", x)
    return rtl, tmp_path / "x.npy"


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(5))
def test_two_simultaneous_sims_on_an_empty_cache_both_succeed(ir_dir, sim_design, tmp_path, trial):
    """Two `hwq sim` of one design on an empty cache once failed with "Verilator build failed" (a
    check-then-delete without a lock); builds of one key now wait for each other."""
    rtl, x = sim_design
    cache = tmp_path / f"cache{trial}"
    procs = [_sim_cli(ir_dir, rtl, x, cache) for _ in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0 and "bit-exact (30 of 30 samples)" in out, out


def test_a_truncated_simulator_binary_is_rebuilt(ir_dir, sim_design, tmp_path, capsys):
    """A truncated cached simulator once made every later `hwq sim` fail with exit -11."""
    rtl, x = sim_design
    cache = tmp_path / "cache"
    first = _sim_cli(ir_dir, rtl, x, cache)
    assert first.wait(timeout=600) == 0, first.stdout.read()
    (exe,) = cache.glob("verilator/tb*-*/obj/hwq_sim")
    exe.write_bytes(exe.read_bytes()[:4096])
    again = _sim_cli(ir_dir, rtl, x, cache)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0 and "bit-exact (30 of 30 samples)" in out, out
    assert "damaged cached simulator; rebuilding it" in out


def test_training_does_not_depend_on_the_thread_count(tmp_path):
    """`hwq train --seed 0` once gave other weights with OMP_NUM_THREADS=1 than with 2 (parallel reductions
    add in another order); training now runs on one thread unless HWQ_TRAIN_THREADS says otherwise."""
    import os
    import subprocess
    import sys

    import torch

    states = []
    for threads in ("1", "2"):
        out = tmp_path / f"t{threads}"
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        env.pop("HWQ_TRAIN_THREADS", None)
        proc = subprocess.run([sys.executable, "-m", "hwq", "train", "--seed", "0", "--epochs-float", "3",
                               "--epochs-qat", "2", "--out", str(out)], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        states.append(torch.load(out / "checkpoint.pt", weights_only=True)["state_dict"])
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_rtl_records_where_it_came_from(ir_dir, sim_design, tmp_path, capsys):
    """`hwq sim cnn/ir mlp/rtl` was once reported as an RTL mismatch, and a truncated or non-hex memory
    file passed the folder check; rtl.json now records the IR's and every file's SHA-256."""
    rtl, x = sim_design
    other = random_ir(np.random.default_rng(4), [12, 6, 4], [3, 2], [4, 2])
    save_ir(other, tmp_path / "other-ir")
    code = main(["sim", str(tmp_path / "other-ir"), str(rtl), "--inputs", str(x)])
    _one_line_error(capsys, code, "generated from another IR")
    hexfile = sorted((rtl / "mem").glob("*.hex"))[0]
    good = hexfile.read_text()
    for damage in (good[: len(good) // 2], good.replace("0", "g", 1) if "0" in good else "zz\n"):
        hexfile.write_text(damage)
        code = main(["sim", str(ir_dir), str(rtl), "--inputs", str(x)])
        _one_line_error(capsys, code, hexfile.name, "changed since `hwq rtl` wrote it")
        code = main(["synth", str(rtl)])
        _one_line_error(capsys, code, hexfile.name, "changed since `hwq rtl` wrote it")


def test_a_network_over_the_size_limit_is_refused_before_any_work(tmp_path, capsys):
    """An IR with a 4096 x 4096 linear layer: `hwq estimate` once said it fits, then `hwq rtl` ran past
    120 s and 4.9 GB. Both now refuse it at once (the IR is checked before folding or generation)."""
    from boards.calibrate import network_ir, random_layer

    rng = np.random.default_rng(0)
    l0, t0 = random_layer(rng, "l0", 4096, 4096, 1, 1, 1, in_signed=True, out_signed=True)
    l1, t1 = random_layer(rng, "l1", 4096, 10, 1, 1, None, in_signed=True)
    from dataclasses import replace

    ir = replace(network_ir([l0, l1], {**t0, **t1}, input_bits=1), input_signed=True)
    save_ir(ir, tmp_path / "ir")
    for argv in (["estimate", str(tmp_path / "ir"), "--board", "xc7a100t"],
                 ["rtl", str(tmp_path / "ir"), "--board", "xc7a100t", "--out", str(tmp_path / "rtl")]):
        code = main(argv)
        _one_line_error(capsys, code, "16,818,176 weights", "up to 4,000,000")
    assert not (tmp_path / "rtl").exists()


@pytest.mark.synth
def test_a_terminated_synthesis_leaves_no_folder_or_process_behind(tmp_path):
    """A killed `hwq synth` once left its temporary synthesis folder behind (and yosys running)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    if shutil.which("yosys") is None:
        pytest.skip("yosys is not installed (make installs it as root; else: sudo apt-get install -y yosys)")
    ir = random_ir(np.random.default_rng(2), [256, 64, 10], [4, 4], [4, 4])
    save_ir(ir, tmp_path / "ir")
    assert main(["rtl", str(tmp_path / "ir"), "--board", "xc7a35t", "--out", str(tmp_path / "rtl")]) == 0
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "HWQ_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "hwq", "synth", str(tmp_path / "rtl"), "--board", "xc7a35t"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp.glob("hwq-synth-*/src0.v")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "synthesis ended before it could be terminated"
    time.sleep(1.0)  # yosys is running now
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "hwq: terminated" in err, err
    assert not list(tmp.iterdir())

    def cwd(proc_dir):
        try:
            return os.readlink(proc_dir / "cwd")
        except OSError:  # the process ended meanwhile
            return ""
    assert not [p.name for p in Path("/proc").glob("[0-9]*") if str(tmp) in cwd(p)]  # yosys ended with hwq


@pytest.mark.synth
def test_a_temporary_folder_with_a_space_does_not_break_synthesis(ir_dir, tmp_path, monkeypatch):
    """yosys pastes $TMPDIR unquoted into ABC's command line; a TMPDIR with a space once broke `hwq synth`."""
    import tempfile

    if shutil.which("yosys") is None:
        pytest.skip("yosys is not installed (make installs it as root; else: sudo apt-get install -y yosys)")
    from boards import load_board
    from hwq.synth import synth_rtl

    odd = tmp_path / "with space;and semicolon"
    odd.mkdir()
    monkeypatch.setenv("TMPDIR", str(odd))
    monkeypatch.setattr(tempfile, "tempdir", str(odd))
    monkeypatch.setenv("HWQ_CACHE", str(tmp_path / "cache"))
    assert main(["rtl", str(ir_dir), "--out", str(tmp_path / "rtl")]) == 0
    res = synth_rtl(tmp_path / "rtl", load_board("ice40-up5k"), show_progress=False)
    assert res["total"]["lut"] > 0 and not res["cached"]


def test_outputs_are_readable_by_others_as_the_umask_allows(ir_dir, tmp_path):
    """Outputs were once written with mode 0600/0700 (the temporary names' modes), so a colleague could not
    open a report."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert main(["rtl", str(ir_dir), "--out", str(tmp_path / "rtl")]) == 0
        assert main(["estimate", str(ir_dir), "--out", str(tmp_path / "est.json")]) == 0
    finally:
        os.umask(old)
    for path, mode in [(tmp_path / "rtl", 0o755), (tmp_path / "rtl" / "rtl.json", 0o644), (tmp_path / "est.json", 0o644)]:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_folders_from_an_hwq_before_the_marker_are_replaced_but_not_with_a_users_file(ir_dir, tmp_path, capsys):
    """IR and RTL folders written before hwq marked its outputs hold only hwq's files: they are replaced
    without --force; one file of the user's in them and they are not."""
    from hwq.ir import OUTPUT_MARKER

    rtl = tmp_path / "rtl"
    assert main(["rtl", str(ir_dir), "--out", str(rtl)]) == 0
    (rtl / OUTPUT_MARKER).unlink()
    (rtl / "sim.json").write_text("{}")
    assert main(["rtl", str(ir_dir), "--out", str(rtl)]) == 0
    (rtl / OUTPUT_MARKER).unlink()
    (rtl / "notes.txt").write_text("mine")
    code = main(["rtl", str(ir_dir), "--out", str(rtl)])
    _one_line_error(capsys, code, "not empty and not written by hwq")
    assert (rtl / "notes.txt").read_text() == "mine"


def test_a_cache_entry_from_before_digests_is_rebuilt_quietly(tmp_path, capsys):
    path = tmp_path / "entry.json"
    path.write_text(json.dumps({"lut": 100}))  # the format before entries carried a digest
    assert read_cache(path) is None and not path.exists()
    assert capsys.readouterr().err == ""


def test_the_kept_digits_split_equals_a_fresh_one_and_a_damaged_one_is_made_again(tmp_path, monkeypatch):
    """The digits split is kept in the data folder (scikit-learn takes 1.5 s to import); what is read back,
    or made again from a damaged file, equals the split scikit-learn makes."""
    from hwq.data import load_dataset

    monkeypatch.setenv("HWQ_DATA", str(tmp_path))
    fresh = load_dataset("digits", input_bits=3)
    (kept,) = (tmp_path / "digits").glob("digits-*-b3-*.npz")
    for damage in (None, b"not a zip file"):
        if damage is not None:
            kept.write_bytes(damage)
        again = load_dataset("digits", input_bits=3)
        for part in ("x_train", "y_train", "x_test", "y_test"):
            assert np.array_equal(getattr(again, part), getattr(fresh, part)) and getattr(again, part).dtype == np.int64
        assert (again.input_bits, again.image_shape, again.n_classes) == (3, (1, 8, 8), 10)
    assert load_dataset("digits", input_bits=4).x_test.max() == 15  # another key: another file
