"""Images to float32 batches in [0, 1], with the papers' training augmentations.

``preprocess`` is the one function the data pipeline calls: evaluation never
augments; training applies TRADES' CIFAR pad-4 crop and flip ("crop_flip") or
the Inception random-resized crop ("inception", ImageNet). Random choices for
an example depend only on the batch's seed and the example's global position,
so every host, and every resumed run, draws the same augmentation.

Images come as one uint8 array, as a list of uint8 arrays of varying sizes, or
as a list of decoded PIL images (what a tfds source reads: :func:`decode`).
A PIL image is cropped and resized in one resampling pass over the crop's
source rectangle (``Image.resize(box=...)``), never copied to numpy at full
size: after the JPEG decode itself, that pass is the cost of an ImageNet
example.

Example::

    import numpy as np
    from lfr_jax import preprocessing
    images = np.zeros((2, 32, 32, 3), np.uint8)
    x = preprocessing.preprocess(images, train=True, augment="crop_flip",
                                 rng_seed=(0, 1, 2))
    x.shape, x.dtype                         # ((2, 32, 32, 3), dtype('float32'))
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np

# PIL modes of 1- and 3-channel images.
_MODES = {1: "L", 3: "RGB"}


def decode(encoded: bytes, channels: int):
  """Decodes an encoded image (JPEG, PNG) into a PIL image of ``channels``.

  Args:
    encoded: the file's bytes.
    channels: 1 (greyscale) or 3 (RGB); other modes are converted.

  Returns:
    The decoded ``PIL.Image.Image``.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = Image.open(io.BytesIO(encoded))
  mode = _MODES[channels]
  if image.mode != mode:
    image = image.convert(mode)
  image.load()
  return image


def _is_pil(image: Any) -> bool:
  return hasattr(image, "getbands")


def _as_array(image: Any) -> np.ndarray:
  """(H, W, C) uint8 from an array or a PIL image."""
  out = np.asarray(image)
  return out[..., None] if out.ndim == 2 else out


def _as_pil(image: Any):
  if _is_pil(image):
    return image
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image)
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _height_width(image: Any) -> tuple[int, int]:
  if _is_pil(image):
    return image.size[1], image.size[0]
  return image.shape[0], image.shape[1]


def _resized_box(image: Any, box: tuple[float, float, float, float],
                 size: tuple[int, int]) -> np.ndarray:
  """The ``box`` (left, top, right, bottom) of ``image`` resampled to ``size``.

  One bilinear (antialiased when shrinking) pass over the source rectangle;
  pixels next to the box enter the filter as they would when resizing the
  whole image and cropping.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = _as_pil(image).resize((size[1], size[0]), Image.BILINEAR, box=box)
  return _as_array(out)


def _center_crop(image: Any, size: int) -> np.ndarray:
  # Resize the shorter side to size / 0.875, then crop the centre (ImageNet
  # eval), as one resampling of the centre's source rectangle.
  h, w = _height_width(image)
  scale = size / 0.875 / min(h, w)
  h2, w2 = max(size, round(h * scale)), max(size, round(w * scale))
  top, left = (h2 - size) // 2, (w2 - size) // 2
  sy, sx = h / h2, w / w2
  box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
  return _resized_box(image, box, (size, size))


def _inception_crop(image: Any, size: int, rng: np.random.Generator
                    ) -> np.ndarray:
  # Random area in [8%, 100%], aspect ratio in [3/4, 4/3], then a flip.
  h, w = _height_width(image)
  for _ in range(10):
    area = h * w * rng.uniform(0.08, 1.0)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch, cw = round(np.sqrt(area / ratio)), round(np.sqrt(area * ratio))
    if 0 < ch <= h and 0 < cw <= w:
      top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
      crop = _resized_box(image, (left, top, left + cw, top + ch), (size, size))
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


def to_float(images: np.ndarray) -> np.ndarray:
  """float32 ``images / 255`` in one pass (the values of float32(images) / 255).

  Args:
    images: uint8 batch (N, H, W, C), or (N, H, W) which gains a channel axis.

  Returns:
    float32 (N, H, W, C) in [0, 1].
  """
  out = np.divide(images, np.float32(255), dtype=np.float32)
  return out if out.ndim == 4 else out[..., None]


def _stack(crops, n: int) -> np.ndarray:
  out = None
  for i, crop in enumerate(crops):
    if out is None:
      out = np.empty((n, *crop.shape), np.uint8)
    out[i] = crop
  return out


def preprocess_uint8(images, *, train: bool, augment: str = "none",
                     image_size: int = 0, rng_seed: Sequence[int] = (0,),
                     positions: np.ndarray | None = None) -> np.ndarray:
  """:func:`preprocess` before the float conversion: a uint8 batch.

  What the data workers send back: a quarter of the bytes of the float32
  batch, converted by :func:`to_float` where it is used.

  Args:
    images: see :func:`preprocess`.
    train: see :func:`preprocess`.
    augment: see :func:`preprocess`.
    image_size: see :func:`preprocess`.
    rng_seed: see :func:`preprocess`.
    positions: see :func:`preprocess`.

  Returns:
    uint8 (N, S, S, C), or the images as given (an array that needs no
    change).
  """
  n = len(images)
  positions = np.arange(n) if positions is None else np.asarray(positions)
  rngs = [np.random.default_rng([*rng_seed, int(p)]) for p in positions] if (
      train and augment != "none") else None
  if train and augment == "inception":
    if not image_size:
      raise ValueError("augment 'inception' needs data.image_size > 0.")
    return _stack(
        (_inception_crop(im, image_size, r) for im, r in zip(images, rngs)), n)
  fixed = isinstance(images, np.ndarray)
  if image_size and (not fixed or images.shape[1:3] != (image_size,) * 2):
    images = _stack((_center_crop(im, image_size) for im in images), n)
  elif not fixed:
    images = _stack((_as_array(im) for im in images), n)
  if train and augment == "crop_flip":
    draws = [(r.integers(0, 9, 2), r.random() < 0.5) for r in rngs]
    images = _crop_flip(images, np.array([d[0] for d in draws]),
                        np.array([d[1] for d in draws]))
  return images


def preprocess(images, *, train: bool, augment: str = "none",
               image_size: int = 0, rng_seed: Sequence[int] = (0,),
               positions: np.ndarray | None = None) -> np.ndarray:
  """Turns uint8 images into a float32 batch in [0, 1], augmenting if asked.

  Random choices for example ``j`` depend only on ``rng_seed`` and its global
  position ``positions[j]`` in the batch, so every host (and every resumed
  run) draws the same augmentation for the same example.

  Args:
    images: uint8 (N, H, W, C) array, or a list of uint8 (H, W, C) arrays or
      PIL images (see :func:`decode`) of varying size.
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
  return to_float(preprocess_uint8(
      images, train=train, augment=augment, image_size=image_size,
      rng_seed=rng_seed, positions=positions))
