"""Host side of the board's UART link (protocol: :mod:`rtl_gen.hostlink`), for a board or its simulation.

    from hwq.driver import Device
    with Device.open("out/demo/board", "/dev/ttyUSB1") as dev:   # or the URL of a simulated board
        print(dev.status())
        logits = dev.infer(codes)          # (N, features) input codes -> (N, classes) integer logits

``port`` is anything pyserial opens: a device path, or a URL such as ``socket://127.0.0.1:PORT`` (what
:func:`sim.board_sim.simulated_board` yields). Samples are pipelined: at most as many are in flight
as the device's input FIFO holds, so none is lost.
"""

import time

import numpy as np

from .errors import UserError

__all__ = ["Device", "DeviceError"]


class DeviceError(UserError):
    """The device did not answer as the protocol says (a timeout, a wrong frame, another design): a wrong
    port or a board not loaded with the folder's bitstream, told in one line."""


class Device:
    """A board running an hwq board top: ``link`` is ``board.json``'s ``link`` and ``ir`` its IR."""

    def __init__(self, serial_port, link, ir, *, timeout=5.0):
        self.port, self.link, self.ir, self.timeout = serial_port, link, ir, timeout

    @classmethod
    def open(cls, board_dir, port, *, timeout=5.0):
        """Open ``port`` at the baud rate of the board folder ``board_dir``, resynchronise, and check that
        the device runs that folder's design."""
        try:
            import serial
        except ImportError:
            raise UserError("talking to a board needs pyserial: pip install pyserial") from None
        from .board import load_board_dir

        record, ir = load_board_dir(board_dir)
        try:
            ser = serial.serial_for_url(port, baudrate=int(record["link"]["baud"]), timeout=timeout)
        except (serial.SerialException, ValueError) as exc:
            raise UserError(f"{port}: cannot open the serial port ({exc})") from None
        dev = cls(ser, record["link"], ir, timeout=timeout)
        try:
            dev.resync()
            status = dev.status()
        except BaseException:
            ser.close()
            raise
        if status["design_id"] != record["link"]["design_id"]:
            ser.close()
            raise DeviceError(f"{port}: the device runs design {status['design_id']}, not {board_dir}'s "
                              f"{record['link']['design_id']} (load that folder's bitstream)")
        return dev

    def close(self):
        self.port.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read(self, n, what):
        data = self.port.read(n)
        if len(data) != n:
            raise DeviceError(f"timed out after {self.timeout} s waiting for {what} ({len(data)} of {n} bytes)")
        return data

    def resync(self):
        """Complete any frame the device is in the middle of (zeros), then discard whatever it sends."""
        self.port.write(bytes(self.link["in_bytes"]))
        self.port.flush()
        quiet_until = time.monotonic() + 0.2
        old, self.port.timeout = self.port.timeout, 0.05
        try:
            while time.monotonic() < quiet_until:
                if self.port.read(4096):
                    quiet_until = time.monotonic() + 0.2
        finally:
            self.port.timeout = old

    def status(self):
        """The device's status word: protocol version, frame sizes, design id, FIFO depth."""
        self.port.write(b"?")
        raw = self._read(self.link["status_bytes"], "the status reply")
        if raw[:3] != b"HWQ":
            raise DeviceError(f"not an hwq board top (status reply {raw!r})")
        status = {"protocol": raw[3], "in_bytes": int.from_bytes(raw[4:6], "little"),
                  "out_bytes": int.from_bytes(raw[6:8], "little"), "design_id": raw[8:12].hex(),
                  "fifo_bytes": int.from_bytes(raw[12:14], "little")}
        for key in ("protocol", "in_bytes", "out_bytes", "fifo_bytes"):
            if status[key] != self.link[key]:
                raise DeviceError(f"the device's {key} is {status[key]}, the board folder's {self.link[key]}")
        return status

    def frames(self, codes):
        """The 'I' frames of input ``codes`` (N, features): each sample's words, ``word_bytes`` each."""
        from sim.runner import _pack

        link = self.link
        words = _pack(codes, self.ir.input_bits, self.ir.input_signed, link["input_shape"], link["word_lanes"])
        per = link["words"]
        return [b"I" + b"".join(w.to_bytes(link["word_bytes"], "little") for w in words[k:k + per])
                for k in range(0, len(words), per)]

    def infer(self, codes, *, progress=None):
        """Integer logits (N, classes) of input ``codes`` (N, features), samples pipelined."""
        codes = np.asarray(codes, dtype=np.int64).reshape(len(codes), -1)
        frames = self.frames(codes)
        window = max(1, self.link["fifo_bytes"] // self.link["in_bytes"])
        n_out, bits = self.link["out_features"], self.link["out_bits"] // self.link["out_features"]
        payloads, sent = [], 0
        for k in range(len(frames)):
            while sent < len(frames) and sent - k < window:
                self.port.write(frames[sent])
                sent += 1
            reply = self._read(1 + self.link["out_bytes"], f"the output of sample {k}")
            if reply[0] != ord("O"):
                raise DeviceError(f"sample {k}: expected an output frame ('O'), got byte {reply[0]:#04x}")
            payloads.append(int.from_bytes(reply[1:], "little"))
            if progress:
                progress(k + 1)
        from sim.runner import _unpack

        return _unpack(payloads, n_out, bits, "logits")
