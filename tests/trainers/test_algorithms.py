"""The algorithm classes, make_algorithm and the algorithm configs: Table 3 defaults, parts, targets, clipping,
state, and the value functions the value distance d_q reads."""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import Bounded, Composite, Unbounded

from torchrl_otc.configs.algorithms import (
    ALGORITHM_CONFIGS,
    AlgorithmConfig,
    AWACConfig,
    BCQConfig,
    CQLConfig,
    TD3BCConfig,
    make_config,
)
from torchrl_otc.modules.distances import ValueFunctions
from torchrl_otc.objectives import BCQActor, BoundedCQLLoss
from torchrl_otc.objectives.bcq import BCQPerturbation
from torchrl_otc.trainers.algorithms import ALGORITHMS, BCQ, Algorithm, make_algorithm

OBS, ACT = 5, 2
ALGOS = ("bcq", "awac", "cql", "td3bc")
TABLE3 = {  # hidden sizes, actor lr, critic lr, finetuning updates L
    "bcq": ((64, 64), 1e-4, 1e-4, 4000),
    "awac": ((256, 256), 1e-4, 5e-4, 2000),
    "cql": ((256, 256), 1e-4, 1e-4, 2000),
    "td3bc": ((256, 256), 3e-4, 3e-4, 2000),
}


def specs(low: float = -1.0, high: float = 1.0):
    return Unbounded(shape=(OBS,)), Bounded(low, high, shape=(ACT,))


def batch(n: int = 32, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "observation": torch.randn(n, OBS, generator=g),
            "action": torch.rand(n, ACT, generator=g) * 1.8 - 0.9,
            ("next", "observation"): torch.randn(n, OBS, generator=g),
            ("next", "reward"): torch.randn(n, 1, generator=g),
            ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        [n],
    )


def small(name: str, **overrides) -> AlgorithmConfig:
    return make_config(name, hidden_sizes=(16, 16), **overrides)


def hidden_widths(module: nn.Module) -> set[tuple[int, ...]]:
    """The hidden widths of every MLP (a Sequential with Linear children) inside ``module``."""
    out = set()
    for m in module.modules():
        if isinstance(m, nn.Sequential):
            linears = [c for c in m.children() if isinstance(c, nn.Linear)]
            if linears:
                out.add(tuple(lin.out_features for lin in linears[:-1]))
    return out


def value_network(algo):
    """The critics ``Q(s, a)``, or BREMEN's value network ``V(s)`` (it has no critic over actions)."""
    net = getattr(algo.loss, "qvalue_network", None)
    return algo.loss.critic_network if net is None else net


def networks(algo):
    nets = [algo.loss.actor_network, value_network(algo)]
    if algo.name == "bcq":
        nets.append(algo.loss.vae_network)
    return nets


def activations(algo) -> set[type]:
    acts = (nn.ReLU, nn.Tanh, nn.ELU, nn.LeakyReLU)
    return {type(m) for net in networks(algo) for m in net.modules() if isinstance(m, acts)}


def lr(algo, part: str) -> float:
    return algo.optimizers[part].param_groups[0]["lr"]


# ------------------------------------------------------------------------------------------ Table 3
@pytest.mark.parametrize("name", ALGOS)
def test_table3_defaults(name):
    hidden, actor_lr, critic_lr, finetune = TABLE3[name]
    algo = make_algorithm(name, *specs(), seed=0)
    cfg = algo.config
    assert (cfg.discount, cfg.batch_size, cfg.activation) == (0.99, 128, "relu")
    assert cfg.hidden_sizes == hidden and cfg.finetune_updates == finetune
    assert isinstance(cfg.batch_size, int) and isinstance(cfg.finetune_updates, int)
    for net in networks(algo):  # every network, BCQ's VAE included
        assert hidden_widths(net) == {hidden}
    assert activations(algo) == {nn.ReLU}
    assert lr(algo, "actor") == actor_lr and lr(algo, "critic") == critic_lr
    assert float(algo.loss.value_estimator.gamma) == pytest.approx(0.99)
    assert 1 - algo.target_updater.eps == pytest.approx(0.005)
    expected_parts = {"bcq": {"actor", "critic", "vae"}, "cql": {"actor", "critic", "alpha"}}
    assert set(algo.optimizers) == expected_parts.get(name, {"actor", "critic"})


def test_unknown_algorithm_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid algorithms: bcq, awac, cql, td3bc"):
        make_algorithm("iql", *specs())
    with pytest.raises(TypeError, match="AlgorithmConfig"):
        make_algorithm(3, *specs())


def test_names_are_normalised_and_configs_accepted():
    assert make_algorithm("TD3+BC", *specs()).name == "td3bc"
    assert make_algorithm(BCQConfig(hidden_sizes=(8,)), *specs()).config.hidden_sizes == (8,)


# ----------------------------------------------------------------------------------- parts & targets
@pytest.mark.parametrize("name", ALGOS)
def test_optimizers_partition_the_trainable_parameters(name):
    algo = make_algorithm(
        small(name, **({"with_lagrange": True} if name == "cql" else {})), *specs()
    )
    seen: dict[int, str] = {}
    for part, opt in algo.optimizers.items():
        for group in opt.param_groups:
            for p in group["params"]:
                assert id(p) not in seen, f"{part} and {seen[id(p)]} share a parameter"
                seen[id(p)] = part
    trainable = {id(p) for p in algo.loss.parameters() if p.requires_grad}
    assert set(seen) == trainable
    assert {id(p) for p in algo.parameters()} == trainable


def snapshot(algo) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in algo.loss.state_dict().items()}


@pytest.mark.parametrize("name", ALGOS)
def test_update_moves_every_part_then_targets_by_tau(name):
    algo = make_algorithm(small(name, tau=0.1), *specs(), seed=0)
    data = batch()
    if name == "td3bc":  # TD3 schedule: step 1 moves the critic only
        before = snapshot(algo)
        metrics = algo.update(data)
        after = snapshot(algo)
        assert "loss_actor" not in metrics
        moved = {k for k in before if not torch.equal(before[k], after[k])}
        assert moved and all(k.startswith("qvalue_network_params") for k in moved)
    before = snapshot(algo)
    metrics = algo.update(data)
    after = snapshot(algo)
    assert all(isinstance(v, float) for v in metrics.values())
    assert "loss_actor" in metrics and "loss_qvalue" in metrics
    prefixes = {"actor_network_params", "qvalue_network_params"} | (
        {"vae_network_params"} if name == "bcq" else set()
    )
    for prefix in prefixes:
        keys = [k for k in before if k.startswith(prefix) and before[k].is_floating_point()]
        assert any(not torch.equal(before[k], after[k]) for k in keys), f"{prefix} did not move"
    targets = [
        k for k in before if k.startswith("target_") and not torch.equal(before[k], after[k])
    ]
    assert targets
    for key in targets:
        source = after[key[len("target_") :]]
        assert torch.allclose(after[key], 0.9 * before[key] + 0.1 * source, atol=1e-6), key
    if name == "cql":
        assert not torch.equal(before["log_alpha"], after["log_alpha"])


@pytest.mark.parametrize("name", ALGOS)
def test_gradient_clipping_is_per_part(name):
    max_norm = 1e-3
    algo = make_algorithm(small(name, max_grad_norm=max_norm), *specs(), seed=0)
    norms: dict[str, float] = {}

    def recorder(part):
        def hook(opt, args, kwargs):
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            norms[part] = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

        return hook

    for part, opt in algo.optimizers.items():
        opt.register_step_pre_hook(recorder(part))
    algo.update(batch())
    algo.update(batch(seed=1))
    assert set(norms) == set(algo.optimizers)
    for part, norm in norms.items():
        # each part is clipped to max_norm on its own (a global clip would leave every part below it)
        assert norm == pytest.approx(max_norm, rel=1e-3), part


# ------------------------------------------------------------------------------------------- policy
@pytest.mark.parametrize("name", ALGOS)
def test_policy_writes_action_within_bounds_and_follows_training(name):
    algo = make_algorithm(small(name), *specs(-0.5, 0.5), seed=0)
    obs = TensorDict({"observation": torch.randn(64, OBS)}, [64])
    torch.manual_seed(0)
    first = algo.act(obs.clone())["action"]
    assert first.shape == (64, ACT) and first.abs().max() <= 0.5
    assert not first.requires_grad
    for step in range(2):
        algo.update(batch(seed=step))
    torch.manual_seed(0)
    assert not torch.equal(algo.act(obs.clone())["action"], first)


@pytest.mark.parametrize("name", ["awac", "cql"])
def test_gaussian_policies_deploy_the_squashed_mean(name):
    algo = make_algorithm(small(name), *specs(-0.5, 0.5), seed=0)
    obs = torch.randn(10, OBS)
    action = algo.act(TensorDict({"observation": obs}, [10]))["action"]
    loc = algo.policy.module.actor.module[0](TensorDict({"observation": obs}, [10]))["loc"]
    assert torch.allclose(action, 0.5 * torch.tanh(loc), atol=1e-6)
    assert torch.equal(algo.act(TensorDict({"observation": obs}, [10]))["action"], action)


def test_td3bc_policy_is_the_loss_actor():
    algo = make_algorithm(small("td3bc"), *specs(), seed=0)
    policy_params = {id(p) for p in algo.policy.parameters()}
    assert policy_params == {
        id(p) for p in algo.loss.actor_network_params.values(True, True) if p.requires_grad
    }


# --------------------------------------------------------------------------------- seeds and state
@pytest.mark.parametrize("name", ALGOS)
def test_seed_gives_identical_parameters_and_leaves_global_rng(name):
    state = torch.get_rng_state()
    a = make_algorithm(small(name), *specs(), seed=3)
    b = make_algorithm(small(name), *specs(), seed=3)
    c = make_algorithm(small(name), *specs(), seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = (x.loss.state_dict() for x in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("name", ALGOS)
def test_algorithm_state_dict_round_trip(name):
    source = make_algorithm(small(name), *specs(), seed=0)
    for step in range(3):
        source.update(batch(seed=step))
    dest = make_algorithm(small(name), *specs(), seed=1)
    dest.load_state_dict(source.state_dict())
    assert dest.num_updates == 3
    for algo in (source, dest):
        torch.manual_seed(0)
        algo.update(batch(seed=9))
    s, d = source.loss.state_dict(), dest.loss.state_dict()
    assert all(torch.equal(s[k], d[k]) for k in s)
    with pytest.raises(ValueError, match="cannot be loaded"):
        make_algorithm(small("awac" if name != "awac" else "bcq"), *specs()).load_state_dict(
            source.state_dict()
        )


# ----------------------------------------------------------------------------------------- specs
def test_composite_specs_and_spec_errors():
    algo = make_algorithm(
        small("td3bc"),
        Composite(observation=Unbounded(shape=(OBS,))),
        Composite(action=Bounded(-1.0, 1.0, (ACT,))),
    )
    assert algo.act(TensorDict({"observation": torch.zeros(2, OBS)}, [2]))["action"].shape == (
        2,
        ACT,
    )
    with pytest.raises(ValueError, match="one flat loss per agent"):
        make_algorithm("td3bc", Unbounded(shape=(3, OBS)), Bounded(-1.0, 1.0, (3, ACT)))
    with pytest.raises(TypeError, match="Bounded action spec"):
        make_algorithm("td3bc", Unbounded(shape=(OBS,)), Unbounded(shape=(ACT,)))
    with pytest.raises(KeyError, match="observation"):
        make_algorithm("td3bc", Composite(obs=Unbounded(shape=(OBS,))), Bounded(-1.0, 1.0, (ACT,)))


def test_cql_draws_its_random_actions_in_the_bounds(caplog):
    """CQL's conservative term uses the action bounds (BoundedCQLLoss): nothing to warn about any more."""
    with caplog.at_level(logging.WARNING, logger="torchrl_otc.trainers.algorithms.cql"):
        algo = make_algorithm(small("cql"), *specs(-0.1, 0.1))
    assert caplog.text == ""
    assert isinstance(algo.loss, BoundedCQLLoss)
    assert torch.equal(algo.loss.random_action_low, torch.full((ACT,), -0.1))
    assert torch.equal(algo.loss.random_action_high, torch.full((ACT,), 0.1))
    assert algo.loss.random_log_density == pytest.approx(-ACT * math.log(0.2))


def test_td3bc_noise_is_relative_to_the_half_range():
    algo = make_algorithm(small("td3bc"), *specs(-0.1, 0.1))
    assert algo.loss.policy_noise == pytest.approx(0.2 * 0.1)
    assert algo.loss.noise_clip == pytest.approx(0.5 * 0.1)


# ---------------------------------------------------------------------------------------- configs
def _lagrange(algo):
    return algo.loss.target_action_gap


# field -> (override, reader of the built algorithm, expected reading). Fields read elsewhere are listed below.
READERS: dict[str, tuple[typing.Any, typing.Callable, typing.Any]] = {
    "discount": (0.9, lambda a: float(a.loss.value_estimator.gamma), pytest.approx(0.9)),
    "tau": (0.2, lambda a: 1 - a.target_updater.eps, pytest.approx(0.2)),
    "hidden_sizes": ((24, 12), lambda a: hidden_widths(value_network(a)), {(24, 12)}),
    "activation": ("tanh", activations, {nn.Tanh}),
    "actor_lr": (0.123, lambda a: lr(a, "actor"), 0.123),
    "critic_lr": (0.321, lambda a: lr(a, "critic"), 0.321),
    "loss_function": ("smooth_l1", lambda a: a.loss.loss_function, "smooth_l1"),
    "vae_lr": (0.05, lambda a: lr(a, "vae"), 0.05),
    "vae_hidden_sizes": ((40,), lambda a: hidden_widths(a.loss.vae_network), {(40,)}),
    "latent_dim": (7, lambda a: a.loss.vae_network.module.latent_dim, 7),
    "max_perturbation": (
        0.3,
        lambda a: (
            next(
                m for m in a.loss.actor_network.modules() if isinstance(m, BCQPerturbation)
            ).max_perturbation
        ),
        0.3,
    ),
    "lmbda": (0.5, lambda a: a.loss.lmbda, 0.5),
    "num_samples": (3, lambda a: a.loss.num_samples, 3),
    "deploy_num_samples": (7, lambda a: a.policy.module.num_samples, 7),
    "kl_weight": (0.25, lambda a: a.loss.kl_weight, 0.25),
    "target_selection": ("q1", lambda a: a.loss.target_selection, "q1"),
    "temperature": (0.4, lambda a: a.loss.temperature, 0.4),
    "max_weight": (20.0, lambda a: a.loss.max_weight, 20.0),
    "num_value_samples": (3, lambda a: a.loss.num_value_samples, 3),
    "alpha_lr": (0.011, lambda a: lr(a, "alpha"), 0.011),
    "alpha_init": (0.5, lambda a: float(a.loss.alpha_init), 0.5),
    "fixed_alpha": (True, lambda a: "alpha" in a.optimizers, False),
    "min_q_weight": (5.0, lambda a: a.loss.min_q_weight, 5.0),
    "cql_temperature": (2.0, lambda a: a.loss.temperature, 2.0),
    "num_random": (4, lambda a: a.loss.num_random, 4),
    "with_lagrange": (True, lambda a: "alpha_prime" in a.optimizers, True),
    "deterministic_backup": (False, lambda a: a.loss.deterministic_backup, False),
    "max_q_backup": (True, lambda a: a.loss.max_q_backup, True),
    "alpha": (1.5, lambda a: a.loss.alpha, 1.5),
    "policy_noise": (0.3, lambda a: a.loss.policy_noise, pytest.approx(0.3)),
    "noise_clip": (0.4, lambda a: a.loss.noise_clip, pytest.approx(0.4)),
}
# read by Algorithm.update (tested above: gradient clipping, TD3 schedule) or by AgentLearner (tests/trainers).
READ_ELSEWHERE = {
    "max_grad_norm",
    "policy_delay",
    "batch_size",
    "finetune_updates",
    "lagrange_thresh",
    "discrete_threshold",  # read by DiscreteBCQ (tests/trainers/test_discrete_algorithms.py)
    # read by BREMEN (tests/trainers/test_bremen.py: test_no_value_distance_and_the_config_fields_reach_...,
    # test_update_returns_finite_metrics_and_moves_the_parts_on_schedule, test_bc_initialisation_...)
    "ensemble_size",
    "model_hidden_sizes",
    "model_lr",
    "max_kl",
    "rollout_horizon",
    "policy_every",
    "gae_lambda",
    "value_steps",
    "bc_steps",
}


def test_every_config_field_has_a_reader():
    for cls in ALGORITHM_CONFIGS.values():
        names = {f.name for f in dataclasses.fields(cls)}
        assert names <= set(READERS) | READ_ELSEWHERE, (
            f"{cls.__name__}: {names - set(READERS) - READ_ELSEWHERE}"
        )


@pytest.mark.parametrize(
    "name, field",
    [
        (name, f.name)
        for name, cls in ALGORITHM_CONFIGS.items()
        for f in dataclasses.fields(cls)
        if f.name in READERS
    ],
)
def test_config_field_reaches_the_algorithm(name, field):
    value, read, expected = READERS[field]
    overrides = {"hidden_sizes": (8,), field: value}
    algo = make_algorithm(make_config(name, **overrides), *specs())
    assert read(algo) == expected


def test_lagrange_threshold_reaches_cql():
    algo = make_algorithm(small("cql", with_lagrange=True, lagrange_thresh=3.0), *specs())
    assert _lagrange(algo) == 3.0


@pytest.mark.parametrize("cls", [AlgorithmConfig, BCQConfig, AWACConfig, CQLConfig, TD3BCConfig])
def test_defaults_match_their_type_hints(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(cls(), f.name)
        hint = hints[f.name]
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            allowed = tuple(t for t in typing.get_args(hint) if t is not type(None))
        else:
            allowed = (hint,)
        allowed = tuple(typing.get_origin(t) or t for t in allowed)
        assert value is None or isinstance(value, allowed), (f.name, value, hint)
        if allowed == (int,):
            assert not isinstance(value, bool)


def test_config_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="activation"):
        make_config("awac", activation="swish")
    with pytest.raises(ValueError, match="Unknown AWACConfig fields"):
        make_config("awac", lmbda=0.5)
    with pytest.raises(ValueError, match="batch_size must be an int"):
        make_config("bcq", batch_size=128.0)
    with pytest.raises(ValueError, match="lmbda"):
        BCQConfig(lmbda=2.0)
    assert make_config(**TD3BCConfig(alpha=1.0).to_dict() | {"name": "td3bc"}).alpha == 1.0


# ------------------------------------------------------------------------------------------- part isolation
def _part_losses(algo, td):
    """The losses whose gradients must reach only their own part (for every algorithm of make_algorithm)."""
    loss = algo.loss
    if algo.name == "cql":
        td = td.copy()
        q, _ = loss.q_loss(td)
        cql, _ = loss.cql_loss(td)
        yield "critic", q + cql
        return
    if algo.name == "td3bc":
        yield "critic", loss.qvalue_loss(td.copy())[0]
        return
    if (
        algo.name == "bcq"
    ):  # sequential as in BCQ's train(): the critic's target reads the stepped VAE
        vae = loss.vae_loss(td.copy())[0]
        yield "vae", vae
        algo.optimizers["vae"].zero_grad()
        vae.backward()
        algo.optimizers["vae"].step()
        yield "critic", loss.qvalue_loss(td.copy())[0]
        return
    yield "critic", loss.qvalue_loss(td.copy())[0]


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("bcq", {}),
        ("awac", {}),
        ("cql", {}),
        ("cql", {"with_lagrange": True}),
        ("td3bc", {}),
    ],
)
def test_each_part_gets_exactly_its_own_gradient(name, overrides):
    """The gradient a part's optimiser steps with is that of the part's own loss, nothing else's.

    (Regression: CQL's Lagrange loss -alpha' (gap - thresh) once added -alpha'/2 * d gap / d theta to the critic.)
    """
    data = batch(32, seed=1)
    a = make_algorithm(small(name, **overrides), *specs(), seed=0)
    b = make_algorithm(small(name, **overrides), *specs(), seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        a.update(data)
        torch.manual_seed(5)
        for part, value in _part_losses(b, data):
            params = list(b.parameters(part))
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            for p, g in zip(list(a.parameters(part)), grads):
                expected = torch.zeros_like(p) if g is None else g
                assert p.grad is not None, (name, part)
                # float rounding of differently ordered sums only: a leak is of the gradient's own size
                scale = float(expected.abs().max()) + 1e-8
                torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-4 * scale)


def test_td3bc_fast_path_equals_torchrl():
    """The stacked-critic TD3+BC update gives TorchRL's TD3BCLoss numbers: parameters, targets, metrics, draws."""
    fast = make_algorithm(small("td3bc"), *specs(), seed=0)
    reference = make_algorithm(small("td3bc"), *specs(), seed=0)
    reference.loss.__dict__.setdefault("_cache", {})["td3bc_fast"] = None  # force TorchRL's methods
    data = batch(32, seed=2)
    data["next", "terminated"][::5] = True  # bootstrapping must stop at terminations
    data["next", "done"][::5] = True
    assert fast.fast_critics(data) is not None
    with torch.random.fork_rng():
        for step in range(6):  # three actor steps (policy delay 2)
            torch.manual_seed(step)
            got = fast.update(data)
            torch.manual_seed(step)
            want = reference.update(data)
            assert got.keys() == want.keys()
            for key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (step, key)
    a, b = fast.loss.state_dict(), reference.loss.state_dict()
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    # importance weights in the batch: back to TorchRL's methods, which read them
    weighted = data.clone()
    weighted["priority_weight"] = torch.ones(32)
    assert fast.fast_critics(weighted) is None


# ------------------------------------------------------------------------------------- the classes
def test_registry_classes_and_make_algorithm_agree():
    assert set(ALGORITHMS) == set(ALGORITHM_CONFIGS)
    for name, cls in ALGORITHMS.items():
        assert issubclass(cls, Algorithm) and cls.name == name
        built = make_algorithm(small(name), *specs(), seed=2)
        direct = cls(*specs(), small(name), seed=2)
        assert type(built) is cls
        a, b = built.loss.state_dict(), direct.loss.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert BCQ(*specs()).config == BCQConfig()  # Table 3 defaults
    with pytest.raises(TypeError, match="BCQ takes a BCQConfig; got AWACConfig"):
        BCQ(*specs(), AWACConfig())


@pytest.mark.parametrize("name", ALGOS)
def test_state_dict_keeps_the_checkpoint_layout(name):
    state = make_algorithm(small(name), *specs(), seed=0).state_dict()
    assert set(state) == {"name", "config", "loss", "optimizers", "num_updates"}
    assert state["name"] == name and state["config"] == small(name).to_dict()


# ------------------------------------------------------------------------------ value functions (d_q)
def loss_critics(algo, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """``[2, N]``: each critic of the loss, called on its own parameters through the TensorDictModule."""
    net, params = algo.loss.qvalue_network, algo.loss.qvalue_network_params
    td = TensorDict({"observation": obs, "action": action}, [len(obs)])
    values = []
    for i in range(params.shape[0]):
        with params[i].to_module(net):
            values.append(net(td.copy())["state_action_value"].squeeze(-1))
    return torch.stack(values)


def reduce(q: torch.Tensor, reduction: str) -> torch.Tensor:
    return q.mean(0) if reduction == "mean" else q.min(0).values


def trained(name: str):
    algo = make_algorithm(small(name), *specs(-0.5, 0.5), seed=0)
    torch.manual_seed(0)
    for step in range(3):
        algo.update(batch(seed=step))
    return algo


@pytest.mark.parametrize("reduction", ["mean", "min"])
@pytest.mark.parametrize("name", ALGOS)
def test_q_value_is_the_loss_critics_reduced(name, reduction):
    algo = trained(name)
    obs, action = torch.randn(20, OBS), torch.rand(20, ACT) - 0.5
    got = algo.q_value(obs, action, reduction)
    assert got.shape == (20,) and not got.requires_grad
    torch.testing.assert_close(got, reduce(loss_critics(algo, obs, action), reduction))


@pytest.mark.parametrize("reduction", ["mean", "min"])
@pytest.mark.parametrize("name", ALGOS)
def test_state_value_of_the_policy_action(name, reduction):
    algo = trained(name)
    obs = torch.randn(20, OBS)
    torch.manual_seed(1)
    got = algo.state_value(obs, "policy", 5, reduction)
    torch.manual_seed(1)
    if name == "bcq":  # BCQ's greedy action among 5 perturbed VAE actions (its own target)
        action = BCQActor(algo.loss, num_samples=5)(obs)
    else:  # the deterministic deployment action
        action = algo.act(TensorDict({"observation": obs}, [20]))["action"]
    torch.testing.assert_close(got, reduce(loss_critics(algo, obs, action), reduction))


@pytest.mark.parametrize("name", ["bcq", "awac", "cql"])
def test_state_value_of_sampled_actions(name):
    algo, n = trained(name), 6
    obs = torch.randn(20, OBS)
    torch.manual_seed(1)
    got = algo.state_value(obs, "sample", n, "min")
    torch.manual_seed(1)
    loss = algo.loss
    if name == "bcq":
        actions = loss.perturbed_vae_actions({"observation": obs}, n, loss.actor_network_params)
    else:
        td = TensorDict({"observation": obs}, [20])
        with loss.actor_network_params.to_module(loss.actor_network):
            actions = loss.actor_network.get_dist(td).sample((n,))
    assert actions.shape == (n, 20, ACT)
    want = torch.stack([reduce(loss_critics(algo, obs, a), "min") for a in actions]).mean(0)
    torch.testing.assert_close(got, want)


def test_td3bc_refuses_sampled_state_values():
    algo = make_algorithm(small("td3bc"), *specs(), seed=0)
    with pytest.raises(ValueError, match="TD3\\+BC's actor is deterministic"):
        algo.check_state_value("sample")
    with pytest.raises(ValueError, match="TD3\\+BC's actor is deterministic"):
        algo.state_value(torch.zeros(2, OBS), "sample")
    with pytest.raises(ValueError, match="actions must be"):
        make_algorithm(small("awac"), *specs()).state_value(torch.zeros(2, OBS), "greedy")
    with pytest.raises(ValueError, match="reduction"):
        algo.q_value(torch.zeros(2, OBS), torch.zeros(2, ACT), "max")


@pytest.mark.parametrize("name", ALGOS)
def test_algorithms_follow_the_value_functions_protocol(name):
    assert isinstance(make_algorithm(small(name), *specs()), ValueFunctions)
