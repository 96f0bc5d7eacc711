"""Cycle-accurate simulation of the generated RTL with Verilator and cocotb, checked against the golden model."""
