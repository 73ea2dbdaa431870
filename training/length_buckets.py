"""Length-bucketed batches for the MIDI transformer: less padding, more real tokens per second.

``collate`` pads a batch to its longest item. Token chunks of the music21 pieces vary ~10x in
length, so random batches are mostly padding; grouping items of similar length removes most of it.

``LengthBucketBatchSampler`` (a ``batch_sampler`` for ``DataLoader``), per epoch:

1. a seeded permutation of all items (the seed mixes ``seed`` and the epoch, as
   ``DistributedSampler`` does) is cut into pools of ``pool_batches * num_replicas`` batches;
2. each pool is sorted by length and cut into batches of ``batch_size`` (so a batch holds items
   of similar length, yet which items meet still changes every epoch);
3. consecutive batches are grouped ``num_replicas`` at a time: the ranks of one step get batches
   of similar length, so no rank waits long for the others at the gradient all-reduce;
4. the groups are shuffled (the model does not see all short batches first), and rank r takes the
   r-th batch of every group. The last group is completed with batches from the start, as
   ``DistributedSampler`` pads its indices, so every rank runs the same number of steps.

With ``shuffle=False`` the order is deterministic: items sorted by length (ties by index).
Lengths come from the datasets (``MIDIDatasetPresaved.lengths()`` reads them from the cache
index without loading tokens).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length items in random order; each DDP rank iterates its own share."""

    def __init__(self, lengths: Sequence[int], batch_size: int, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0, pool_batches: int = 32, drop_last: bool = False):
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas or pool_batches < 1:
            raise ValueError(f"invalid LengthBucketBatchSampler(batch_size={batch_size}, num_replicas={num_replicas}, "
                             f"rank={rank}, pool_batches={pool_batches})")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.num_replicas, self.rank = int(batch_size), int(num_replicas), int(rank)
        self.shuffle, self.seed, self.pool_batches, self.drop_last = shuffle, int(seed), int(pool_batches), drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch (as with DistributedSampler) to draw a new order."""
        self.epoch = int(epoch)

    def _groups(self) -> list[list[np.ndarray]]:
        n = len(self.lengths)
        if n == 0:
            return []
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        pool = n if not self.shuffle else self.pool_batches * self.batch_size * self.num_replicas
        batches: list[np.ndarray] = []
        for start in range(0, n, pool):
            chunk = order[start:start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]  # stable: ties keep the drawn order
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
            batches = batches[: len(batches) - len(batches) % self.num_replicas]
        elif len(batches) % self.num_replicas:  # complete the last group with batches from the start
            batches += [batches[i % len(batches)] for i in range(self.num_replicas - len(batches) % self.num_replicas)]
        groups = [batches[i:i + self.num_replicas] for i in range(0, len(batches), self.num_replicas)]
        if self.shuffle:
            groups = [groups[i] for i in rng.permutation(len(groups))]
        return groups

    def __iter__(self) -> Iterator[list[int]]:
        for group in self._groups():
            yield group[self.rank].tolist()

    def __len__(self) -> int:
        n_batches = -(-len(self.lengths) // self.batch_size) if not self.drop_last else len(self.lengths) // self.batch_size
        if self.drop_last:
            return n_batches // self.num_replicas
        return -(-n_batches // self.num_replicas)


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the padded (batch x longest) token grid that is padding, over ``batches``."""
    lengths = np.asarray(lengths)
    grid = real = 0
    for batch in batches:
        sizes = lengths[np.asarray(batch, dtype=np.int64)]
        grid += int(sizes.max()) * len(sizes)
        real += int(sizes.sum())
    return 1.0 - real / grid if grid else 0.0
