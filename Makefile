# One-command set-up: every target creates .venv on first use.
# torch is installed first and pinned: an unpinned torch on a fresh machine pulls a
# multi-GB CUDA build, while torch==2.13.0 takes the CPU wheel already on disk.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TORCH ?= torch==2.13.0

.PHONY: venv demo lab test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -c "import sys; from ssm_bridge.core.scan import main; sys.exit(main(['--build']))" || echo "fused C++ scan not built: the PyTorch scan is used"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python app.py $(ARGS)

# JupyterLab on notebooks/. Their kernel, "python3", is this environment's Python, so they
# import the package and its checkpoint as the tests do. ARGS="--no-browser --port=8899".
# Jupyter refuses to run as root without --allow-root (containers and CI run as root).
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

# The unit tests, the app tests (gradio_client, load test, a Playwright browser test that
# uses Debian's chromium and skips without it) and the notebooks, executed by nbval.
test: lint
	$(BIN)/python -m pytest -q tests
	$(BIN)/python -m pytest -q --nbval --nbval-current-env \
		--nbval-sanitize-with notebooks/nbval_sanitize.cfg notebooks

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
