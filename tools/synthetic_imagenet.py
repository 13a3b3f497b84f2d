"""A synthetic ImageNet stored as tfds ``imagenet2012`` array_record files.

The loader reads ImageNet through ``tfds.data_source("imagenet2012")``: one
``tf.train.Example`` per record (JPEG bytes, label, file name) in
``array_record`` files beside tfds' ``dataset_info.json``. This tool writes
exactly that layout with tfds' own feature encoder, example serializer and
array_record writer (no TensorFlow needed), so that ``lfr_jax.data.load`` with
``tfds_data_dir=DIR`` reads it as it would read the real dataset, and a
benchmark or a multi-host test runs the real path from the bytes on disk.

The images: RGB JPEGs at quality 90 whose shorter side is uniform in
[200, 500] (by default) and whose aspect ratio follows ImageNet's usual shapes
(mostly 4:3 and 3:2, some square, the rest up to 2:1; three in four
landscape). The content is smooth multi-scale noise plus pixel noise, tuned so
that a JPEG weighs about what an ImageNet photo of that size does (ImageNet's
training JPEGs average about 110 KB): JPEG decoding costs what it costs on
ImageNet. Labels are uniform over the 1,000 classes.

Usage::

    python tools/synthetic_imagenet.py --dir=runs/synthetic_imagenet \\
        --num_train=2000 --num_validation=500

Writing is all or nothing (a temporary folder renamed at the end); a folder
that already holds a synthetic set made with the same settings is reused, one
made with other settings is refused with one line, never overwritten.

Example::

    import tempfile
    from tools import synthetic_imagenet
    folder = tempfile.mkdtemp()
    synthetic_imagenet.write(folder, num_train=4, num_validation=2,
                             short_side=(24, 32))
    from lfr_jax import data
    ds = data.load({"name": "imagenet2012", "tfds_data_dir": folder,
                    "validation_size": 1})
    len(ds.train), len(ds.test)               # (3, 2)
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import shutil
import sys
from typing import Iterator

import numpy as np

NAME = "imagenet2012"
NUM_CLASSES = 1000
SETTINGS_FILE = "synthetic.json"
# (long side / short side, probability): ImageNet's common photo shapes.
ASPECTS = ((4 / 3, 0.55), (3 / 2, 0.2), (1.0, 0.1))
LANDSCAPE = 0.75
# Pixel noise (in grey levels) on the smooth field: with it a quality-90 JPEG
# of a 500x375 image weighs about 110 KB, as ImageNet's photos do.
PIXEL_NOISE = 20.0


class SyntheticError(ValueError):
  """The folder holds something this tool must not overwrite."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a synthetic set is made from; recorded beside its files."""
  num_train: int
  num_validation: int
  short_side: tuple[int, int] = (200, 500)
  quality: int = 90
  seed: int = 0


def image_size(rng: np.random.Generator, short_side: tuple[int, int]
               ) -> tuple[int, int]:
  """Draws (height, width) of one image.

  Args:
    rng: random generator.
    short_side: inclusive range of the shorter side.

  Returns:
    (height, width).
  """
  short = int(rng.integers(short_side[0], short_side[1] + 1))
  pick = rng.random()
  aspect = rng.uniform(1.0, 2.0)
  for value, p in ASPECTS:
    if pick < p:
      aspect = value
      break
    pick -= p
  long = int(round(short * aspect))
  return (short, long) if rng.random() < LANDSCAPE else (long, short)


def synthetic_image(rng: np.random.Generator, height: int, width: int
                    ) -> np.ndarray:
  """A photo-like uint8 (height, width, 3) image: multi-scale noise.

  Args:
    rng: random generator.
    height: rows.
    width: columns.

  Returns:
    The image.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  field = np.zeros((height, width, 3), np.float32)
  mix = np.array([[1.0, 0.8, 0.6], [0.0, 0.6, 0.5], [0.0, 0.0, 0.5]],
                 np.float32)  # correlated colour channels
  octaves = 6
  for octave in range(octaves):
    shrink = 2 ** (octaves - octave)
    coarse = rng.normal(size=(max(2, height // shrink), max(2, width // shrink),
                              3)).astype(np.float32) @ mix
    field += 0.6 ** octave * np.stack(
        [np.asarray(Image.fromarray(coarse[..., c]).resize(
            (width, height), Image.BICUBIC)) for c in range(3)], axis=-1)
  field = (field - field.mean()) / (field.std() + 1e-6) * 50.0 + 120.0
  field += rng.normal(scale=PIXEL_NOISE, size=field.shape).astype(np.float32)
  return np.clip(field, 0, 255).astype(np.uint8)


def jpeg_bytes(image: np.ndarray, quality: int) -> bytes:
  """Encodes a uint8 RGB image as a baseline JPEG."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = io.BytesIO()
  Image.fromarray(image).save(out, "JPEG", quality=quality)
  return out.getvalue()


def _examples(settings: Settings, split: str, count: int
              ) -> Iterator[dict[str, object]]:
  rng = np.random.default_rng([settings.seed, split == "validation"])
  for i in range(count):
    h, w = image_size(rng, settings.short_side)
    label = int(rng.integers(0, NUM_CLASSES))
    yield {"image": jpeg_bytes(synthetic_image(rng, h, w), settings.quality),
           "label": label, "file_name": f"synthetic_{split}_{i:07d}.JPEG"}


def version_dir(data_dir: str) -> str:
  """Where tfds reads ``imagenet2012`` under ``data_dir``."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return str(tfds.builder(NAME, data_dir=data_dir).data_dir)


def _recorded(folder: str) -> Settings | None:
  path = os.path.join(folder, SETTINGS_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    fields = json.load(f)
  fields["short_side"] = tuple(fields["short_side"])
  return Settings(**fields)


def write(data_dir: str, *, num_train: int, num_validation: int,
          short_side: tuple[int, int] = (200, 500), quality: int = 90,
          seed: int = 0, log=None) -> str:
  """Writes (or reuses) a synthetic ``imagenet2012`` under ``data_dir``.

  Args:
    data_dir: the tfds data_dir (``config.data.tfds_data_dir``).
    num_train: examples of the "train" split.
    num_validation: examples of the "validation" split (the loader's test).
    short_side: inclusive range of the images' shorter side.
    quality: JPEG quality.
    seed: what the images are drawn from.
    log: called with a line of progress now and then (e.g. ``print``).

  Returns:
    The dataset's version folder.

  Raises:
    SyntheticError: the folder holds an imagenet2012 that is not a synthetic
      set of exactly these settings.
  """
  # Imported here: tfds is slow to import and only this tool writes with it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import example_serializer  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import file_adapters  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import naming  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import splits as splits_lib  # pylint: disable=g-import-not-at-top

  settings = Settings(num_train, num_validation, tuple(short_side), quality,
                      seed)
  final = version_dir(data_dir)
  if os.path.isdir(final):
    if _recorded(final) == settings:
      return final
    raise SyntheticError(
        f"{final} already holds an {NAME} dataset "
        f"{'made with other settings' if _recorded(final) else 'that this tool did not make'}"
        f"; choose another folder or delete that one.")
  partial = f"{final}.incomplete-{os.getpid()}"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  builder = tfds.builder(NAME, data_dir=data_dir, file_format="array_record")
  info = builder.info
  features = info.features
  serializer = example_serializer.ExampleSerializer(
      features.get_serialized_info())
  split_infos = []
  for split, count in (("train", num_train), ("validation", num_validation)):
    template = naming.ShardedFileTemplate(
        data_dir=partial, dataset_name=NAME, split=split,
        filetype_suffix="array_record")
    sizes = []

    def records(split=split, count=count, sizes=sizes):
      for i, example in enumerate(_examples(settings, split, count)):
        record = serializer.serialize_example(features.encode_example(example))
        sizes.append(len(record))
        if log and (i + 1) % 500 == 0:
          log(f"{split}: {i + 1}/{count} images")
        yield None, record

    file_adapters.ArrayRecordFileAdapter.write_examples(
        template.sharded_filepath(shard_index=0, num_shards=1), records())
    split_infos.append(splits_lib.SplitInfo(
        name=split, shard_lengths=[count], num_bytes=sum(sizes),
        filename_template=template.replace(data_dir=final)))
  info.set_splits(splits_lib.SplitDict(split_infos))
  info.write_to_directory(partial)
  with open(os.path.join(partial, SETTINGS_FILE), "w") as f:
    json.dump(dataclasses.asdict(settings), f)
  os.rename(partial, final)
  return final


def main(argv: list[str]) -> int:
  """The command line; see the module docstring."""
  parser = argparse.ArgumentParser(
      prog="tools/synthetic_imagenet.py",
      description="Write a synthetic imagenet2012 as tfds array_record files.")
  parser.add_argument("--dir", required=True,
                      help="tfds data_dir to write into (created if needed)")
  parser.add_argument("--num_train", type=int, default=2000)
  parser.add_argument("--num_validation", type=int, default=500)
  parser.add_argument("--short_side", default="200,500",
                      help="inclusive range of the shorter side, 'LO,HI'")
  parser.add_argument("--quality", type=int, default=90)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  try:
    lo, hi = (int(v) for v in args.short_side.split(","))
  except ValueError:
    parser.error(f"--short_side {args.short_side!r} is not 'LO,HI'")
  if not (1 <= lo <= hi and args.num_train > 0 and args.num_validation > 0
          and 1 <= args.quality <= 100):
    parser.error("need 1 <= LO <= HI, --num_train and --num_validation > 0, "
                 "--quality in [1, 100]")
  try:
    folder = write(os.path.abspath(args.dir), num_train=args.num_train,
                   num_validation=args.num_validation, short_side=(lo, hi),
                   quality=args.quality, seed=args.seed, log=print)
  except SyntheticError as e:
    print(f"{parser.prog}: error: {e}", file=sys.stderr)
    return 2
  print(f"{NAME} is in {folder}; read it with "
        f"--config.data.tfds_data_dir={os.path.abspath(args.dir)}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
