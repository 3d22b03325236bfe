"""DiscreteBCQ and DiscreteCQL (issue 17): updates, part isolation, greedy and epsilon-greedy actions under masks,
the values d_q reads, state, seeds, learning a chain MDP, and make_algorithm's dispatch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from tensordict import TensorDict
from torch import nn
from torchrl.data import Bounded, Categorical, Composite, OneHot, Unbounded

from torchrl_otc.configs.algorithms import BCQConfig, CQLConfig
from torchrl_otc.data.synthetic import CHAIN_STATES, masked_chain
from torchrl_otc.modules.distances import ValueDistance, ValueFunctions
from torchrl_otc.trainers.algorithms import (
    AWAC,
    BCQ,
    CQL,
    DISCRETE_ALGORITHMS,
    TD3BC,
    DiscreteBCQ,
    DiscreteCQL,
    make_algorithm,
)

OBS, N = 5, 4
CLASSES = {"bcq": DiscreteBCQ, "cql": DiscreteCQL}


def small(name: str, **overrides):
    cls = BCQConfig if name == "bcq" else CQLConfig
    return cls(**{"hidden_sizes": (16,), **overrides})


def build(name: str, seed: int = 0, **overrides):
    return CLASSES[name](Unbounded(shape=(OBS,)), OneHot(N), small(name, **overrides), seed=seed)


def random_masks(rows: int, g: torch.Generator, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Masks varying per row, each with at least one available action (``keep`` forced available)."""
    mask = torch.rand(rows, N, generator=g) < 0.5
    if keep is None:
        keep = torch.randint(N, (rows,), generator=g)
    mask[torch.arange(rows), keep] = True
    return mask


def make_batch(
    n: int = 32, seed: int = 0, *, masks: bool = False, dtype: torch.dtype = torch.bool
) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(N, (n,), generator=g)
    td = TensorDict(
        {
            "observation": torch.randn(n, OBS, generator=g),
            "action": F.one_hot(index, N).to(dtype),
            ("next", "observation"): torch.randn(n, OBS, generator=g),
            ("next", "reward"): torch.randn(n, 1, generator=g),
            ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        [n],
    )
    if masks:
        td.set("action_mask", random_masks(n, g, keep=index))
        td.set(("next", "action_mask"), random_masks(n, g))
    return td


def params(algo, part: str) -> list[torch.Tensor]:
    return [p.detach().clone() for p in algo.parameters(part)]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def set_constant_q(algo, q: list[float], logits: list[float] | None = None) -> None:
    """Q(s, .) = q (and G's logits = logits) in every state: zero last-layer weights, the bias set."""
    nets = [(algo.loss.value_network, q)]
    if logits is not None:
        nets.append((algo.loss.imitation_network, logits))
    with torch.no_grad():
        for net, bias in nets:
            last = net.module[-1]
            last.weight.zero_()
            last.bias.copy_(torch.tensor(bias))


# ------------------------------------------------------------------------------------------------ update
@pytest.mark.parametrize("name", ["bcq", "cql"])
@pytest.mark.parametrize("masks", [False, True])
@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.float32])
def test_update_returns_finite_losses(name, masks, dtype):
    algo = build(name)
    batch = make_batch(masks=masks, dtype=dtype)
    before = batch.clone()
    metrics = algo.update(batch)
    losses = {"bcq": {"loss_qvalue", "loss_imitation"}, "cql": {"loss_qvalue", "loss_cql"}}[name]
    assert losses <= set(metrics)
    assert all(isinstance(v, float) and torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert algo.num_updates == 1
    # the data is untouched (no key written, no tensor changed)
    assert (batch == before).all() and set(batch.keys(True)) == set(before.keys(True))


def test_masked_action_in_the_batch_is_refused():
    batch = make_batch(masks=True)
    batch["action_mask"][0] = ~batch["action"][0]
    for name in CLASSES:
        with pytest.raises(ValueError, match="marks unavailable"):
            build(name).update(batch)


@pytest.mark.parametrize("name, parts", [("bcq", ["critic", "imitation"]), ("cql", ["critic"])])
def test_parts_and_their_learning_rates(name, parts):
    algo = build(name, critic_lr=0.01, actor_lr=0.02)
    assert list(algo.optimizers) == parts
    assert algo.optimizers["critic"].param_groups[0]["lr"] == 0.01
    if name == "bcq":
        assert algo.optimizers["imitation"].param_groups[0]["lr"] == 0.02
        value = {id(p) for p in algo.loss.value_network_params.values(True, True)}
        assert value == {id(p) for p in algo.parameters("critic")}


@pytest.mark.parametrize("frozen", ["critic", "imitation"])
def test_bcq_parts_change_only_through_their_own_optimiser(frozen):
    algo = build("bcq")
    moving = ({"critic", "imitation"} - {frozen}).pop()
    for group in algo.optimizers[frozen].param_groups:
        group["lr"] = 0.0
    before_frozen, before_moving = params(algo, frozen), params(algo, moving)
    algo.update(make_batch(masks=True))
    assert same(params(algo, frozen), before_frozen)
    assert not same(params(algo, moving), before_moving)


def test_bcq_each_loss_reaches_only_its_network():
    algo = build("bcq")
    batch = make_batch(masks=True)
    for method, reached, untouched in (
        ("qvalue_loss", "critic", "imitation"),
        ("imitation_loss", "imitation", "critic"),
    ):
        for p in algo.parameters():
            p.grad = None
        getattr(algo.loss, method)(batch)[0].backward()
        assert all(p.grad is None for p in algo.parameters(untouched)), method
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.parameters(reached))


@pytest.mark.parametrize("name", ["bcq", "cql"])
def test_target_update_is_soft_with_tau(name):
    algo = build(name, tau=0.25)
    target = algo.loss.target_value_network_params
    before = [t.clone() for t in target.values(True, True)]
    algo.update(make_batch())
    online = list(algo.loss.value_network_params.values(True, True))
    for b, t, o in zip(before, target.values(True, True), online, strict=True):
        assert torch.allclose(t, 0.75 * b + 0.25 * o.detach(), atol=1e-6)


def test_cql_min_q_weight_weights_the_conservative_term():
    batch = make_batch()
    grads = {}
    for weight in (0.0, 3.0):
        algo = build("cql", min_q_weight=weight, critic_lr=1.0)
        for group in algo.optimizers["critic"].param_groups:
            group["lr"] = 0.0  # look at the gradient only
        algo.update(batch)
        grads[weight] = [p.grad.clone() for p in algo.parameters("critic")]
    loss = build("cql").loss
    td = batch.clone()
    loss.value_loss(td)
    cql, _ = loss.cql_loss(td)
    cql_grads = torch.autograd.grad(3.0 * cql, list(loss.value_network_params.values(True, True)))
    for g0, g3, gc in zip(grads[0.0], grads[3.0], cql_grads, strict=True):
        assert torch.allclose(g3 - g0, gc, atol=1e-5)


# ------------------------------------------------------------------------------------------------ acting
@pytest.mark.parametrize("name", ["bcq", "cql"])
def test_act_is_a_one_hot_allowed_action(name):
    algo = build(name, seed=3)
    if name == "bcq":  # sharpen G so that the threshold excludes actions in many rows
        with torch.no_grad():
            algo.loss.imitation_network.module[-1].weight.mul_(20.0)
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(300, OBS, generator=g)
    mask = random_masks(300, g)
    action = algo.act(TensorDict({"observation": obs, "action_mask": mask}, [300]))["action"]
    assert action.dtype == torch.get_default_dtype() and OneHot(N).is_in(action.bool())
    assert torch.equal(action.sum(-1), torch.ones(300))
    assert not (action.bool() & ~mask).any()
    with torch.no_grad():
        q = algo.action_values(obs)
    allowed = mask
    if name == "bcq":  # never below the threshold either
        logits = algo.loss.imitation_logits({"observation": obs})
        probs = torch.softmax(logits.masked_fill(~mask, float("-inf")), -1)
        ratio = probs / probs.max(-1, keepdim=True).values
        chosen = ratio.gather(-1, action.argmax(-1, keepdim=True))
        assert (chosen > algo.config.discrete_threshold).all()
        allowed = mask & (ratio > algo.config.discrete_threshold)
        assert (mask & ~allowed).any(dim=-1).float().mean() > 0.2  # the threshold matters here
    expected = q.masked_fill(~allowed, float("-inf")).argmax(-1)
    assert torch.equal(action.argmax(-1), expected)
    # without a mask: the greedy action over all (BCQ: threshold-allowed) actions
    free = algo.act(TensorDict({"observation": obs}, [300]))["action"]
    assert torch.equal(free.argmax(-1), algo.greedy_action(obs).argmax(-1))


def test_bcq_threshold_excludes_a_rare_action_with_the_largest_q():
    algo = build("bcq", discrete_threshold=0.3)
    # G = softmax(log [0.5, 0.3, 0.19, 0.01]): ratios 1, 0.6, 0.38, 0.02; Q best on the rare action 3
    g_logits = torch.log(torch.tensor([0.5, 0.3, 0.19, 0.01])).tolist()
    set_constant_q(algo, [0.0, 1.0, 2.0, 9.0], g_logits)
    obs = torch.randn(6, OBS)
    assert (algo.act(TensorDict({"observation": obs}, [6]))["action"].argmax(-1) == 2).all()
    mask = torch.tensor([True, True, False, True]).expand(6, N)
    action = algo.act(TensorDict({"observation": obs, "action_mask": mask}, [6]))["action"]
    assert (action.argmax(-1) == 1).all()


@pytest.mark.parametrize("name", ["bcq", "cql"])
def test_explore_with_epsilon_one_is_uniform_over_available_actions(name):
    algo = build(name)
    rows = 4000
    patterns = torch.tensor([[True, False, True, True], [False, True, False, False]])
    mask = patterns[torch.arange(rows) % 2]
    td = TensorDict({"observation": torch.randn(rows, OBS), "action_mask": mask}, [rows])
    action = algo.explore(td, 1.0, torch.Generator().manual_seed(0))["action"]
    assert OneHot(N).is_in(action.bool()) and not (action.bool() & ~mask).any()
    counts = action[0::2].sum(0)
    assert counts[1] == 0
    assert stats.chisquare(counts[[0, 2, 3]].numpy()).pvalue > 1e-3, counts
    assert (action[1::2].argmax(-1) == 1).all()


@pytest.mark.parametrize("name", ["bcq", "cql"])
def test_explore_with_epsilon_zero_is_act_and_is_seeded(name):
    algo = build(name, seed=2)
    g = torch.Generator().manual_seed(4)
    obs, mask = torch.randn(50, OBS, generator=g), random_masks(50, g)
    td = TensorDict({"observation": obs, "action_mask": mask}, [50])
    greedy = algo.act(td.clone())["action"]
    assert torch.equal(algo.explore(td.clone(), 0.0, torch.Generator())["action"], greedy)
    a = algo.explore(td.clone(), 0.5, torch.Generator().manual_seed(9))["action"]
    b = algo.explore(td.clone(), 0.5, torch.Generator().manual_seed(9))["action"]
    assert torch.equal(a, b) and not torch.equal(a, greedy)
    with pytest.raises(ValueError, match="epsilon"):
        algo.explore(td, 1.5)


def test_a_row_without_available_action_raises():
    algo = build("cql")
    mask = torch.ones(3, N, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match="no available action"):
        algo.act(TensorDict({"observation": torch.randn(3, OBS), "action_mask": mask}, [3]))


# -------------------------------------------------------------------------------------------- values (d_q)
@pytest.mark.parametrize("name", ["bcq", "cql"])
def test_q_value_and_state_value_on_a_hand_set_network(name):
    algo = build(name)
    q = torch.tensor([1.0, -2.0, 3.0, 0.5])
    # G's ratios 1, 0.6, 0.2, 0.2: the threshold 0.3 keeps actions 0 and 1
    g_probs = torch.tensor([0.5, 0.3, 0.1, 0.1])
    set_constant_q(algo, q.tolist(), torch.log(g_probs).tolist() if name == "bcq" else None)
    obs = torch.randn(7, OBS)
    actions = F.one_hot(torch.arange(7) % N, N)
    for dtype in (torch.bool, torch.int64, torch.float32):
        for reduction in ("mean", "min"):
            value = algo.q_value(obs, actions.to(dtype), reduction=reduction)
            assert value.shape == (7,) and torch.allclose(value, q[torch.arange(7) % N])
    policy = algo.state_value(obs, actions="policy")
    sample = algo.state_value(obs, actions="sample", num_samples=3)
    assert policy.shape == sample.shape == (7,)
    if name == "bcq":  # max over the threshold-allowed actions; G renormalised over them
        assert torch.allclose(policy, torch.full((7,), 1.0))
        expected = (0.5 * 1.0 + 0.3 * -2.0) / 0.8
    else:  # max over all actions; the Boltzmann policy softmax(Q)
        assert torch.allclose(policy, torch.full((7,), 3.0))
        expected = float((torch.softmax(q, 0) * q).sum())
    assert torch.allclose(sample, torch.full((7,), expected), atol=1e-5)
    # "policy" is the value of act()'s action
    greedy = algo.act(TensorDict({"observation": obs}, [7]))["action"]
    assert torch.allclose(algo.q_value(obs, greedy), policy)
    with pytest.raises(ValueError, match="actions must be"):
        algo.state_value(obs, actions="uniform")
    with pytest.raises(ValueError, match="reduction"):
        algo.q_value(obs, actions, reduction="max")
    with pytest.raises(ValueError, match="one-hot actions"):
        algo.q_value(obs, torch.zeros(7, 2))


@pytest.mark.parametrize("name", ["bcq", "cql"])
@pytest.mark.parametrize("value_actions", ["policy", "sample"])
def test_the_value_distance_binds_and_reads_the_values(name, value_actions):
    algo = build(name)
    assert isinstance(algo, ValueFunctions)
    distance = ValueDistance(algo, value_actions=value_actions)
    obs, actions = torch.randn(6, OBS), F.one_hot(torch.arange(6) % N, N).bool()
    assert torch.equal(distance.q_function(obs, actions), algo.q_value(obs, actions))
    assert torch.equal(distance.value_function(obs), algo.state_value(obs, value_actions))


# ---------------------------------------------------------------------------------------- state and seeds
@pytest.mark.parametrize("name", ["bcq", "cql"])
def test_state_dict_round_trip_gives_the_same_act_and_next_update(name):
    source, copy = build(name, seed=0), build(name, seed=1)
    source.update(make_batch(seed=5, masks=True))
    copy.load_state_dict(source.state_dict())
    td = TensorDict({"observation": torch.randn(20, OBS)}, [20])
    assert torch.equal(source.act(td.clone())["action"], copy.act(td.clone())["action"])
    batch = make_batch(seed=6, masks=True)
    assert source.update(batch.clone()) == copy.update(batch.clone())
    assert same(params(source, None), params(copy, None))
    for a, b in zip(
        source.loss.target_value_network_params.values(True, True),
        copy.loss.target_value_network_params.values(True, True),
        strict=True,
    ):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="cannot be loaded"):
        build("cql" if name == "bcq" else "bcq").load_state_dict(source.state_dict())


@pytest.mark.parametrize("name", ["bcq", "cql"])
def test_same_seed_same_parameters(name):
    a, b, c = build(name, seed=7), build(name, seed=7), build(name, seed=8)
    assert same(params(a, None), params(b, None))
    assert not same(params(a, None), params(c, None))


# -------------------------------------------------------------------------------------------- learning
CHAIN_GAMMA = 0.9


def chain_dataset() -> TensorDict:
    """The masked chain of :func:`torchrl_otc.data.synthetic.masked_chain`, int64 one-hot actions."""
    return masked_chain(torch.int64)


@pytest.mark.parametrize("name", ["bcq", "cql"])
def test_learns_the_optimal_action_of_a_tiny_chain_mdp(name):
    cfg = small(
        name, hidden_sizes=(32,), discount=CHAIN_GAMMA, tau=0.1, critic_lr=1e-2, actor_lr=1e-2
    )
    algo = make_algorithm(cfg, Unbounded(shape=(CHAIN_STATES,)), OneHot(3), seed=0)
    with torch.no_grad():  # the never-available action 2 looks best: only the masks keep it out
        algo.loss.value_network.module[-1].bias[2] = 5.0
    data = chain_dataset()
    for _ in range(400):
        metrics = algo.update(data)
    assert metrics["loss_qvalue"] < 1e-2
    obs = torch.eye(CHAIN_STATES)[: CHAIN_STATES - 1]
    mask = torch.tensor([[True, True, False]]).expand(3, 3)
    action = algo.act(TensorDict({"observation": obs, "action_mask": mask}, [3]))["action"]
    assert (action.argmax(-1) == 0).all(), action  # "right" in every state
    right = algo.q_value(obs, F.one_hot(torch.zeros(3, dtype=torch.long), 3))
    if name == "bcq":  # CQL's conservative term pushes the values down; BCQ's reach Q*
        assert torch.allclose(right, torch.tensor([0.81, 0.9, 1.0]), atol=0.05), right


# -------------------------------------------------------------------------------------- make_algorithm
def test_make_algorithm_dispatches_on_the_action_spec():
    obs = Unbounded(shape=(OBS,))
    assert DISCRETE_ALGORITHMS == {"bcq": DiscreteBCQ, "cql": DiscreteCQL}
    for name, discrete, continuous in (("bcq", DiscreteBCQ, BCQ), ("cql", DiscreteCQL, CQL)):
        cfg = small(name)
        assert type(make_algorithm(cfg, obs, OneHot(N))) is discrete
        assert type(make_algorithm(cfg, obs, Composite(action=OneHot(N)))) is discrete
        assert type(make_algorithm(cfg, obs, Bounded(0.0, 1.0, (N,)), discrete=True)) is discrete
        assert type(make_algorithm(cfg, obs, Bounded(0.0, 1.0, (N,)))) is continuous
        assert type(make_algorithm(cfg, obs, Bounded(-1.0, 1.0, (2,)))) is continuous
    algo = make_algorithm(small("bcq", discrete_threshold=0.6), obs, OneHot(N))
    assert algo.loss.threshold == 0.6 and algo.num_actions == N


@pytest.mark.parametrize("name, cls", [("awac", AWAC), ("td3bc", TD3BC)])
def test_continuous_only_algorithms_refuse_discrete_actions(name, cls):
    obs = Unbounded(shape=(OBS,))
    message = f"{name} needs continuous actions; on discrete tasks use algo=bcq or algo=cql"
    with pytest.raises(ValueError, match=message):
        make_algorithm(name, obs, OneHot(N))
    with pytest.raises(ValueError, match=message):
        make_algorithm(name, obs, Bounded(0.0, 1.0, (N,)), discrete=True)
    with pytest.raises(ValueError, match="needs continuous actions"):
        cls(obs, OneHot(N))


def test_bad_discrete_specs_and_configs_are_refused():
    obs = Unbounded(shape=(OBS,))
    with pytest.raises(TypeError, match="OneHot"):
        DiscreteBCQ(obs, Categorical(N))
    with pytest.raises(ValueError, match="bounds to be 0 and 1"):
        make_algorithm("cql", obs, Bounded(-1.0, 1.0, (N,)), discrete=True)
    with pytest.raises(ValueError, match="discrete_threshold"):
        BCQConfig(discrete_threshold=1.0)
    with pytest.raises(ValueError, match="Lagrange"):
        build("cql", with_lagrange=True)
    with pytest.raises(ValueError, match="cql_temperature"):
        build("cql", cql_temperature=2.0)
    with pytest.raises(TypeError, match="takes a CQLConfig"):
        DiscreteCQL(obs, OneHot(N), small("bcq"))


def test_config_fields_reach_the_discrete_algorithms():
    bcq = build("bcq", discount=0.5, loss_function="smooth_l1", activation="tanh")
    assert float(bcq.loss.value_estimator.gamma) == pytest.approx(0.5)
    assert bcq.loss.loss_function == "smooth_l1"
    assert any(isinstance(m, nn.Tanh) for m in bcq.loss.imitation_network.modules())
    cql = build("cql", hidden_sizes=(12, 6), tau=0.3)
    widths = [m.out_features for m in cql.loss.value_network.modules() if isinstance(m, nn.Linear)]
    assert widths == [12, 6, N] and 1 - cql.target_updater.eps == pytest.approx(0.3)
