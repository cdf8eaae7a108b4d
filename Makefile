# The README's two commands are `make demo` and `make test`; each builds .venv by itself.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch where no NVIDIA GPU is present; a GPU machine gets the default (CUDA) build.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.3" || echo "torch==2.13.0")
DATA ?= /usr/share/datasets/fashion-mnist
OUT ?= runs/demo

.PHONY: venv demo test lint format bench mutate clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

$(DATA):
	@if command -v apt-get >/dev/null 2>&1; then \
		echo "Fashion-MNIST not found at $(DATA): installing the Debian package dataset-fashion-mnist"; \
		(apt-get install -y dataset-fashion-mnist || sudo apt-get install -y dataset-fashion-mnist) >/dev/null; \
	else echo "Fashion-MNIST not found at $(DATA); pass DATA=path or use --download"; exit 1; fi

demo: venv $(DATA)
	$(VENV)/bin/simclr pipeline --preset fashion-mnist --data $(DATA) --out $(OUT)

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: venv
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench: venv
	$(PY) benchmarks/bench_pretrain.py --preset fashion-mnist --data $(DATA)

# Plants each bug of scripts/mutations.py in a copy of the tree and checks the tests catch it (docs/testing.md).
mutate: venv
	$(PY) scripts/mutate.py --jobs 2

clean:
	rm -rf $(VENV) runs .pytest_cache
