# Two commands do everything on a fresh machine:  make demo  |  make test
# Both create .venv and install reelkit on first use; later runs skip the install (it is
# redone only when pyproject.toml or constraints.txt change).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned to 2.13.0. A local CPU wheel is used where the machine keeps one (/opt/wheels);
# elsewhere, without an NVIDIA driver, the CPU index is used so no CUDA wheels are pulled.
TORCH_SOURCE ?= $(if $(wildcard /opt/wheels/torch-*),--find-links /opt/wheels,$(if $(shell command -v nvidia-smi 2>/dev/null),,--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple))
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test lint bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install $(TORCH_SOURCE) -c constraints.txt torch
	$(PIP) install -c constraints.txt -e ".[dev,bench]"
	@touch $(STAMP)

demo: $(STAMP)
	@mkdir -p outputs
	$(BIN)/reelkit generate "a red circle moving right and a yellow star spinning on a navy background" --model teacher \
		--seed 0 -o outputs/demo.mp4 --sheet outputs/demo.png

test: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/reelkit bench world --json docs/bench/world.json
	$(BIN)/reelkit bench vae --json docs/bench/vae.json --repeats 3
	$(BIN)/reelkit bench generate --json docs/bench/generate.json --repeats 3
	$(BIN)/reelkit bench cache --json docs/bench/cache.json
	$(BIN)/reelkit bench memory --json docs/bench/memory.json
	$(BIN)/reelkit bench rehash --json docs/bench/rehash.json
	$(BIN)/reelkit bench distill --json docs/bench/distill.json --repeats 3
	$(BIN)/reelkit bench mardini --json docs/bench/mardini.json --repeats 3
	$(BIN)/reelkit bench budget --json docs/bench/budget.json

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
