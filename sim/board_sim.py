"""The board without the board: the host link and the network (``hwq_link.v`` of a board folder, the
same logic the bitstream holds) simulated in Verilator, with a model of the serial line on the other
side that a host reaches over a local TCP socket.

``simulated_board(board_dir)`` builds the simulator (cached like the harness), starts it, and yields a
pyserial URL (``socket://127.0.0.1:PORT``): :class:`hwq.driver.Device` opens it exactly as it opens
``/dev/ttyUSB1``, so the code a user runs against a board is the code the tests run. The C++ main turns
each byte the host sends into a start bit, eight data bits (least significant first) and a stop bit on
``rx``, ``divisor`` clock cycles each (the board's real baud rate at its real clock), and samples ``tx``
in the middle of each bit to send the bytes the device transmits back.
"""

import hashlib
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from hwq.errors import UserError
from hwq.fileio import cache_dir, cache_lock

from .harness import _build_locked
from .verilator import WARNING_FLAGS, setup_verilator

__all__ = ["LINK_MAIN_CPP", "build_link_sim", "simulated_board"]

LINK_TOP = "hwq_link"

LINK_MAIN_CPP = r"""// hwq simulated board: the host link's rx/tx pins <-> a TCP socket, bit by bit at DIVISOR clocks per bit.
#include <memory>
#include <deque>
#include <cstdio>
#include <cstdlib>
#include <cerrno>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include "verilated.h"
#include "Vhwq_link.h"

int main(int argc, char** argv) {
    const auto ctx = std::make_unique<VerilatedContext>();
    ctx->commandArgs(argc, argv);
    const char* arg = ctx->commandArgsPlusMatch("divisor=");
    const long divisor = (arg && *arg) ? std::atol(arg + 9) : 0;
    if (divisor < 4) { std::fprintf(stderr, "hwq_link_sim: +divisor=N (N >= 4) is required\n"); return 2; }
    int server = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (server < 0 || bind(server, (sockaddr*)&addr, sizeof addr) || listen(server, 1)
        || getsockname(server, (sockaddr*)&addr, &len)) { std::perror("hwq_link_sim: socket"); return 2; }
    std::printf("port %d\n", ntohs(addr.sin_port));
    std::fflush(stdout);
    int conn = accept(server, nullptr, nullptr);
    if (conn < 0) { std::perror("hwq_link_sim: accept"); return 2; }
    fcntl(conn, F_SETFL, fcntl(conn, F_GETFL) | O_NONBLOCK);

    const auto top = std::make_unique<Vhwq_link>(ctx.get(), "TOP");
    std::deque<unsigned char> to_device;
    bool open = true;
    long tx_bit = -1, tx_count = 0; unsigned tx_frame = 0;   // host -> device serializer
    long rx_bit = -1, rx_count = 0; unsigned rx_byte = 0;    // device -> host deserializer
    top->rx = 1; top->rst = 1; top->clk = 0;
    for (unsigned long long cycle = 0; open || !to_device.empty() || tx_bit >= 0; ++cycle) {
        if (cycle == 4) top->rst = 0;
        if ((cycle & 63) == 0 && open) {
            unsigned char buf[4096];
            ssize_t n = recv(conn, buf, sizeof buf, 0);
            if (n > 0) to_device.insert(to_device.end(), buf, buf + n);
            else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) open = false;
        }
        if (tx_bit < 0 && !to_device.empty() && cycle > 8) {   // start a byte: start bit, data, stop bit
            tx_frame = (1u << 9) | ((unsigned)to_device.front() << 1);
            to_device.pop_front();
            tx_bit = 0; tx_count = 0;
        }
        if (tx_bit >= 0) {
            top->rx = (tx_frame >> tx_bit) & 1;
            if (++tx_count == divisor) { tx_count = 0; if (++tx_bit == 10) tx_bit = -1; }
        } else {
            top->rx = 1;
        }
        top->clk = 0; top->eval();
        top->clk = 1; top->eval();
        if (rx_bit < 0) {
            if (!top->tx && cycle > 8) { rx_bit = 0; rx_count = divisor / 2; rx_byte = 0; }
        } else if (--rx_count <= 0) {
            rx_count = divisor;
            if (rx_bit >= 1 && rx_bit <= 8) rx_byte |= (unsigned)top->tx << (rx_bit - 1);
            if (++rx_bit == 10) {
                rx_bit = -1;
                unsigned char b = rx_byte;
                while (send(conn, &b, 1, MSG_NOSIGNAL) < 0) {
                    if (errno != EAGAIN && errno != EWOULDBLOCK) { open = false; break; }
                    pollfd p{conn, POLLOUT, 0};
                    poll(&p, 1, 100);
                }
            }
        }
        ctx->timeInc(1);
    }
    top->final();
    close(conn);
    close(server);
    return 0;
}
"""


def build_link_sim(board_dir, *, log=None):
    """Build (or reuse) the Verilator simulator of a board folder's ``hwq_link.v`` and network Verilog;
    return (its executable, the folder's ``board.json``)."""
    from hwq.board import load_board_dir

    record, _ = load_board_dir(board_dir)
    setup_verilator()
    board_dir = Path(board_dir)
    sources = [board_dir / "hwq_link.v", *(board_dir / name for name in record["network_files"])]
    for src in sources:
        if not src.is_file() or src.parent != board_dir:
            raise UserError(f"{src}: missing from the board folder (board.json lists it)")
    args = [*WARNING_FLAGS, "-Wno-BLKSEQ", "-Wno-MULTIDRIVEN"]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in sources) + LINK_MAIN_CPP.encode() + repr(args).encode())
    build_dir = cache_dir("verilator") / f"link-{key.hexdigest()[:16]}"
    with cache_lock(build_dir):
        exe, _ = _build_locked(build_dir, None, sources, args, "-Os", log or (lambda line: None), top=LINK_TOP,
                               main=LINK_MAIN_CPP)
    return exe, record


@contextmanager
def simulated_board(board_dir, *, log=None):
    """Start the simulated board of ``board_dir``; yield the pyserial URL of its serial line. The simulation
    runs (in the board folder, where its memory files are) until the host closes the connection."""
    exe, record = build_link_sim(board_dir, log=log)
    proc = subprocess.Popen([str(exe), f"+divisor={int(record['link']['divisor'])}"], cwd=board_dir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("port "):
            proc.kill()
            raise RuntimeError(f"the simulated board did not start: {line}{proc.stderr.read()[-500:]}")
        yield f"socket://127.0.0.1:{int(line.split()[1])}"
    finally:
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            print("warning: the simulated board did not stop when the host closed the line; killed it",
                  file=sys.stderr)
        proc.wait()
