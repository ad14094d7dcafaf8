#!/usr/bin/env bash
# `make gpu-check`: the GPU path (full-width VGG-16 at 224 px, bf16 autocast, channels_last, 256
# envs) measured in one run, each step under its own timeout and all within GPU_CHECK_BUDGET:
#
#   deps        install what the interpreter lacks from the wheelhouse (evaluate/wheelhouse.py)
#   machine     Python, torch, CUDA, the card's name, package versions -> machine.json
#   data        the embedded dataset, generated when missing (no internet needed)
#   bench       make bench DEVICE=...            -> results/bench.json
#   classifier  a random-weight full-width VGG-16 at $CUTBG_RUNS/animals/classifier.pt
#   agreement   bf16 autocast vs fp32 classifier scores -> agreement.json
#   train       make train DEVICE=... (one epoch) -> train/config.json
#   eval        make eval DEVICE=... on a few hundred test images -> eval/eval.{json,md}
#   table       ONE markdown table of all of it -> table.md (always written, also after failures)
#
# Everything lands in results/gpu-check/ (plus results/bench.json); logs are <step>.log there.
# Settings (environment; the Makefile passes its GPU_CHECK_* variables):
#   GPU_CHECK_DEVICE   cuda (default) or cpu
#   GPU_CHECK_SIZE     full (default on cuda: 2,000/500 images, 256 envs, 300 eval images) or
#                      tiny (default on cpu: 40/12 generated images, class sheep, 4 envs, 2 eval images)
#   GPU_CHECK_PYTHON   interpreter (default: .venv/bin/python when it runs, else python3)
#   GPU_CHECK_BUDGET   seconds for all steps (default 480 full, 1200 tiny)
#   GPU_CHECK_STEPS    the steps to run (default: all of them, in the order above)
#   GPU_CHECK_BACKBONE full (default) or small: the classifier the train/eval steps use
#   GPU_CHECK_ARCHIVE  also write results/bench.json and results/gpu-check/ to this .tar.gz
#   WHEELHOUSE         wheelhouse folder (default .wheelhouse; `make wheelhouse` builds it)
# `bash scripts/gpu_check.sh --print-make` prints the make calls of bench, train and eval;
# `--print-recipes` what runs instead where there is no make (a test keeps them equal).
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=${GPU_CHECK_DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then SIZE=${GPU_CHECK_SIZE:-tiny}; else SIZE=${GPU_CHECK_SIZE:-full}; fi
case "$SIZE" in
full) # the GPU: limits in seconds per step, 480 s in all
	BUDGET_DEFAULT=480 CLASS=dog N_ENVS=256 EVAL_IMAGES=300 WINDOWS=2025 FIGURES=2 AGREE="--images 16 --crops 8"
	BENCH_S=200 TRAIN_S=180 EVAL_S=150
	;;
tiny) # the 2-core CPU, full-width VGG-16 in float32 (bf16 on this CPU is 5x slower)
	# (the generated 12 test images hold no dog; the first two hold a sheep)
	BUDGET_DEFAULT=1200 CLASS=sheep N_ENVS=4 EVAL_IMAGES=2 WINDOWS=20 FIGURES=1 AGREE="--images 1 --crops 2"
	BENCH_S=420 TRAIN_S=240 EVAL_S=400
	;;
*)
	echo "error: GPU_CHECK_SIZE=$SIZE: use full or tiny" >&2
	exit 2
	;;
esac
BUDGET=${GPU_CHECK_BUDGET:-$BUDGET_DEFAULT}
STEPS=${GPU_CHECK_STEPS:-deps machine data bench classifier agreement train eval}
BACKBONE=${GPU_CHECK_BACKBONE:-full}
ARCHIVE=${GPU_CHECK_ARCHIVE:-}
WHEELHOUSE=${WHEELHOUSE:-.wheelhouse}
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
	PYTHON=$GPU_CHECK_PYTHON
elif [ -x .venv/bin/python ] && .venv/bin/python -c "" 2>/dev/null; then
	PYTHON=.venv/bin/python
else
	PYTHON=python3
fi
ALL_STEPS="deps machine data bench classifier agreement train eval"
for s in $STEPS; do
	case " $ALL_STEPS " in
	*" $s "*) ;;
	*)
		echo "error: GPU_CHECK_STEPS: unknown step '$s' (the steps: $ALL_STEPS)" >&2
		exit 2
		;;
	esac
done
DIR=results/gpu-check
WORK=.gpu-check # scratch: the installed wheels, the tiny dataset, the runs (a 0.5 GiB classifier)
EVAL_ARGS="--classes $CLASS --max-images $EVAL_IMAGES --exhaustive-windows $WINDOWS --figures $FIGURES --out $DIR/eval"

# The Makefile's recipes of the three targets, for a machine without make.
recipe() {
	case "$1" in
	bench) echo "$PYTHON -m evaluate.bench --device $DEVICE" ;;
	train) echo "$PYTHON -m train agent --dataset animals --class $CLASS --device $DEVICE --n-envs $N_ENVS --seed 0 --workers 0 --epochs 1" ;;
	eval) echo "$PYTHON -m evaluate --dataset animals --device $DEVICE $EVAL_ARGS" ;;
	esac
}

# CMD=(make TARGET with the check's settings); the stamp keeps make from (re)installing a venv
make_cmd() {
	local t=$1
	if ! command -v make >/dev/null; then
		# shellcheck disable=SC2207 # the recipe is words, as make would split them
		CMD=($(recipe "$t"))
		return
	fi
	CMD=(make --no-print-directory "$t" DEVICE="$DEVICE" PY="$PYTHON" STAMP="$WORK/stamp")
	case "$t" in
	train) CMD+=(CLASS="$CLASS" N_ENVS="$N_ENVS" EPOCHS=1 SEED=0) ;;
	eval) CMD+=(EVAL_ARGS="$EVAL_ARGS") ;;
	esac
}

case "${1:-}" in
--print-recipes)
	for t in bench train eval; do recipe $t; done
	exit 0
	;;
--print-make)
	for t in bench train eval; do
		make_cmd "$t"
		printf '%q ' "${CMD[@]}"
		echo
	done
	exit 0
	;;
esac

export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export CUTBG_RUNS=$PWD/$WORK/runs
if [ "$SIZE" = tiny ]; then
	export CUTBG_DATA=$PWD/$WORK/data-tiny
elif [ -L data ] && [ ! -e data ]; then # a link that did not travel with the tree
	export CUTBG_DATA=$PWD/$WORK/data
fi
rm -rf "$DIR" "$CUTBG_RUNS"
case " $STEPS " in *" bench "*) rm -f results/bench.json ;; esac
mkdir -p "$DIR" "$WORK" "$CUTBG_RUNS/animals"
touch "$WORK/stamp"
printf 'step\tstatus\trc\tseconds\tlimit\n' >"$DIR/steps.tsv"
[ -d "$WORK/site" ] && export PYTHONPATH=$PWD/$WORK/site${PYTHONPATH:+:$PYTHONPATH}

echo "gpu-check: device $DEVICE, size $SIZE, backbone $BACKBONE, budget ${BUDGET}s, python $PYTHON ($("$PYTHON" --version 2>&1))"
echo "tools: make $(command -v make || echo MISSING), timeout $(command -v timeout || echo MISSING), nvidia-smi $(command -v nvidia-smi || echo none)"
command -v nvidia-smi >/dev/null && nvidia-smi -L
DEADLINE=$((SECONDS + BUDGET))
RESERVE=20 # kept for the table
FAILED=0

# step NAME LIMIT COMMAND...: run under min(LIMIT, time left), log to $DIR/NAME.log
step() {
	local name=$1 limit=$2
	shift 2
	local left=$((DEADLINE - SECONDS - RESERVE)) t0=$SECONDS rc status
	((left < limit)) && limit=$left
	if ((limit < 5)); then
		printf '%s\tskipped (budget)\t-\t0\t%s\n' "$name" "$limit" >>"$DIR/steps.tsv"
		echo "== $name: skipped, the budget is spent"
		FAILED=1
		return 1
	fi
	echo "== $name (limit ${limit}s): $*"
	timeout --kill-after=10 "$limit" "$@" >"$DIR/$name.log" 2>&1
	rc=$?
	case $rc in
	0) status=ok ;;
	124 | 137) status="timed out" ;;
	*) status=failed ;;
	esac
	printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$((SECONDS - t0))" "$limit" >>"$DIR/steps.tsv"
	echo "   $status (rc $rc) in $((SECONDS - t0)) s, log $DIR/$name.log"
	if ((rc != 0)); then
		FAILED=1
		tail -n 5 "$DIR/$name.log" | sed 's/^/   | /'
	fi
	return $rc
}

CKPT=$CUTBG_RUNS/animals/classifier.pt
for s in $STEPS; do
	case "$s" in
	deps)
		if step deps 60 "$PYTHON" -m evaluate.wheelhouse install --wheelhouse "$WHEELHOUSE" --target "$WORK/site"; then
			[ -d "$WORK/site" ] && export PYTHONPATH=$PWD/$WORK/site${PYTHONPATH:+:$PYTHONPATH}
		fi
		sed 's/^/   /' "$DIR/deps.log" | grep -v '^   present' | head -n 20
		;;
	machine) step machine 60 "$PYTHON" -m evaluate.gpu_check machine --out "$DIR/machine.json" ;;
	data)
		if [ "$SIZE" = tiny ]; then
			step data 150 "$PYTHON" -m cutbg_env.data generate --n-trainval 40 --n-test 12
		else
			step data 150 "$PYTHON" -m cutbg_env.data generate
		fi
		;;
	bench) make_cmd bench && step bench "$BENCH_S" "${CMD[@]}" ;;
	classifier) step classifier 60 "$PYTHON" -m evaluate.gpu_check classifier --out "$CKPT" --backbone "$BACKBONE" ;;
	agreement)
		# shellcheck disable=SC2086 # AGREE is two flags
		step agreement 60 "$PYTHON" -m evaluate.gpu_check agreement --checkpoint "$CKPT" --device "$DEVICE" $AGREE --out "$DIR/agreement.json"
		;;
	train)
		make_cmd train && step train "$TRAIN_S" "${CMD[@]}"
		mkdir -p "$DIR/train"
		cp "$CUTBG_RUNS/animals/$CLASS/config.json" "$CUTBG_RUNS/animals/$CLASS/refinement.json" "$DIR/train/" 2>/dev/null
		;;
	eval) make_cmd eval && step eval "$EVAL_S" "${CMD[@]}" ;;
	esac
done

echo "== table"
timeout 60 "$PYTHON" -m evaluate.gpu_check table --dir "$DIR" --bench results/bench.json --out "$DIR/table.md" --budget "$BUDGET" 2>"$DIR/table.log" || {
	FAILED=1
	cat "$DIR/table.log"
}
if [ -n "$ARCHIVE" ]; then
	tar -czf "$ARCHIVE" $([ -f results/bench.json ] && echo results/bench.json) "$DIR" && echo "archive: $ARCHIVE"
fi
echo "gpu-check: $([ $FAILED = 0 ] && echo 'every step ok' || echo 'some steps failed') in $SECONDS s; table $DIR/table.md"
exit $FAILED
