"""Input pipeline throughput per host: ImageNet from tfds array_record files.

On a pod every host decodes and augments its share of each global batch, and
the step waits for the slowest host. This measures how many images per second
one host's pipeline delivers, from the bytes on disk to a batch on the device,
and sets it beside the rate one host of a TPU v3-128 slice must sustain.

The data: a synthetic ImageNet (``tools/synthetic_imagenet.py``: JPEGs at
quality 90 with ImageNet's spread of sizes) written, on first use, as tfds
``imagenet2012`` array_record files under ``--dir``, so the loader reads it
exactly as it reads ImageNet.

The paths, each timed in its own process pinned to the first ``--cores``
cores (as ``taskset`` would), for ``--seconds`` after its first batch, with
each of ``--workers`` Grain worker processes (0 = in the measuring process):

- ``train``: ``data.train_stream`` (Inception crop + flip at
  ``--image_size``) -> ``data.device_batches`` (``to_global`` in a
  background thread), exactly as ``training`` feeds the step;
- ``eval``: ``data.eval_batches`` (centre crop) the same way;
- ``decode``: JPEG decoding alone (``preprocessing.decode``, full size), one
  process per core: the floor under every path that decodes;
- ``stages``: where one image's CPU time goes on the train path, stage by
  stage, in one process (record read, parse, decode, crop + resize, flip and
  float conversion).

"CPU ms/image" is the CPU time of the measuring process and its children per
image: unlike images/s it barely moves when other processes share the cores.

The rate a host must sustain: from ``--plan`` (the compile-time plan of LLR's
ImageNet run on v3-128, keys ``global_batch``, ``num_hosts``,
``step_seconds_lower_bound``) when that file exists, else from LLR's reported
7 h for 110 epochs of ImageNet's 1,281,167 training images on 128 TPU v3
cores (16 hosts). The script says which.

Run::

    python bench/input_pipeline.py                 # 1 and 2 cores, 20 s each
    python bench/input_pipeline.py --cores=2 --workers=2,3 --paths=train \
        --seconds=60
    # smoke (seconds):
    python bench/input_pipeline.py --dir=/tmp/synth --num_images=16 \\
        --short_side=40,60 --image_size=32 --batch=4 --seconds=1 --cores=1 \
        --workers=0,1 --paths=train,stages
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import sys
import time
from typing import Any, Iterator

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (first: this checkout's lfr_jax, fast CPU flags)

import numpy as np  # noqa: E402

from lfr_jax import cli  # noqa: E402
from lfr_jax import text  # noqa: E402

PROG = "bench/input_pipeline.py"
FLAGS = flags.FLAGS
PLAN = os.path.join(common.REPO, "docs", "scaling", "imagenet_llr__v3-128",
                    "plan.json")
DEFAULT_DIR = os.path.join(common.REPO, "runs", "synthetic_imagenet")
PATHS = ("train", "eval", "decode", "stages")
# Paths timed once per worker count.
PIPELINES = ("train", "eval")
# LLR's ImageNet run (Qin et al. 2019): 110 epochs in 7 h on 128 TPU v3 cores.
LLR_EPOCHS, LLR_HOURS, LLR_HOSTS = 110, 7.0, 16
IMAGENET_TRAIN = 1_281_167
LLR_GLOBAL_BATCH = 512


class BenchError(ValueError):
  """A flag value the benchmark cannot use."""


def define_flags() -> None:
  """Defines this script's flags (called only when run as a script)."""
  flags.DEFINE_string("dir", DEFAULT_DIR, "tfds data_dir of the synthetic "
                      "set; written there on first use.")
  flags.DEFINE_integer("num_images", 2000, "Training images of the synthetic "
                       "set (and a fifth as many validation images).")
  flags.DEFINE_string("short_side", "200,500", "Range of the images' shorter "
                      "side, 'LO,HI'.")
  flags.DEFINE_string("cores", "1,2", "Core counts to pin each measurement "
                      "to.")
  flags.DEFINE_string("paths", ",".join(PATHS), "What to time, of "
                      f"{', '.join(PATHS)}.")
  flags.DEFINE_string("workers", "0,1,2", "Grain worker counts to time the "
                      "train and eval paths with (0 = in-process).")
  flags.DEFINE_float("seconds", 20.0, "Timed seconds per measurement, after "
                     "the first batch.")
  flags.DEFINE_integer("batch", 0, "Images per batch on this host; 0 = the "
                       "per-host batch of the required-rate source.")
  flags.DEFINE_integer("image_size", 224, "Output side length.")
  flags.DEFINE_string("plan", PLAN, "The compile-time plan giving the step "
                      "time, if it exists.")
  flags.DEFINE_string("json", "", "Write the results to this file.")


# ---------------------------------------------------------------------------
# The rate a host must sustain


def required_rate(plan_path: str) -> dict[str, Any]:
  """Images per second one host must deliver, and where the figure comes from.

  Args:
    plan_path: a plan.json with ``global_batch``, ``num_hosts`` and
      ``step_seconds_lower_bound``; LLR's 7 h is used when it does not exist.

  Returns:
    {"per_host": images/s, "host_batch": images per step on one host,
    "source": a sentence}.
  """
  if os.path.isfile(plan_path):
    with open(plan_path) as f:
      plan = json.load(f)
    try:
      batch, hosts = int(plan["global_batch"]), int(plan["num_hosts"])
      seconds = float(plan["step_seconds_lower_bound"])
    except (KeyError, TypeError, ValueError) as e:
      raise BenchError(f"{plan_path} lacks global_batch, num_hosts or "
                       f"step_seconds_lower_bound ({e!r}).") from None
    return {"per_host": batch / seconds / hosts, "host_batch": batch // hosts,
            "source": f"the compile-time plan {os.path.relpath(plan_path)}: "
                      f"global batch {batch} every {seconds:.3g} s (lower "
                      f"bound) over {hosts} hosts"}
  pod = LLR_EPOCHS * IMAGENET_TRAIN / (LLR_HOURS * 3600)
  return {"per_host": pod / LLR_HOSTS, "host_batch": LLR_GLOBAL_BATCH // LLR_HOSTS,
          "source": f"LLR's reported {LLR_HOURS:g} h for {LLR_EPOCHS} epochs of "
                    f"{IMAGENET_TRAIN:,} images on 128 TPU v3 cores: "
                    f"{pod:,.0f} images/s per pod over {LLR_HOSTS} hosts "
                    f"(no plan at {os.path.relpath(plan_path)})"}


# ---------------------------------------------------------------------------
# The data


def dataset_summary(data_dir: str) -> dict[str, Any]:
  """Count, mean JPEG size and mean shorter side of the synthetic train split."""
  from lfr_jax import data  # pylint: disable=g-import-not-at-top
  ds = data.load({"name": "imagenet2012", "tfds_data_dir": data_dir,
                  "validation_size": 0})
  images, _ = ds.train.read(np.arange(min(len(ds.train), 200)))
  shorts = [min(np.asarray(im).shape[:2]) for im in images]
  size = sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(data_dir) for f in files
             if "train.array_record" in f)
  return {"train": len(ds.train), "test": len(ds.test),
          "mean_kb": size / len(ds.train) / 1e3,
          "mean_short_side": float(np.mean(shorts))}


# ---------------------------------------------------------------------------
# One measurement, in its own process


def _pin(cores: int) -> list[int]:
  allowed = sorted(os.sched_getaffinity(0))
  if cores > len(allowed):
    raise BenchError(f"--cores {cores} exceeds the {len(allowed)} cores this "
                     f"process may use.")
  mine = allowed[:cores]
  os.sched_setaffinity(0, mine)
  return mine


def _cpu_seconds() -> float:
  import psutil  # pylint: disable=g-import-not-at-top
  me = psutil.Process()
  total = sum(me.cpu_times()[:2])
  for child in me.children(recursive=True):
    try:
      total += sum(child.cpu_times()[:2])
    except psutil.Error:
      pass
  return total


def _batches(path: str, workers: int, settings: dict[str, Any]
             ) -> Iterator[int]:
  """Yields the number of images of each batch the path delivers."""
  import jax  # pylint: disable=g-import-not-at-top
  from lfr_jax import data  # pylint: disable=g-import-not-at-top
  from lfr_jax import sharding  # pylint: disable=g-import-not-at-top
  ds = data.load({"name": "imagenet2012", "tfds_data_dir": settings["dir"],
                  "validation_size": 0})
  batch, size = settings["batch"], settings["image_size"]
  target = sharding.batch(sharding.make_mesh(1))
  if path == "train":
    local = data.train_stream(ds.train, batch_size=batch, seed=0,
                              start_step=0, stop_step=1 << 40,
                              augment="inception", image_size=size,
                              workers=workers)
  else:
    # The test split many times over: one pass of one pool of workers, as
    # on a validation set far larger than the synthetic one.
    test = data.Split(ds.test.source, np.tile(ds.test.indices, 1000))
    local = ((x, y) for x, y, _ in data.eval_batches(
        test, batch_size=batch, image_size=size, workers=workers))
  batches = data.device_batches(local, target)
  try:
    for x, y in batches:
      jax.block_until_ready(x)
      yield len(y)
  finally:
    batches.close()


def _decode_worker(jpegs: list[bytes], seconds: float, queue) -> None:
  from lfr_jax import preprocessing  # pylint: disable=g-import-not-at-top
  count, start = 0, time.perf_counter()
  for jpeg in itertools.cycle(jpegs):
    preprocessing.decode(jpeg, 3)
    count += 1
    if time.perf_counter() - start >= seconds:
      break
  queue.put((count, time.perf_counter() - start))


def _decode(settings: dict[str, Any], cores: list[int]) -> dict[str, Any]:
  """JPEG decoding alone: one process per core, each on its own core."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  source = tfds.data_source("imagenet2012", split="train",
                            data_dir=settings["dir"],
                            decoders={"image": tfds.decode.SkipDecoding()})
  jpegs = [source[i]["image"] for i in range(len(source))]
  ctx = multiprocessing.get_context("fork")
  queue = ctx.Queue()
  cpu0 = _cpu_seconds()
  procs = []
  for i, core in enumerate(cores):
    procs.append(ctx.Process(target=_decode_worker,
                             args=(jpegs[i::len(cores)], settings["seconds"],
                                   queue)))
    procs[-1].start()
    os.sched_setaffinity(procs[-1].pid, [core])
  counts = [queue.get() for _ in procs]
  cpu = _cpu_seconds() - cpu0
  for p in procs:
    p.join()
  images = sum(c for c, _ in counts)
  return {"images_per_s": sum(c / s for c, s in counts),
          "cpu_ms_per_image": float("nan") if not images else
          1e3 * cpu / images, "first_batch_s": 0.0, "images": images}


def _stages(settings: dict[str, Any]) -> dict[str, Any]:
  """CPU ms per image of each stage of the train path, in this process."""
  from lfr_jax import data  # pylint: disable=g-import-not-at-top
  from lfr_jax import preprocessing  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = data.load({"name": "imagenet2012", "tfds_data_dir": settings["dir"],
                  "validation_size": 0})
  source = ds.train.source.source
  features = source.dataset_info.features
  skip = {"image": tfds.decode.SkipDecoding()}
  size, n = settings["image_size"], len(ds.train)
  rng = np.random.default_rng(0)
  clock = time.process_time
  spent = dict.fromkeys(("record read", "parse", "JPEG decode",
                         "crop + resize", "flip + float32"), 0.0)
  images, start = 0, time.perf_counter()
  while time.perf_counter() - start < settings["seconds"]:
    t0 = clock()
    record = source.data_source[int(rng.integers(n))]
    t1 = clock()
    jpeg = features.deserialize_example_np(record, decoders=skip)["image"]
    t2 = clock()
    image = preprocessing.decode(jpeg, 3)
    t3 = clock()
    # pylint: disable=protected-access
    crop = preprocessing._inception_crop(image, size, rng)
    t4 = clock()
    preprocessing.to_float(preprocessing._stack([crop], 1))
    t5 = clock()
    for name, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
      spent[name] += dt
    images += 1
  # The flip is a view, copied by the stack; crop + resize includes it.
  return {"stages_ms": {k: 1e3 * v / images for k, v in spent.items()},
          "images": images}


def measure(path: str, cores: int, workers: int, settings: dict[str, Any],
            queue) -> None:
  """Times one path on ``cores`` cores; puts a result dict on ``queue``."""
  try:
    mine = _pin(cores)
    if path == "decode":
      queue.put(_decode(settings, mine))
      return
    if path == "stages":
      queue.put(_stages(settings))
      return
    start = time.perf_counter()
    batches = _batches(path, workers, settings)
    next(batches)
    first = time.perf_counter() - start
    cpu0, start, images = _cpu_seconds(), time.perf_counter(), 0
    for n in batches:
      images += n
      if time.perf_counter() - start >= settings["seconds"]:
        break
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
    batches.close()
    queue.put({"images_per_s": images / elapsed,
               "cpu_ms_per_image": 1e3 * cpu / images,
               "first_batch_s": first, "images": images})
  except BaseException as e:  # pylint: disable=broad-except
    queue.put({"error": f"{type(e).__name__}: {e}"})


def run_one(path: str, cores: int, workers: int, settings: dict[str, Any]
            ) -> dict[str, Any]:
  """Runs :func:`measure` in a fresh process and returns its result."""
  ctx = multiprocessing.get_context("spawn")
  queue = ctx.Queue()
  proc = ctx.Process(target=measure,
                     args=(path, cores, workers, settings, queue))
  proc.start()
  result = queue.get()
  proc.join()
  if "error" in result:
    raise RuntimeError(f"{path} on {cores} core(s), {workers} worker(s): "
                       f"{result['error']}")
  return result


# ---------------------------------------------------------------------------
# The command


def _int_list(name: str, value: str, lowest: int = 1) -> list[int]:
  try:
    out = [int(v) for v in value.split(",") if v.strip()]
  except ValueError:
    raise BenchError(f"--{name} {value!r} is not a list of integers.") from None
  if not out or min(out) < lowest:
    raise BenchError(f"--{name} {value!r} must list integers >= {lowest}.")
  return out


def run() -> None:
  """Makes the data if needed, times every path and core count, prints."""
  from tools import synthetic_imagenet  # pylint: disable=g-import-not-at-top
  cores = _int_list("cores", FLAGS.cores)
  if max(cores) > common.visible_cores():
    raise BenchError(f"--cores {FLAGS.cores!r}: this process may use "
                     f"{common.visible_cores()} cores.")
  worker_counts = _int_list("workers", FLAGS.workers, lowest=0)
  paths = [p.strip() for p in FLAGS.paths.split(",") if p.strip()]
  unknown = sorted(set(paths) - set(PATHS))
  if unknown or not paths:
    raise BenchError(f"--paths {FLAGS.paths!r}: choose from {', '.join(PATHS)}.")
  lo, hi = _int_list("short_side", FLAGS.short_side)
  if FLAGS.num_images < 1 or FLAGS.seconds <= 0 or FLAGS.image_size < 1:
    raise BenchError("--num_images, --seconds and --image_size must be > 0.")
  need = required_rate(FLAGS.plan)
  batch = FLAGS.batch or need["host_batch"]
  data_dir = os.path.abspath(FLAGS.dir)
  start = time.time()
  try:
    synthetic_imagenet.write(
        data_dir, num_train=FLAGS.num_images,
        num_validation=max(1, FLAGS.num_images // 5), short_side=(lo, hi),
        log=lambda line: print(f"# writing the synthetic set: {line}",
                               flush=True))
  except synthetic_imagenet.SyntheticError as e:
    raise BenchError(f"{e} (--dir)") from None
  made = time.time() - start
  summary = dataset_summary(data_dir)
  print(f"# {PROG}: images/s per host, synthetic ImageNet in tfds "
        f"array_record ({summary['train']} train / {summary['test']} "
        f"validation JPEGs, mean {summary['mean_kb']:.0f} KB, mean shorter "
        f"side {summary['mean_short_side']:.0f} px; {data_dir}, ready in "
        f"{made:.0f} s), batch {batch} per host, {FLAGS.image_size} px, "
        f"{FLAGS.seconds:g} s per measurement")
  print(f"# {common.machine_line()}")
  warning = common.load_warning(with_torch=False)
  if warning:
    print(warning)
  print(f"# required: {need['per_host']:.0f} images/s per host, from "
        f"{need['source']}.")
  print()
  settings = {"dir": data_dir, "batch": batch,
              "image_size": FLAGS.image_size, "seconds": FLAGS.seconds}
  rows, results, stages = [], [], None
  for path in paths:
    if path == "stages":
      stages = run_one(path, 1, 0, settings)
      continue
    for n in cores:
      for workers in worker_counts if path in PIPELINES else [0]:
        r = run_one(path, n, workers, settings)
        r.update(path=path, cores=n, workers=workers,
                 required_per_host=need["per_host"],
                 ratio=r["images_per_s"] / need["per_host"])
        results.append(r)
        rows.append([path, str(n), str(workers) if path in PIPELINES else "",
                     f"{r['images_per_s']:.0f}", f"{r['cpu_ms_per_image']:.2f}",
                     f"{r['first_batch_s']:.1f}", f"{need['per_host']:.0f}",
                     f"{r['ratio']:.2f}"])
        print(f"# {path} on {n} core(s), {workers} worker(s): "
              f"{r['images_per_s']:.0f} images/s", flush=True)
  if rows:
    print()
    print(text.markdown_table(
        ["path", "cores", "workers", "images/s per host", "CPU ms/image",
         "first batch s", "required images/s per host", "ratio"], rows))
  if stages:
    total = sum(stages["stages_ms"].values())
    print()
    print(f"Train path, CPU ms per image by stage (one process, "
          f"{stages['images']} images):")
    print()
    print(text.markdown_table(
        ["stage", "CPU ms/image", "share"],
        [[k, f"{v:.3f}", f"{100 * v / total:.0f}%"]
         for k, v in stages["stages_ms"].items()] +
        [["total", f"{total:.3f}", "100%"]]))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump({"required": need, "dataset": summary, "settings": settings,
                 "results": results, "stages": stages}, f, indent=1)


if __name__ == "__main__":
  define_flags()
  cli.main(PROG, run, user_errors=(BenchError,),
           settings_hint="flags such as --cores=1,2")
