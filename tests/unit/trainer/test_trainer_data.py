"""Built-in data: seeded split, standardisation fitted on the training split, epoch sharding."""

from __future__ import annotations

import pytest
import torch

from coxswain_trainer.data import epoch_shard, eval_shard, load_builtin, split_indices

pytestmark = pytest.mark.unit
CPU = torch.device("cpu")


def test_split_is_seeded_disjoint_and_by_ratio() -> None:
    train, held = split_indices(1000, 0.2, seed=7)
    again, held_again = split_indices(1000, 0.2, seed=7)
    assert (train == again).all()
    assert (held == held_again).all()
    assert len(held) == 200
    assert len(train) == 800
    assert not set(train) & set(held)
    other, _ = split_indices(1000, 0.2, seed=8)
    assert (train != other).any()


def test_standardisation_is_fitted_on_the_training_split_only() -> None:
    data = load_builtin("diabetes", eval_fraction=0.25, seed=0, standardize=True, device=CPU)
    x_train = data.train.x  # type: ignore[attr-defined]
    x_eval = data.eval.x  # type: ignore[attr-defined]
    assert torch.allclose(x_train.mean(0), torch.zeros(10), atol=1e-5)
    assert torch.allclose(x_train.std(0, unbiased=False), torch.ones(10), atol=1e-4)
    # The eval split went through the training statistics, so it is not exactly centred.
    assert x_eval.mean(0).abs().max() > 1e-3
    assert data.kind == "regression"
    assert data.num_outputs == 1
    assert data.target_std > 1.0  # diabetes targets are in the hundreds; trained standardised


def test_digits_is_ten_class_classification_with_labels() -> None:
    data = load_builtin("digits", eval_fraction=0.2, seed=0, standardize=False, device=CPU)
    assert data.kind == "classification"
    assert data.input_shape == (64,)
    assert data.num_outputs == 10
    assert data.labels == [str(d) for d in range(10)]
    assert len(data.train) + len(data.eval) == 1797
    assert data.feature_mean is None


def test_synthetic_regression_follows_the_requested_shape() -> None:
    data = load_builtin(
        "synthetic-regression",
        eval_fraction=0.1,
        seed=3,
        standardize=True,
        device=CPU,
        synthetic_samples=500,
        synthetic_features=5,
    )
    assert data.input_shape == (5,)
    assert len(data.train) == 450


def test_two_rank_shards_together_are_the_one_process_permutation() -> None:
    one = epoch_shard(100, rank=0, world_size=1, seed=1, epoch=3, device=CPU)
    r0 = epoch_shard(100, rank=0, world_size=2, seed=1, epoch=3, device=CPU)
    r1 = epoch_shard(100, rank=1, world_size=2, seed=1, epoch=3, device=CPU)
    assert torch.equal(one[0::2], r0)
    assert torch.equal(one[1::2], r1)
    assert not torch.equal(one, epoch_shard(100, rank=0, world_size=1, seed=1, epoch=4, device=CPU))


@pytest.mark.parametrize(("n", "world"), [(100, 3), (10, 4), (7, 2)])
def test_shard_is_distributed_samplers_including_padding(n: int, world: int) -> None:
    from torch.utils.data import DistributedSampler

    for rank in range(world):
        sampler: DistributedSampler[int] = DistributedSampler(
            range(n),  # type: ignore[arg-type]
            num_replicas=world,
            rank=rank,
            seed=5,
        )
        sampler.set_epoch(2)
        mine = epoch_shard(n, rank=rank, world_size=world, seed=5, epoch=2, device=CPU)
        assert mine.tolist() == list(sampler)


def test_after_a_resize_the_new_ranks_share_exactly_what_the_epoch_still_owes() -> None:
    order = epoch_shard(100, rank=0, world_size=1, seed=1, epoch=0, device=CPU)
    # 2 ranks consumed 3 steps of 10 samples each (5 per rank): the first 30 of the permutation.
    consumed = torch.cat(
        [epoch_shard(100, rank=r, world_size=2, seed=1, epoch=0, device=CPU)[:15] for r in range(2)]
    )
    assert sorted(consumed.tolist()) == sorted(order[:30].tolist())
    # 4 ranks resume: they share the other 70, round-robin, padded from the start to 72.
    rest = [epoch_shard(100, rank=r, world_size=4, seed=1, epoch=0, device=CPU, start=30) for r in range(4)]
    assert [len(r) for r in rest] == [18] * 4
    dealt = torch.stack(rest, dim=1).flatten()
    assert torch.equal(dealt[:70], order[30:])
    assert torch.equal(dealt[70:], order[:2])


def test_eval_shards_cover_each_sample_once() -> None:
    shards = [eval_shard(11, rank=r, world_size=3, device=CPU) for r in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(11))
