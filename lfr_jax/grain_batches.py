"""Whole batches made in Grain worker processes, handed back in order.

Decoding and augmenting ImageNet is CPU work in Python and PIL; one process
cannot keep up with a pod's step, so :mod:`lfr_jax.data` hands it to Grain
(``grain`` on PyPI, the JAX ecosystem's loader): a random-access
``MapDataset`` over the steps to make, mapped by a picklable batch maker,
then ``mp_prefetch`` over ``workers`` processes. Grain slices the steps over
the workers (worker ``w`` makes steps ``w, w + workers, ...``) and
interleaves their outputs back into step order, moving the arrays through
shared memory.

Each element is a whole batch, made by the same function the in-process path
calls, so the batch of a step is the same bytes with any number of workers
(per-example elements would be batched inside each worker, and the batches'
contents would depend on the worker count). Resuming needs no iterator state:
a run restarts the map at its next step.

Example::

    from lfr_jax import grain_batches
    squares = grain_batches.ordered_map(lambda i: i * i, range(3), workers=0)
    list(squares)                            # [0, 1, 4]
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

# Finished batches each worker keeps ready: one to hand over, one to spare.
BUFFER_PER_WORKER = 2


def _let_grain_read_its_flags() -> None:
  """Grain reads an absl flag of its own when it starts workers.

  Outside an absl program (a library call, pytest) flags are unparsed and
  that read raises UnparsedFlagAccessError; marking them parsed gives every
  flag its default, as an absl program with no flags on its command line has.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def ordered_map(make: Callable[[int], Any], items: range, workers: int
                ) -> Iterator[Any]:
  """Yields ``make(i)`` for ``i`` in ``items``, made in ``workers`` processes.

  Args:
    make: a picklable callable (it is sent to every worker).
    items: the arguments, in the order the results are wanted.
    workers: worker processes; 0 makes them in this process, one by one.

  Yields:
    The results, in the order of ``items``.
  """
  if workers <= 0:
    yield from (make(i) for i in items)
    return
  # Imported here: Grain imports jax and starts nothing until iterated.
  import grain  # pylint: disable=g-import-not-at-top
  _let_grain_read_its_flags()
  dataset = (grain.MapDataset.range(items.start, items.stop, items.step)
             .map(make)
             # One batch at a time in each worker: the processes are the
             # parallelism, threads would only contend for its GIL.
             .to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                prefetch_buffer_size=1))
             .mp_prefetch(grain.MultiprocessingOptions(
                 num_workers=workers,
                 per_worker_buffer_size=BUFFER_PER_WORKER)))
  iterator = iter(dataset)
  try:
    yield from iterator
  finally:
    # Stops the workers now rather than at garbage collection.
    iterator.close()
