"""Images to float32 batches in [0, 1], with the papers' training augmentations.

``preprocess`` is the one function the data pipeline calls: evaluation never
augments; training applies TRADES' CIFAR pad-4 crop and flip ("crop_flip") or
the Inception random-resized crop ("inception", ImageNet). Random choices for
an example depend only on the batch's seed and the example's global position,
so every host, and every resumed run, draws the same augmentation.

Example::

    import numpy as np
    from lfr_jax import preprocessing
    images = np.zeros((2, 32, 32, 3), np.uint8)
    x = preprocessing.preprocess(images, train=True, augment="crop_flip",
                                 rng_seed=(0, 1, 2))
    x.shape, x.dtype                         # ((2, 32, 32, 3), dtype('float32'))
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  squeeze = image.ndim == 3 and image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  out = np.asarray(pil.resize((size[1], size[0]), Image.BILINEAR))
  return out[..., None] if squeeze else out


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
  # Resize the shorter side to size / 0.875, then crop the centre (ImageNet eval).
  h, w = image.shape[:2]
  scale = size / 0.875 / min(h, w)
  h2, w2 = max(size, round(h * scale)), max(size, round(w * scale))
  image = _resize(image, (h2, w2))
  top, left = (h2 - size) // 2, (w2 - size) // 2
  return image[top:top + size, left:left + size]


def _inception_crop(image: np.ndarray, size: int, rng: np.random.Generator
                    ) -> np.ndarray:
  # Random area in [8%, 100%], aspect ratio in [3/4, 4/3], then a flip.
  h, w = image.shape[:2]
  for _ in range(10):
    area = h * w * rng.uniform(0.08, 1.0)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch, cw = round(np.sqrt(area / ratio)), round(np.sqrt(area * ratio))
    if 0 < ch <= h and 0 < cw <= w:
      top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      crop = _resize(image[top:top + ch, left:left + cw], (size, size))
      break
  else:
    crop = _center_crop(image, size)
  return crop[:, ::-1] if rng.random() < 0.5 else crop


def _crop_flip(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray
               ) -> np.ndarray:
  # TRADES' CIFAR augmentation: zero-pad 4, random 32x32 crop, random h-flip.
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  out = np.empty_like(images)
  for i in range(n):
    top, left = offsets[i]
    crop = padded[i, top:top + h, left:left + w]
    out[i] = crop[:, ::-1] if flips[i] else crop
  return out


def preprocess(images, *, train: bool, augment: str = "none",
               image_size: int = 0, rng_seed: Sequence[int] = (0,),
               positions: np.ndarray | None = None) -> np.ndarray:
  """Turns uint8 images into a float32 batch in [0, 1], augmenting if asked.

  Random choices for example ``j`` depend only on ``rng_seed`` and its global
  position ``positions[j]`` in the batch, so every host (and every resumed
  run) draws the same augmentation for the same example.

  Args:
    images: uint8 (N, H, W, C) array, or a list of uint8 (H, W, C) arrays of
      varying size.
    train: apply ``augment`` (evaluation never augments).
    augment: "none", "crop_flip" (pad-4 crop + flip) or "inception" (random
      resized crop + flip; ImageNet).
    image_size: output side length; 0 keeps the native size.
    rng_seed: entropy of this batch, e.g. (seed, epoch, step).
    positions: global positions of the examples in their batch (default
      ``arange(N)``).

  Returns:
    float32 (N, S, S, C) in [0, 1].
  """
  n = len(images)
  positions = np.arange(n) if positions is None else np.asarray(positions)
  rngs = [np.random.default_rng([*rng_seed, int(p)]) for p in positions] if (
      train and augment != "none") else None
  if train and augment == "inception":
    if not image_size:
      raise ValueError("augment 'inception' needs data.image_size > 0.")
    out = np.stack([_inception_crop(np.asarray(im), image_size, r)
                    for im, r in zip(images, rngs)])
  else:
    fixed = not isinstance(images, list)
    if image_size and (not fixed or images.shape[1:3] != (image_size,) * 2):
      images = np.stack([_center_crop(np.asarray(im), image_size) for im in images])
    else:
      images = np.stack(images) if isinstance(images, list) else images
    if train and augment == "crop_flip":
      draws = [(r.integers(0, 9, 2), r.random() < 0.5) for r in rngs]
      images = _crop_flip(images, np.array([d[0] for d in draws]),
                          np.array([d[1] for d in draws]))
    out = images
  out = np.asarray(out, np.float32) / 255.0
  return out if out.ndim == 4 else out[..., None]
