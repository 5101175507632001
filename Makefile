# One-command set-up: every target creates .venv on first use.
# torch is installed first and pinned: an unpinned torch on a fresh machine pulls a
# multi-GB CUDA build, while torch==2.13.0 takes the CPU wheel already on disk.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TORCH ?= torch==2.13.0

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -c "import sys; from ssm_bridge.scan import main; sys.exit(main(['--build']))" || echo "fused C++ scan not built: the PyTorch scan is used"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python app.py $(ARGS)

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
