"""The host link: a UART (8N1) between a host and the network top, with a small framed protocol.

``HostLink`` wraps the network's Verilog top (an ``Instance`` of ``rtl.json``'s ``top``) in a UART
receiver with a byte FIFO, a parser that turns input frames into the top's word-serial input stream,
and a transmitter that frames every output. The same protocol is spoken by :mod:`hwq.driver`; the
board top (:mod:`hwq.board`) adds only the board's pins, clock and LEDs around it.

Protocol (bytes on the serial line; multi-byte fields little-endian):

    host -> device   '?'                              status request
                     'I' + IN_BYTES                   one sample: its input words, each in WORD_BYTES bytes
    device -> host   STATUS (STATUS_BYTES)            'HWQ', protocol version, IN_BYTES (2), OUT_BYTES (2),
                                                      design id (4: rtl.json's ir_sha256, first bytes),
                                                      FIFO depth in bytes (2)
                     'O' + OUT_BYTES                  one output: the top's output payload, in order

Any other byte where a command is expected is ignored, so a host resynchronises by sending IN_BYTES
zero bytes (they complete a frame in progress, whose output it then discards, or are ignored).
Samples may be sent back to back: the FIFO holds ``depth`` bytes, so a host keeps at most
``depth // IN_BYTES`` samples (at least one) without their outputs in flight and nothing overflows.
"""

from amaranth import Cat, ClockSignal, Const, Elaboratable, Instance, Module, ResetSignal, Signal
from amaranth.lib.fifo import SyncFIFOBuffered

from .plan import input_word_indices

__all__ = ["PROTOCOL_VERSION", "STATUS_BYTES", "HostLink", "UartRx", "UartTx", "link_params", "link_verilog"]

PROTOCOL_VERSION = 1
STATUS_BYTES = 14
CMD_STATUS, CMD_INFER, REPLY_OUTPUT = ord("?"), ord("I"), ord("O")
FIFO_DEPTH = 512  # bytes: one iCE40 block RAM (512 x 8)


def link_params(info, divisor):
    """The protocol's numbers for the design that ``rtl.json`` (``info``) describes, at ``divisor`` clocks
    per bit: what the board's ``board.json`` records and :mod:`hwq.driver` reads."""
    inp, out = info["input"], info["output"]
    word_bits = inp["word_lanes"] * inp["bits"]
    words = len(input_word_indices(inp["shape"], inp["word_lanes"]))
    word_bytes = (word_bits + 7) // 8
    out_bits = out["features"] * out["bits"]
    return {"protocol": PROTOCOL_VERSION, "divisor": divisor, "word_bits": word_bits, "words": words,
            "word_bytes": word_bytes, "in_bytes": words * word_bytes, "out_bits": out_bits,
            "out_bytes": (out_bits + 7) // 8, "fifo_bytes": FIFO_DEPTH,
            "design_id": info["ir_sha256"][:8], "status_bytes": STATUS_BYTES,
            "input_shape": list(inp["shape"]), "word_lanes": inp["word_lanes"], "out_features": out["features"]}


class UartRx(Elaboratable):
    """8N1 receiver: ``data`` is valid for the one cycle ``valid`` is high. The line is sampled in the
    middle of each bit (``divisor`` clocks per bit); a byte without its stop bit is dropped."""

    def __init__(self, divisor):
        self.divisor = divisor
        self.rx = Signal(init=1)
        self.data = Signal(8)
        self.valid = Signal()

    def elaborate(self, platform):
        m = Module()
        meta, line = Signal(init=1), Signal(init=1)  # two flip-flops against metastability
        m.d.sync += [meta.eq(self.rx), line.eq(meta), self.valid.eq(0)]
        count = Signal(range(self.divisor))
        bit = Signal(range(8))
        shreg = Signal(8)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += count.eq(self.divisor // 2)
                    m.next = "START"
            with m.State("START"):  # the middle of the start bit: still low, or it was a glitch
                with m.If(count != 0):
                    m.d.sync += count.eq(count - 1)
                with m.Elif(~line):
                    m.d.sync += [count.eq(self.divisor - 1), bit.eq(0)]
                    m.next = "DATA"
                with m.Else():
                    m.next = "IDLE"
            with m.State("DATA"):
                with m.If(count != 0):
                    m.d.sync += count.eq(count - 1)
                with m.Else():
                    m.d.sync += [shreg.eq(Cat(shreg[1:], line)), count.eq(self.divisor - 1), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(count != 0):
                    m.d.sync += count.eq(count - 1)
                with m.Else():
                    m.d.sync += [self.data.eq(shreg), self.valid.eq(line)]
                    m.next = "IDLE"
        return m


class UartTx(Elaboratable):
    """8N1 transmitter: takes ``data`` when ``valid`` and ``ready`` are both high; ``tx`` is a register."""

    def __init__(self, divisor):
        self.divisor = divisor
        self.tx = Signal(init=1)
        self.data = Signal(8)
        self.valid = Signal()
        self.ready = Signal()

    def elaborate(self, platform):
        m = Module()
        shreg = Signal(10, init=(1 << 10) - 1)
        count = Signal(range(self.divisor))
        left = Signal(range(11))
        m.d.comb += [self.tx.eq(shreg[0]), self.ready.eq(left == 0)]
        with m.If(left == 0):
            with m.If(self.valid):
                m.d.sync += [shreg.eq(Cat(Const(0, 1), self.data, Const(1, 1))), left.eq(10),
                             count.eq(self.divisor - 1)]
        with m.Elif(count != 0):
            m.d.sync += count.eq(count - 1)
        with m.Else():
            m.d.sync += [shreg.eq(Cat(shreg[1:], Const(1, 1))), left.eq(left - 1), count.eq(self.divisor - 1)]
        return m


class HostLink(Elaboratable):
    """The network top behind a UART: ``rx``/``tx`` are the serial lines (idle high), ``led_alive`` blinks
    at about 1 Hz of a ``clock_hz`` clock, ``led_output`` toggles on every output sent."""

    def __init__(self, info, divisor, *, clock_hz=12e6):
        if divisor < 4:
            raise ValueError(f"a UART needs at least 4 clocks per bit, not {divisor}")
        self.info, self.divisor, self.clock_hz = info, divisor, clock_hz
        self.p = link_params(info, divisor)
        self.rx = Signal(init=1)
        self.tx = Signal(init=1)
        self.led_alive = Signal()
        self.led_output = Signal()

    def status_bytes(self):
        p = self.p
        raw = (b"HWQ" + bytes([PROTOCOL_VERSION]) + p["in_bytes"].to_bytes(2, "little")
               + p["out_bytes"].to_bytes(2, "little") + bytes.fromhex(p["design_id"])
               + p["fifo_bytes"].to_bytes(2, "little"))
        assert len(raw) == STATUS_BYTES
        return raw

    def elaborate(self, platform):
        m = Module()
        p, info = self.p, self.info
        m.submodules.urx = urx = UartRx(self.divisor)
        m.submodules.utx = utx = UartTx(self.divisor)
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=8, depth=FIFO_DEPTH)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx),
                     fifo.w_data.eq(urx.data), fifo.w_en.eq(urx.valid)]

        # the network
        i_payload, i_valid, i_ready = Signal(p["word_bits"]), Signal(), Signal()
        o_payload, o_valid, o_ready = Signal(p["out_bits"]), Signal(), Signal()
        cycles = Signal(info.get("counter_bits", 32) * len(info["stages"]))
        m.submodules.net = Instance(
            info["top"], i_clk=ClockSignal(), i_rst=ResetSignal(),
            i_i__payload=i_payload, i_i__valid=i_valid, o_i__ready=i_ready,
            o_o__payload=o_payload, o_o__valid=o_valid, i_o__ready=o_ready, o_cycles=cycles)

        # host -> network: frames of input words
        word = Signal(p["word_bytes"] * 8)
        byte_in_word = Signal(range(p["word_bytes"] + 1))
        words_left = Signal(range(p["words"] + 1))
        status_request = Signal()
        m.d.comb += i_payload.eq(word[:p["word_bits"]])
        with m.FSM(name="parse"):
            with m.State("COMMAND"):
                m.d.comb += fifo.r_en.eq(1)
                with m.If(fifo.r_rdy):
                    with m.If(fifo.r_data == CMD_STATUS):
                        m.d.sync += status_request.eq(1)
                    with m.Elif(fifo.r_data == CMD_INFER):
                        m.d.sync += [words_left.eq(p["words"]), byte_in_word.eq(0)]
                        m.next = "WORD"
            with m.State("WORD"):
                m.d.comb += fifo.r_en.eq(1)
                with m.If(fifo.r_rdy):
                    m.d.sync += [word.eq(Cat(word[8:], fifo.r_data)), byte_in_word.eq(byte_in_word + 1)]
                    with m.If(byte_in_word == p["word_bytes"] - 1):
                        m.next = "OFFER"
            with m.State("OFFER"):
                m.d.comb += i_valid.eq(1)
                with m.If(i_ready):
                    m.d.sync += [words_left.eq(words_left - 1), byte_in_word.eq(0)]
                    with m.If(words_left == 1):
                        m.next = "COMMAND"
                    with m.Else():
                        m.next = "WORD"

        # network / status -> host: framed replies
        status = self.status_bytes()
        frame = max(len(status), 1 + p["out_bytes"])
        buf = Signal(frame * 8)
        left = Signal(range(frame + 1))
        toggle = Signal()
        m.d.comb += [utx.data.eq(buf[:8]), self.led_output.eq(toggle)]
        with m.FSM(name="reply"):
            with m.State("IDLE"):
                with m.If(o_valid):
                    m.d.comb += o_ready.eq(1)
                    m.d.sync += [buf.eq(Cat(Const(REPLY_OUTPUT, 8), o_payload)), left.eq(1 + p["out_bytes"]),
                                 toggle.eq(~toggle)]
                    m.next = "SEND"
                with m.Elif(status_request):
                    m.d.sync += [buf.eq(int.from_bytes(status, "little")), left.eq(len(status)),
                                 status_request.eq(0)]
                    m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += utx.valid.eq(1)
                with m.If(utx.ready):
                    m.d.sync += [buf.eq(buf >> 8), left.eq(left - 1)]
                    with m.If(left == 1):
                        m.next = "IDLE"

        alive = Signal(range(max(int(self.clock_hz // 2), 2)))
        blink = Signal()
        with m.If(alive == 0):
            m.d.sync += [alive.eq(max(int(self.clock_hz // 2), 2) - 1), blink.eq(~blink)]
        with m.Else():
            m.d.sync += alive.eq(alive - 1)
        m.d.comb += self.led_alive.eq(blink)
        return m

    def ports(self):
        return [self.rx, self.tx, self.led_alive, self.led_output]


def link_verilog(info, divisor, *, clock_hz=12e6, name="hwq_link"):
    """Verilog of module ``name`` (ports clk, rst, rx, tx, led_alive, led_output): the network top of
    ``info`` behind the host link. The network's own Verilog files are needed beside it."""
    from amaranth.back import verilog

    link = HostLink(info, divisor, clock_hz=clock_hz)
    return verilog.convert(link, name=name, ports=link.ports())
