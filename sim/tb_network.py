"""cocotb testbench for the network top (runs inside the simulator; never imported by pytest).

The independent, Python-driven counterpart of the Verilog harness (:mod:`sim.harness`), which is what
``hwq sim`` runs: tests check that both see the same outputs and cycles.

Parts: a driver (offers the input words one after another on the ``i`` stream, without waiting for
outputs, so the layer-pipelined top holds several samples at once), a monitor running concurrently
(waits for ``o.valid`` without Python on every clock edge, then captures the logits and the hardware
cycle counters), and timestamps of every accept and every output for an independent latency measurement.
Comparison with the golden model happens outside, in :mod:`sim.runner`; this module only records.

Backpressure mode (``HWQ_SIM_BACKPRESSURE`` = p > 0): ``o.ready`` is low with probability p on each
cycle and inputs are offered after 0-3 random idle cycles (``HWQ_SIM_SEED``), so the handshakes are
exercised; the outputs must still equal the golden model, in order. Python then runs every cycle.

Environment: ``HWQ_SIM_STIMULUS`` (JSON: packed input words as hex, ``samples``), ``HWQ_SIM_RESULT``
(JSON written here: raw output payloads and counters as hex, times in ns).
"""

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

PERIOD_NS = 10


class Driver:
    """Offers input words on the ``i`` stream; returns the sim time of each accepting edge."""

    def __init__(self, dut):
        self.dut = dut

    async def send(self, word):
        dut = self.dut
        dut.i__payload.value = word
        dut.i__valid.value = 1
        while True:
            await ReadOnly()
            if int(dut.i__ready.value):
                await RisingEdge(dut.clk)
                break
            await RisingEdge(dut.i__ready)  # no Python on the cycles in between
        accepted = get_sim_time("ns")
        dut.i__valid.value = 0
        return accepted


class Monitor:
    """Waits for ``o.valid`` and captures the output and the cycle counters when it is taken."""

    def __init__(self, dut):
        self.dut = dut

    async def receive(self):
        dut = self.dut
        valid_at = None
        while True:
            await ReadOnly()
            if not int(dut.o__valid.value):
                valid_at = None
                await RisingEdge(dut.o__valid)
                continue
            if valid_at is None:
                valid_at = get_sim_time("ns")
            if int(dut.o__ready.value):  # valid and ready both high: the output is taken at the next edge
                payload, cycles = dut.o__payload.value.to_unsigned(), dut.cycles.value.to_unsigned()
                await RisingEdge(dut.clk)
                return valid_at, payload, cycles
            await RisingEdge(dut.clk)


async def stall_output(dut, rng, p_stall):
    """Drive ``o.ready`` low with probability ``p_stall`` on every cycle."""
    while True:
        dut.o__ready.value = int(rng.random() >= p_stall)
        await RisingEdge(dut.clk)


@cocotb.test()
async def run_network(dut):
    """Run every stimulus vector through the network and record outputs and cycle counts."""
    with open(os.environ["HWQ_SIM_STIMULUS"]) as f:
        stimulus = json.load(f)
    inputs, n_samples = [int(w, 16) for w in stimulus["words"]], stimulus["samples"]
    per_sample = len(inputs) // n_samples
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.o__ready.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)

    driver, monitor = Driver(dut), Monitor(dut)
    p_stall = float(os.environ.get("HWQ_SIM_BACKPRESSURE", "0"))
    rng = random.Random(int(os.environ.get("HWQ_SIM_SEED", "0")))
    if p_stall > 0:
        cocotb.start_soon(stall_output(dut, rng, p_stall))
    t_start = get_sim_time("ns")
    accepts = []

    async def drive():
        for k, word in enumerate(inputs):
            if p_stall > 0:
                await ClockCycles(dut.clk, rng.randint(0, 3))
            accepted = await driver.send(word)
            if k % per_sample == per_sample - 1:  # a sample is accepted with its last word
                accepts.append(accepted)

    driving = cocotb.start_soon(drive())
    records = {"payload": [], "counters": [], "valid_ns": []}
    for _ in range(n_samples):
        valid_at, payload, cycles = await monitor.receive()
        records["payload"].append(f"{payload:x}")
        records["counters"].append(f"{cycles:x}")
        records["valid_ns"].append(valid_at)
    await driving
    records["simulated_cycles"] = round((get_sim_time("ns") - t_start) / PERIOD_NS)
    records["accept_ns"] = accepts
    records["period_ns"] = PERIOD_NS
    with open(os.environ["HWQ_SIM_RESULT"], "w") as f:
        json.dump(records, f)
