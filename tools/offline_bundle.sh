#!/usr/bin/env bash
# Prepares .offline/ for a GPU machine that has JAX, flax, optax, orbax, chex
# and absl but no package registry: the pure-Python wheels it lacks and the
# four MNIST files. Run on a machine with registry access, from the repo root:
#
#   bash tools/offline_bundle.sh            # then carry .offline/ along
#
# .offline/ is git-ignored (about 12 MB). tools/gpu_full_protocol.sh uses it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# ml_collections: the configs; tensorboardX: optional TensorBoard events. Both
# are pure Python (py3-none-any), so one wheel serves any Python 3 there.
WHEELS=("ml_collections>=1.1.0,<2" "tensorboardX>=2.6,<3")
mkdir -p .offline/wheels .offline/mnist
python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --dest .offline/wheels "${WHEELS[@]}"

src="${LFR_DATA_DIR:-data/mnist}"
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz \
         t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  if [ ! -f "$src/$f" ]; then
    echo "tools/offline_bundle.sh: error: $src/$f not found; set LFR_DATA_DIR" \
         "to the folder of the four MNIST files." >&2
    exit 2
  fi
  cp "$src/$f" .offline/mnist/
done
echo "wrote $(du -sh .offline | cut -f1) into .offline/: $(ls .offline/wheels | tr '\n' ' ')"
