"""Length-bucketed batching: every item once per epoch, equal steps per DDP rank, little padding."""

from __future__ import annotations

import numpy as np
import pytest

from training.length_buckets import LengthBucketBatchSampler, padding_fraction


def lengths(n: int = 203, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 2048, n)  # ~100x spread, as chunk lengths have


@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_item_once_per_epoch_and_equal_steps_per_rank(world):
    lens = lengths()
    samplers = [LengthBucketBatchSampler(lens, 8, num_replicas=world, rank=r, seed=3) for r in range(world)]
    per_rank = [list(s) for s in samplers]
    assert {len(b) for b in per_rank} == {len(samplers[0])}, "ranks must run the same number of steps"
    seen = [i for batches in per_rank for b in batches for i in b]
    assert set(seen) == set(range(len(lens)))
    n_batches = -(-len(lens) // 8)
    assert len(seen) - len(lens) <= (world - 1) * 8  # only the last group repeats batches
    assert sum(len(b) for b in per_rank[0]) >= len(lens) // world - 8
    assert len(samplers[0]) == -(-n_batches // world)


def test_batches_are_similar_in_length_and_order_changes_per_epoch():
    lens = lengths(1000)
    sampler = LengthBucketBatchSampler(lens, 8, seed=1)
    bucketed = list(sampler)
    shuffled = [list(range(i, i + 8)) for i in range(0, 1000, 8)]  # lens is random: a random batching
    assert padding_fraction(lens, bucketed) < 0.1 < 0.3 < padding_fraction(lens, shuffled)
    assert list(sampler) == bucketed, "same epoch, same order"
    sampler.set_epoch(1)
    again = list(sampler)
    assert again != bucketed and sorted(map(sorted, again)) != sorted(map(sorted, bucketed))
    # the ranks of one step get neighbouring batches of the sorted pool: similar work per step
    pair = [LengthBucketBatchSampler(lens, 8, num_replicas=2, rank=r, seed=1) for r in (0, 1)]
    gaps = [abs(int(lens[a].max()) - int(lens[b].max())) for a, b in zip(*pair)]
    assert np.median(gaps) < 50


def test_unshuffled_is_sorted_and_drop_last_keeps_full_batches():
    lens = lengths(50)
    flat = [i for b in LengthBucketBatchSampler(lens, 8, shuffle=False) for i in b]
    assert list(lens[flat]) == sorted(lens)
    dropped = list(LengthBucketBatchSampler(lens, 8, num_replicas=2, rank=0, drop_last=True))
    assert all(len(b) == 8 for b in dropped) and len(dropped) == len(LengthBucketBatchSampler(lens, 8, 2, 0, drop_last=True)) == 3
    with pytest.raises(ValueError, match="rank=2"):
        LengthBucketBatchSampler(lens, 8, num_replicas=2, rank=2)


@pytest.mark.parametrize("chunks", ["all", "first"])
def test_datasets_report_item_lengths_without_changing_items(tmp_path, chunks):
    from tests.midi_model_factory import tiny_tokenizer, write_tiny_midis
    from training.midi_datasets import MIDIDatasetDynamic, MIDIDatasetPresaved

    files = write_tiny_midis(tmp_path / "midi", n=4)
    tokenizer = tiny_tokenizer(tmp_path / "tok")
    for ds in (MIDIDatasetPresaved(files, tokenizer, 24, tmp_path / "cache", chunks=chunks),
               MIDIDatasetDynamic(files, tokenizer, 24, chunks=chunks)):
        assert ds.lengths() == [len(ds[i]["input_ids"]) for i in range(len(ds))]
        assert len(set(ds.lengths())) > 1  # 24-token windows cut the pieces into chunks of several lengths
