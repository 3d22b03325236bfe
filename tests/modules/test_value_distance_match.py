"""d_q's eq. (1) by sorting (:func:`nearest_on_line`, :meth:`ValueDistance.compare`) against the brute-force matrix.

The matrix path is :class:`L1EmbeddingDistance`'s ``compare`` (``pairwise_l1`` of the ``[B, 1]`` and ``[D, 1]``
values, then ``Comparison.of``): the sorted path must give the same minima, first argmins, tie counts and
next-state distances, and the same distribution of the randomly broken ties.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from torchrl_otc import OTCSampler, ValueDistance
from torchrl_otc.data.samplers.ranking import break_ties
from torchrl_otc.modules.transition_distance import (
    Comparison,
    L1EmbeddingDistance,
    OnlineRows,
    pairwise_l1,
)
from torchrl_otc.modules.value_distance import nearest_on_line


def _q(s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """A critic whose ``Q`` is the first state feature: the test sets the values directly."""
    return s[:, 0] + 0.0 * a.sum(-1)


def _v(s: torch.Tensor) -> torch.Tensor:
    return s.sum(-1)


def _td(q: torch.Tensor, v: torch.Tensor) -> TensorDict:
    """Transitions with ``Q = q`` (under :func:`_q`) and ``V(s') = v`` (under :func:`_v`)."""
    n = q.shape[0]
    return TensorDict(
        {
            "observation": q.unsqueeze(-1),
            "action": torch.zeros(n, 1),
            ("next", "observation"): v.unsqueeze(-1),
            "transition_id": torch.arange(n),
        },
        [n],
    )


class MatrixValueDistance(ValueDistance):
    """The brute-force reference: d_q through the ``[B, D]`` L1 matrix (the path before the sorted one)."""

    def compare(self, candidates, online, *, exclude=None):
        return L1EmbeddingDistance.compare(self, candidates, online, exclude=exclude)


def _brute(x: torch.Tensor, y: torch.Tensor) -> Comparison:
    return Comparison.of(pairwise_l1(x.unsqueeze(-1), y.unsqueeze(-1)), lambda m: m)


# ------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_values_without_ties_equal_the_matrix_argmin(dtype):
    g = torch.Generator().manual_seed(0)
    b, d = 512, 2000
    cands = _td(torch.randn(b, generator=g, dtype=dtype).float(), torch.randn(b, generator=g))
    online = _td(torch.randn(d, generator=g).float(), torch.randn(d, generator=g) + 3.0)
    dist, ref = (
        cls(q_function=_q, value_function=_v) for cls in (ValueDistance, MatrixValueDistance)
    )
    new, old = (x.compare(cands, OnlineRows.of(online)) for x in (dist, ref))
    assert torch.all(old.ties == 1)  # the premise: continuous values, no ties
    assert torch.equal(new.minimum, old.minimum)
    assert torch.equal(new.argmin, old.argmin)
    assert torch.equal(new.ties, old.ties)
    assert torch.equal(new.next_state(new.argmin), old.next_state(old.argmin))
    # the lazily computed rows are the matrix's rows
    rows = torch.tensor([0, 7, 511])
    assert torch.equal(new.state_action[rows], old.state_action[rows])
    # nearest_on_line in either dtype against the matrix
    x, y = torch.randn(b, generator=g).to(dtype), torch.randn(d, generator=g).to(dtype)
    want = _brute(x, y)
    got = nearest_on_line(x, y)
    for a, w in zip(got, (want.minimum, want.argmin, want.ties)):
        assert torch.equal(a, w)


@pytest.mark.parametrize("seed", range(6))
def test_minima_argmins_and_tie_counts_equal_the_matrix_on_tie_heavy_and_rounding_data(seed):
    """Coarse grids (duplicated values, equidistant neighbours) and large offsets (where ``x -/+ min`` rounds)."""
    g = torch.Generator().manual_seed(seed)
    b, d = 300, 400
    grid = [1.0, 0.5, 0.25][seed % 3]
    offset = [0.0, 1e4, -3.3e5][seed % 3]
    x = (
        offset + torch.round(torch.randn(b, generator=g) * 4 / grid) * grid / 2
    )  # half-grid: midpoints tie
    y = offset + torch.round(torch.randn(d, generator=g) * 4 / grid) * grid
    y = torch.cat([y, y[: d // 3]])[
        torch.randperm(d + d // 3, generator=g)
    ]  # more duplicates, shuffled
    fine = offset + torch.randn(b, generator=g) * 1e-3  # many values a few ulps apart
    for xs, ys in ((x, y), (fine, fine[:200].flip(0)), (fine, y)):
        want = _brute(xs, ys)
        got = nearest_on_line(xs, ys)
        for a, w in zip(got, (want.minimum, want.argmin, want.ties)):
            assert torch.equal(a, w)
    assert int((_brute(x, y).ties > 1).sum()) > b // 4  # the premise: many tied rows


# ------------------------------------------------------------------------------------------- ties
def _tied_draws(
    weights: torch.Tensor | None, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` copies of one candidate at ``Q = 0.5`` among online ``Q = (2, 0, 1, 0, 1, 1, 3)``: its minimum
    ``0.5`` is reached by the columns ``1, 2, 3, 4, 5`` (two values, equidistant, with copies). Returns the
    matches (ties broken as the sampler does) and the brute-force argmin set."""
    online_q = torch.tensor([2.0, 0.0, 1.0, 0.0, 1.0, 1.0, 3.0])
    cands = _td(torch.full((n,), 0.5), torch.zeros(n))
    out = ValueDistance(q_function=_q, value_function=_v).compare(
        cands, OnlineRows.of(_td(online_q, torch.ones(7)))
    )
    brute = _brute(torch.full((n,), 0.5), online_q)
    assert torch.equal(out.ties, brute.ties) and torch.equal(out.minimum, brute.minimum)
    match = break_ties(
        out.state_action,
        out.minimum,
        out.argmin,
        out.ties,
        torch.Generator().manual_seed(seed),
        weights,
    )
    return match, (brute.state_action[0] == brute.minimum[0]).nonzero().squeeze(-1)


def test_tied_matches_stay_in_the_argmin_set_and_are_uniform():
    # n = 10,000 draws over 5 tied columns: 2,000 expected per column (sd 40), chi-square with 4 dof; the
    # seed is fixed, and p > 1e-3 fails a correct sampler with probability 1e-3.
    n = 10_000
    match, tied = _tied_draws(None, n, seed=0)
    assert tied.tolist() == [1, 2, 3, 4, 5]
    assert torch.isin(match, tied).all()
    counts = torch.bincount(match, minlength=7).numpy()
    assert stats.chisquare(counts[1:6]).pvalue > 1e-3, counts


def test_tied_matches_follow_the_online_multiplicities():
    # as the sampler passes |D| draws as distinct rows with counts: P(column) ∝ weight among the tied columns
    # (weights 1, 2, 3, 0, 4 on columns 1..5: column 4 is never chosen). n = 10,000: expected counts 1,000 to
    # 4,000, chi-square with 3 dof, p > 1e-3 as above.
    n = 10_000
    weights = torch.tensor([5, 1, 2, 3, 0, 4, 7])
    match, tied = _tied_draws(weights, n, seed=1)
    assert torch.isin(match, tied).all() and not (match == 4).any()
    counts = torch.bincount(match, minlength=7).numpy()[[1, 2, 3, 5]]
    assert stats.chisquare(counts, f_exp=n * np.array([1, 2, 3, 4]) / 10).pvalue > 1e-3, counts


# ------------------------------------------------------------------------------------------- sampler
def _sampler_batches(distance: ValueDistance, calls: int, online_rows: int = 40) -> TensorDict:
    """Batches of an OTCSampler with ``distance`` on grid-valued data (many ties) and a small online buffer:
    ``|D| = 2000`` draws with replacement from ``online_rows`` rows miss one with probability
    ``online_rows * (1 - 1/online_rows)^2000 < 1e-20``, so the brute-force minimum is over every online row."""
    g = torch.Generator().manual_seed(0)
    offline_q = torch.round(torch.randn(3000, generator=g) * 8) / 4
    online_q = torch.round(torch.randn(online_rows, generator=g) * 8) / 4
    offline = _td(offline_q, torch.randn(3000, generator=g))
    online_data = _td(online_q, torch.randn(online_rows, generator=g))
    online = TensorDictReplayBuffer(storage=LazyTensorStorage(1000))
    sampler = OTCSampler(online, distance=distance, num_candidates=512, num_online=2000)
    merged = TensorDictReplayBuffer(
        storage=LazyTensorStorage(5000), sampler=sampler, batch_size=128
    )
    merged.extend(offline)
    merged.extend(online_data)
    online.extend(online_data)
    merged.set_rng(torch.Generator().manual_seed(0))
    return torch.cat([merged.sample() for _ in range(calls)]), online_q


def test_sampler_match_distance_is_the_brute_force_minimum_and_batches_equal_the_matrix_path():
    batch, online_q = _sampler_batches(ValueDistance(q_function=_q, value_function=_v), calls=10)
    q = batch["observation"][:, 0]
    brute = (q.unsqueeze(-1) - online_q).abs()
    assert torch.equal(batch["otc_match_distance"], brute.min(-1).values)
    matched_q = online_q[batch["otc_match_index"]]
    assert torch.equal(
        (q - matched_q).abs(), batch["otc_match_distance"]
    )  # the match is in the argmin set
    # the sorted path draws the same ties with the same generator use: identical batches
    reference, _ = _sampler_batches(MatrixValueDistance(q_function=_q, value_function=_v), calls=10)
    for key in ("otc_match_index", "otc_match_distance", "otc_distance", "otc_rank", "index"):
        assert torch.equal(batch[key], reference[key]), key


def test_exclusion_falls_back_to_the_matrix():
    g = torch.Generator().manual_seed(2)
    data = _td(torch.round(torch.randn(50, generator=g) * 4) / 2, torch.randn(50, generator=g))
    ids = (data["transition_id"], data["transition_id"][:20])
    new = ValueDistance(q_function=_q, value_function=_v).compare(
        data, OnlineRows.of(data[:20]), exclude=ids
    )
    old = MatrixValueDistance(q_function=_q, value_function=_v).compare(
        data, OnlineRows.of(data[:20]), exclude=ids
    )
    assert torch.equal(new.state_action, old.state_action)
    assert torch.equal(new.minimum, old.minimum) and torch.equal(new.ties, old.ties)


def test_critic_runs_in_chunks_with_the_same_values():
    calls: list[int] = []

    def q(s, a):
        calls.append(s.shape[0])
        return _q(s, a)

    dist = ValueDistance(q_function=q, value_function=_v)
    dist.critic_chunk = 64
    data = _td(torch.randn(150, generator=torch.Generator().manual_seed(3)), torch.randn(150))
    chunked = dist.embed(data)
    dist.critic_chunk = 4096
    assert calls == [64, 64, 22]
    whole = dist.embed(data)
    assert all(torch.equal(a, b) for a, b in zip(chunked, whole))
