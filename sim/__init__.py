"""Cycle-accurate simulation of the generated RTL with Verilator, checked against the golden model.

Light on purpose (the CLI imports these names for ``--help``): the runner lives in :mod:`sim.runner`.
"""

DATA_SPLITS = ("test", "train", "all")  # "all": the test split, then the training split
TESTBENCHES = ("harness", "cocotb")  # free-running Verilog harness; cocotb (Python on every handshake)
SIMULATORS = ("verilator", "icarus-2005", "icarus-2012")  # the harness in Icarus Verilog, -g2005 or -g2012
