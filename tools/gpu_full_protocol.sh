#!/usr/bin/env bash
# The LFR paper's full MNIST protocol (100 epochs, K = 40; configs/mnist_lfr.py
# and configs/mnist_trades.py without a variant) on a GPU machine with no
# package registry, in one call. Prepare .offline/ first (tools/offline_bundle.sh).
#
#   bash tools/gpu_full_protocol.sh OUT_DIR [SECONDS]     # on the GPU machine
#   bash tools/gpu_full_protocol.sh --smoke OUT_DIR       # any machine, :smoke
#
# Each run's workdir is OUT_DIR/<method>: config, metrics.jsonl, summary and
# checkpoints, so a second call with the same OUT_DIR contents resumes. SECONDS
# (default 3000) bounds the whole call; each run gets what the ones before it
# left. Timings (seconds per epoch) are printed from metrics.jsonl at the end.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

variant=""
if [ "${1:-}" = "--smoke" ]; then variant=":smoke"; shift; fi
out="${1:?usage: gpu_full_protocol.sh [--smoke] OUT_DIR [SECONDS]}"
budget="${2:-3000}"
mkdir -p "$out"
py="${PYTHON:-python3}"

# Carried wheels go to a private folder on PYTHONPATH: nothing is installed
# into the machine's own Python.
if [ -d .offline/wheels ] && ls .offline/wheels/*.whl >/dev/null 2>&1; then
  "$py" -m pip install --quiet --no-index --no-deps --target .offline/site \
      .offline/wheels/*.whl || exit 2
  export PYTHONPATH="$PWD/.offline/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -z "${LFR_DATA_DIR:-}" ]; then
  for d in .offline/mnist data/mnist; do
    [ -f "$d/train-images-idx3-ubyte.gz" ] && export LFR_DATA_DIR="$PWD/$d" && break
  done
fi

"$py" - "$variant" <<'PY' || exit 2
import sys
import lfr_jax  # noqa: F401  (sets only the flags this jaxlib knows)
import jax, flax, optax, orbax.checkpoint, ml_collections  # noqa: F401
devices = jax.devices()
print(f"jax {jax.__version__}, {len(devices)} x {devices[0].device_kind} "
      f"({jax.default_backend()})", flush=True)
if not sys.argv[1] and jax.default_backend() == "cpu":
  sys.exit("gpu_full_protocol.sh: error: no accelerator visible to JAX; use "
           "--smoke to try the script on a CPU.")
PY

start=$(date +%s)
for method in lfr trades; do
  left=$(( budget - ($(date +%s) - start) ))
  if [ "$left" -le 60 ]; then echo "no time left for $method"; continue; fi
  echo "== $method: up to ${left}s" >&2
  timeout --signal=INT "$left" "$py" train.py \
      --config="configs/mnist_${method}.py${variant}" \
      --workdir="$out/$method" --config.log.progress=False \
      --config.checkpoint.every_steps=2000 \
      > "$out/$method.log" 2>&1
  echo "$method exit $? after $(( $(date +%s) - start ))s" >&2
  tail -n 1 "$out/$method.log"
done

"$py" - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
for method in ("lfr", "trades"):
  path = os.path.join(out, method, "metrics.jsonl")
  if not os.path.isfile(path):
    continue
  records = [json.loads(l) for l in open(path) if l.strip().startswith("{")]
  train = [r for r in records if r["split"] == "train"]
  epochs = [r for r in records if r["split"] == "train_epoch"]
  rate = sorted(r["examples_per_sec"] for r in train)[len(train) // 2] if train else 0
  last = epochs[-1] if epochs else {}
  batch = json.load(open(os.path.join(out, method, "config.json")))["data"]["batch_size"]
  per_epoch = last.get("steps", 0) * batch / max(rate, 1e-9)
  print(f"{method}: {len(epochs)} epochs, median {rate:.0f} examples/s "
        f"({per_epoch:.1f} s of steps per epoch); last "
        f"epoch mean reg {last.get('reg', float('nan')):.4g}, "
        f"CE {last.get('ce', float('nan')):.4f}")
PY
