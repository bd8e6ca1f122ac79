"""Per-epoch draw plans: deterministic, sharded without overlap, labeled with replacement."""

from __future__ import annotations

from collections import Counter

from xmask.train.data import epoch_plan


def test_plan_is_deterministic_and_epoch_dependent() -> None:
    a = epoch_plan(1, 0, [0, 1, 2], list(range(10)), 4, 2, 3)
    b = epoch_plan(1, 0, [0, 1, 2], list(range(10)), 4, 2, 3)
    c = epoch_plan(1, 1, [0, 1, 2], list(range(10)), 4, 2, 3)
    assert a == b and a != c
    assert all(len(p.labeled) == 2 and len(p.unlabeled) == 3 for p in a)


def test_unlabeled_pool_is_covered_once_per_pass() -> None:
    pool = list(range(12))
    plan = epoch_plan(0, 0, [0], pool, 4, 1, 3)
    drawn = [d.index for p in plan for d in p.unlabeled]
    assert sorted(drawn) == pool
    longer = epoch_plan(0, 0, [0], pool, 8, 1, 3)
    assert Counter(d.index for p in longer for d in p.unlabeled) == dict.fromkeys(pool, 2)


def test_labeled_draws_come_from_the_labeled_list() -> None:
    plan = epoch_plan(3, 2, [5, 7], list(range(20)), 50, 4, 0)
    drawn = Counter(d.index for p in plan for d in p.labeled)
    assert set(drawn) == {5, 7} and sum(drawn.values()) == 200
    assert all(p.unlabeled == [] for p in plan)


def test_ranks_share_each_step_without_overlap() -> None:
    args = (9, 4, [0, 1, 2, 3], list(range(16)), 2, 2, 2)
    whole = epoch_plan(*args[:5], 4, 4)
    ranks = [epoch_plan(*args, rank=r, world_size=2) for r in range(2)]
    for step in range(2):
        merged = ranks[0][step].unlabeled + ranks[1][step].unlabeled
        assert merged == whole[step].unlabeled
        assert not {d.seed for d in ranks[0][step].unlabeled} & {
            d.seed for d in ranks[1][step].unlabeled
        }
