#!/usr/bin/env bash
# Issue 19, item 6: the throughput figures on a GPU machine, in one call of about 8 minutes.
#
# Here (a machine with pip access), once: fetch the pure-Python packages the device image
# lacks or holds at other versions, into .whl/ (ignored by git, ~3 MB):
#     bash benchmarks/gpu_figures.sh --fetch_wheels
# Then on the device machine (the `device` tool's run, from the repository root):
#     run(command="bash benchmarks/gpu_figures.sh", carry=[".whl"], timeout_s=600)
# and copy what it prints (also left in $OUT) into BUILD_NOTES.md with the date.
#
# What runs (every model has random weights: SmolLM2's GGUF package is too large to carry,
# so the task text goes through the byte-level tokenizer of `model.name=tiny`, ~4x the
# tokens of SmolLM2's; the shapes are SmolLM2-135M's and TinyLlama-1.1B's):
#   1. bench_iteration on configs/default.py (the main job: dual team, 16 envs, 48 new
#      tokens, shared prefixes), bf16 weights, MFU against a bf16 8192^3 matmul timed in the
#      same process, the device's peak memory in use.
#   2. bench_generate, ours against transformers' generate on the same GPU, bf16.
# CPU dry run of the same steps at toy sizes (checks the script, not the figures):
#     DRY_RUN=1 bash benchmarks/gpu_figures.sh
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS="flax==0.12.12 optax==0.2.8 orbax-checkpoint==0.12.8 chex==0.1.92 ml_collections==1.1.0 gguf==0.19.0 tensorboardX==2.6.5"
if [ "${1:-}" = "--fetch_wheels" ]; then
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
    exec python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $WHEELS
fi
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_figures}
mkdir -p "$OUT"
if [ -d .whl ] && [ -z "${DRY_RUN:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target .whl/site .whl/*.whl || exit 1
    export PYTHONPATH=$PWD/.whl/site:$PWD
fi
export PYTHONUNBUFFERED=1
$PY -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" \
    2>&1 | tee "$OUT/devices.txt"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv

tiny() {  # a random `model.name=tiny` decoder: hidden, intermediate, layers, heads, kv heads, vocab
    echo "--config.model.name=tiny --config.model.tiny.hidden_size=$1" \
         "--config.model.tiny.intermediate_size=$2 --config.model.tiny.num_layers=$3" \
         "--config.model.tiny.num_heads=$4 --config.model.tiny.num_kv_heads=$5" \
         "--config.model.tiny.head_dim=$(($1 / $4)) --config.model.tiny.vocab_size=$6"
}
if [ -n "${DRY_RUN:-}" ]; then
    MODELS=("toy:$(tiny 64 128 2 4 2 512)")
    ITER="--repeats=1 --config.rollout.num_envs=2 --config.sampling.max_new_tokens=8"
    GEN="--models=tiny --batches=2 --new_tokens=8 --repeats=1 --hf_dtypes=float32"
    PEAK="--peak_dtype=float32 --peak_size=256"
else
    MODELS=("smollm2_shape:$(tiny 576 1536 30 9 3 49152)"
            "llama1b:$(tiny 2048 5632 22 32 4 32000)")
    ITER="--repeats=3"
    GEN="--models=smollm2_shape,llama1b --batches=8,32 --new_tokens=64 --repeats=3 \
         --hf_device=cuda --hf_dtypes=bfloat16 --dtype=bfloat16 --prefill_dtype=none \
         --decode_dtypes=none --modes=sampled"
    PEAK="--peak_dtype=bfloat16 --peak_size=8192"
fi
for item in "${MODELS[@]}"; do
    name=${item%%:*}
    echo "=== bench_iteration $name $(date -u)"
    # shellcheck disable=SC2086
    $PY benchmarks/bench_iteration.py --config=configs/default.py ${item#*:} \
        --config.model.dtype=bfloat16 $ITER $PEAK 2>&1 | grep -v "^I[0-9]" | tee "$OUT/iter_$name.txt"
done
echo "=== bench_generate $(date -u)"
# shellcheck disable=SC2086
$PY benchmarks/bench_generate.py $GEN --out="$OUT/generate.json" 2>&1 \
    | grep -v "GGUF\|Loading" | tee "$OUT/generate.txt"
echo "=== done $(date -u)"
