# The two set-up-and-go commands of the README:
#   make demo   installs everything and runs the whole flow on the emulated Cortex-M4
#   make test   installs everything and runs the test suite
PYTHON ?= python3

.PHONY: install demo test bench
install:
	PYTHON=$(PYTHON) bash scripts/install-deps.sh

demo: install
	$(PYTHON) -m mcu_nn.cli demo --out mcu-nn-demo

test: install
	$(PYTHON) -m pytest -q -n 2 --dist loadfile --durations=20

bench: install
	$(PYTHON) bench/run.py
