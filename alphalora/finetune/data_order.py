"""The order of the training examples: a seeded permutation per epoch, read as one endless
stream and split between processes, so the data position is given by the step alone and a
resumed run sees the same batches as an uninterrupted one."""

from __future__ import annotations

import random
from functools import lru_cache

from alphalora.errors import AlphaLoRAError


@lru_cache(maxsize=64)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return tuple(order)


def batch_indices(
    n: int,
    seed: int,
    micro_step: int,
    batch_size: int,
    num_processes: int = 1,
    process_index: int = 0,
) -> list[int]:
    """Example indices of one micro-batch: a seeded permutation per epoch, read as one endless
    stream, so the data position is fully given by ``micro_step`` (resumable, no state)."""
    if n < 1:
        raise AlphaLoRAError("The training split is empty; the task needs training examples.")
    start = (micro_step * num_processes + process_index) * batch_size
    out = []
    for pos in range(start, start + batch_size):
        epoch, offset = divmod(pos, n)
        out.append(_epoch_order(n, seed, epoch)[offset])
    return out
