"""One of two ``jax.distributed`` processes reading training batches; writes what it read.

``tests/test_multiprocess.py`` starts two of these on 127.0.0.1. Each reads
global steps ``--start`` to ``--stop - 1`` of two training streams with
``data.train_stream`` (its own half of every global batch) and places them
with ``data.device_batches`` on the two-process mesh:

- ``array``: an in-memory split whose labels are the examples' indices;
- ``tfds``: the synthetic imagenet2012 in ``--tfds_dir`` (array_record, read
  by ``--workers`` Grain workers), centre-cropped (no augmentation), each
  example named by a hash of its pixels.

It writes JSON to ``--out``: per stream, per step, the ids of this host's
examples and of the whole global batch (gathered from both processes).
"""

import argparse
import hashlib
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import lfr_jax  # noqa: E402,F401  (fast CPU flags before jax starts)
import jax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
import numpy as np  # noqa: E402

from lfr_jax import data  # noqa: E402
from lfr_jax import sharding  # noqa: E402

BATCH = 8
IMAGE_SIZE = 16


def array_split(n: int = 32) -> data.Split:
  """Images filled with their index; labels are the index."""
  images = (np.arange(n, dtype=np.uint8)[:, None, None, None]
            * np.ones((1, 4, 4, 1), np.uint8))
  return data.Split(data.ArraySource(images, np.arange(n, dtype=np.int32)),
                    np.arange(n))


def tfds_split(tfds_dir: str) -> data.Split:
  """The synthetic set's train split, less 8 validation images."""
  return data.load({"name": "imagenet2012", "tfds_data_dir": tfds_dir,
                    "validation_size": 8}).train


def fingerprints(x: np.ndarray) -> list[str]:
  """A name for each example of a batch: a hash of its pixels."""
  return [hashlib.sha1(np.ascontiguousarray(e).tobytes()).hexdigest()[:16]
          for e in x]


def read(split: data.Split, ids, *, start: int, stop: int, workers: int,
         augment: str, image_size: int, mesh) -> list[dict[str, list]]:
  """This host's ids and the global batch's ids at every step."""
  stream = data.train_stream(
      split, batch_size=BATCH, seed=0, start_step=start, stop_step=stop,
      process_index=jax.process_index(), process_count=jax.process_count(),
      augment=augment, image_size=image_size, workers=workers)
  steps = []
  for x, y in data.device_batches(stream, sharding.batch(mesh)):
    local_x = np.concatenate([np.asarray(s.data) for s in x.addressable_shards])
    local_y = np.concatenate([np.asarray(s.data) for s in y.addressable_shards])
    global_x = multihost_utils.process_allgather(x, tiled=True)
    global_y = multihost_utils.process_allgather(y, tiled=True)
    steps.append({"local": ids(local_x, local_y),
                  "global": ids(np.asarray(global_x), np.asarray(global_y))})
  return steps


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--tfds_dir", required=True)
  parser.add_argument("--start", type=int, required=True)
  parser.add_argument("--stop", type=int, required=True)
  parser.add_argument("--workers", type=int, default=1)
  args = parser.parse_args()
  jax.distributed.initialize(f"127.0.0.1:{args.port}", num_processes=2,
                             process_id=args.process_id)
  mesh = sharding.make_mesh(0)
  by_label = lambda x, y: [int(v) for v in y]  # noqa: E731
  by_pixels = lambda x, y: fingerprints(x)  # noqa: E731
  out = {"process_index": jax.process_index(),
         "devices": mesh.size,
         "array": read(array_split(), by_label, start=args.start,
                       stop=args.stop, workers=0, augment="crop_flip",
                       image_size=0, mesh=mesh),
         "tfds": read(tfds_split(args.tfds_dir), by_pixels, start=args.start,
                      stop=args.stop, workers=args.workers, augment="none",
                      image_size=IMAGE_SIZE, mesh=mesh)}
  with open(args.out, "w") as f:
    json.dump(out, f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
