"""Amaranth generators: processing element, systolic array, threshold requantizer, layer engine, network top."""
