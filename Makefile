# Two entry points: `make demo` (the main job on the built-in tiny model) and `make test`.
# Both create .venv and install guikv on first use. TORCH picks the torch build: the pinned pair
# below runs on CPU and CUDA alike; override it for another platform, e.g. TORCH="torch torchvision".

VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: install demo test lint speed

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(BIN)/guikv infer examples/screens/*.png --task "Open the display settings" --model tiny --show-kept kept.png

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

speed: install
	$(BIN)/python -m benchmarks.speed --model tiny
	$(BIN)/python -m benchmarks.speed --model qwen7b-shape --layers 2
