"""Sweeps (`hwq sweep`, hwq.sweep.run_tasks): a two-node Ray cluster that loses a worker mid-task, reuse of
finished points, failed points recorded, sweep files checked."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from hwq.cli import main
from hwq.errors import UserError
from hwq.sweep import load_sweep, run_tasks


def probe(task):
    """A task that says where it runs (a file named after its pid), then works for a while."""
    Path(task["dir"], f"{task['x']}-{os.getpid()}").write_text("")
    time.sleep(task["sleep"])
    return {"square": task["x"] ** 2, "text": f"point {task['x']}"}


def test_two_node_cluster_survives_a_killed_worker(tmp_path):
    """Two Ray nodes of one CPU each; the worker running the first task is killed (SIGKILL) while it
    works; Ray retries it elsewhere and every point ends with the 1-worker run's result."""
    ray = pytest.importorskip("ray", reason="Ray is a dependency of hwq; pip install -e . installs it")
    import cloudpickle
    from ray.cluster_utils import Cluster

    cloudpickle.register_pickle_by_value(__import__(__name__, fromlist=["probe"]))  # workers need not import tests
    tasks = [{"x": x, "sleep": 1.5, "dir": str(tmp_path)} for x in range(6)]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        killed = []

        def kill_first_worker():
            deadline = time.time() + 120
            while time.time() < deadline and not killed:
                seen = [p for p in tmp_path.iterdir() if p.name.startswith("0-")]
                if seen:
                    pid = int(seen[0].name.split("-")[1])
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                time.sleep(0.05)

        killer = threading.Thread(target=kill_first_worker)
        killer.start()
        results = run_tasks(probe, tasks, ray_address=cluster.address, retries=3)
        killer.join()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    assert killed, "the first task's worker was never seen"
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("0-")]) >= 2  # it ran again after the kill
    assert results[0]["pid"] != killed[0]
    alone = run_tasks(probe, [{**t, "sleep": 0} for t in tasks], workers=1)
    assert [r["status"] for r in results] == ["ok"] * 6
    assert [r["result"] for r in results] == [r["result"] for r in alone]


SWEEP = """format: hwq-sweep/1
stages: [train, export, estimate]
grid:
  model: mlp
  bits: ["2/2", "3/3"]
  epochs_float: 2
  epochs_qat: 2
points:
  - {model: mlp, bits: "2/2", epochs_float: 1, epochs_qat: 1, board: ice40-up5k, lut_budget: 5}
"""


def test_sweep_reuses_finished_points_and_records_failures(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text(SWEEP.replace("stages: [train, export, estimate]", "stages: [train, export, rtl]"))
    out = tmp_path / "out"
    t0 = time.perf_counter()
    assert main(["sweep", str(tmp_path / "s.yaml"), "--workers", "1", "--out", str(out)]) == 1  # one point fails
    t_first = time.perf_counter() - t0
    first = json.loads((out / "sweep.json").read_text())
    assert [p["status"] for p in first["points"]] == ["ok", "ok", "failed"]
    assert "no folding" in first["points"][2]["error"] or "LUT" in first["points"][2]["error"]
    assert all(p["result"]["accuracy"]["golden"] > 0 for p in first["points"][:2])
    assert (out / "sweep.html").read_text().count("<tr>") == 4
    # the grid again (the failed point left out: a failed point is not stored, so it would run again)
    text = (tmp_path / "s.yaml").read_text()
    (tmp_path / "grid.yaml").write_text(text[:text.index("points:")])
    t0 = time.perf_counter()
    assert main(["sweep", str(tmp_path / "grid.yaml"), "--workers", "1", "--out", str(out)]) == 0
    t_again = time.perf_counter() - t0
    again = json.loads((out / "sweep.json").read_text())
    assert again["reused"] == 2 and [p["status"] for p in again["points"]] == ["ok", "ok"]
    assert [p["result"] for p in again["points"]] == [p["result"] for p in first["points"][:2]]
    assert t_again < 0.05 * t_first, (t_again, t_first)  # the whole command: no training, no generation


@pytest.mark.parametrize("text, message", [
    ("format: hwq-sweep/1\ngrid: {model: mlp, colour: red}\n", "point 1: unknown option 'colour'"),
    ("format: hwq-sweep/1\ngrid: {model: vgg}\n", "point 1: --model: unknown value 'vgg'"),
    ("format: hwq-sweep/1\ngrid: {board: nope}\n", "point 1:"),
    ("format: hwq-sweep/1\nstages: [sim]\ngrid: {model: mlp}\n", "stages: sim needs rtl"),
    ("format: hwq-sweep/1\n", "no points"),
    ("grid: {model: mlp}\n", "format: hwq-sweep/1"),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path, text, message):
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(UserError, match=None) as e:
        load_sweep(tmp_path / "s.yaml")
    assert message in str(e.value) and str(tmp_path / "s.yaml") in str(e.value)


def test_example_sweep_file_is_valid():
    """examples/sweeps/*.yaml load (points and stages checked) as the README shows them."""
    examples = sorted((Path(__file__).parent.parent / "examples" / "sweeps").glob("*.yaml"))
    assert examples
    for example in examples:
        points, stages, _ = load_sweep(example)
        assert points and "train" in stages
