# Two commands set everything up on a fresh machine with Python >= 3.11 and make:
#   make test   - create .venv if missing, install, run the whole suite
#   make demo   - create .venv if missing, install, run the main job on the embedded data
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
DEMO_OUT ?= runs/demo

.PHONY: install test demo sp500 quality clean help

help:
	@echo "make test   - set up .venv and run the test suite"
	@echo "make demo   - set up .venv and run the 5-seed CPU ensemble demo (about 8 min on 2 cores)"
	@echo "make sp500  - real-data check: S&P 500 panel from skfolio's bundled prices, 5-seed ensemble, backtest"
	@echo "make quality - quality benchmark of the demo config (docs/quality.md)"
	@echo "make clean  - remove .venv and demo outputs"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Install the CPU torch first on machines without CUDA: otherwise pip resolves `torch` to a
# multi-GB CUDA build.  On macOS the default wheel is already the MPS/CPU one.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	@if [ "$$(uname -s)" = "Linux" ] && ! command -v nvidia-smi >/dev/null 2>&1; then \
		echo "installing CPU torch $(TORCH_VERSION)"; \
		$(PY) -m pip install -q torch==$(TORCH_VERSION); \
	fi
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

# The layers first (a second; pyproject.toml's [tool.importlinter]), then the suite as three pytest
# processes at once: the Ray tests (marked `slow`) in two lanes, each lane one local cluster at a
# time, module by module (the lanes: tests/conftest.py), and the tests that need no cluster. The
# first lane prints as it runs; the other two print after it (timings: docs/performance.md). All
# three must pass. The background runs' temp files are removed when they pass, kept for a look
# when they fail.
test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache --no-logo
	@logs=$$(mktemp -d); lane2_tmp=$$(mktemp -d); quick_tmp=$$(mktemp -d); \
	$(PY) -m pytest -m "slow and lane2" -p no:cacheprovider --basetemp=$$lane2_tmp tests > $$logs/lane2.log 2>&1 & lane2=$$!; \
	$(PY) -m pytest -m "not slow" -p no:cacheprovider --basetemp=$$quick_tmp tests > $$logs/quick.log 2>&1 & quick=$$!; \
	trap 'kill $$lane2 $$quick 2>/dev/null' INT TERM; \
	$(PY) -m pytest -m "slow and not lane2" tests; lane1_rc=$$?; \
	wait $$lane2; lane2_rc=$$?; wait $$quick; quick_rc=$$?; \
	echo "----- the Ray tests' second lane (run beside the first above) -----"; cat $$logs/lane2.log; \
	echo "----- the tests without a Ray cluster (run beside them) -----"; cat $$logs/quick.log; \
	rm -rf $$logs; \
	echo "Ray tests: exit $$lane1_rc (first lane), $$lane2_rc (second lane); the others: exit $$quick_rc"; \
	if [ $$lane2_rc -eq 0 ]; then rm -rf $$lane2_tmp; else echo "the second lane's temp files: $$lane2_tmp"; fi; \
	if [ $$quick_rc -eq 0 ]; then rm -rf $$quick_tmp; else echo "the quick tests' temp files: $$quick_tmp"; fi; \
	test $$lane1_rc -eq 0 && test $$lane2_rc -eq 0 && test $$quick_rc -eq 0

demo: $(STAMP)
	$(PY) -m ray_jobs.demo --output $(DEMO_OUT)

SP500_PANEL := runs/sp500/sp500_panel.parquet
sp500: $(STAMP)
	@test -f $(SP500_PANEL) || $(PY) -m data.sp500 --out $(SP500_PANEL)
	$(PY) -m ray_jobs.ensemble --config configs/model_config_cpu_sp500.yaml --num-cpus 10 \
		$$(test -d runs/sp500/xlstm_cpu_sp500 && echo --resume)
	$(PY) -m ray_jobs.backtest --experiment runs/sp500/xlstm_cpu_sp500 --out runs/sp500/xlstm_cpu_sp500/report

quality: $(STAMP)
	$(PY) -m benchmarks.quality --config configs/model_config_cpu_demo.yaml --storage runs/quality

clean:
	rm -rf $(VENV) runs/demo
