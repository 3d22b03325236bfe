# Copyright (c) Meta Platforms, Inc. and affiliates.
#
# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.

from __future__ import annotations

import argparse
import contextlib
from typing import NamedTuple

import pytest
import torch
from _objectives_common import (
    _check_td_steady,
    _has_functorch,
    FUNCTORCH_ERR,
    LossModuleTestBase,
)
from tensordict import assert_allclose_td, TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from tensordict.utils import NestedKey
from torch import nn

from torchrl._utils import rl_warnings
from torchrl.data import Bounded
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import AWACLoss, SoftUpdate
from torchrl.objectives.utils import ValueEstimators
from torchrl.objectives.value import TD0Estimator, TD1Estimator, TDLambdaEstimator
from torchrl.testing import get_default_devices

SUPPORTED = (ValueEstimators.TD0, ValueEstimators.TD1, ValueEstimators.TDLambda)
ESTIMATOR_CLASSES = {
    ValueEstimators.TD0: TD0Estimator,
    ValueEstimators.TD1: TD1Estimator,
    ValueEstimators.TDLambda: TDLambdaEstimator,
}
UNSUPPORTED = tuple(e for e in ValueEstimators if e not in SUPPORTED)
OBS_DIM, ACTION_DIM = 3, 4


class Keys(NamedTuple):
    """Where the mock batches and networks put each entry."""

    observation: NestedKey = "observation"
    action: NestedKey = "action"
    reward: NestedKey = "reward"
    done: NestedKey = "done"
    terminated: NestedKey = "terminated"

    def loss_keys(self) -> dict[str, NestedKey]:
        """The ``set_keys`` arguments that point a loss at these entries."""
        names = ("action", "reward", "done", "terminated")
        return {name: getattr(self, name) for name in names}


DEFAULT_KEYS = Keys()


pytestmark = pytest.mark.skipif(
    not _has_functorch, reason=f"the losses need functorch: {FUNCTORCH_ERR}"
)


def _no_updater_warning():
    if rl_warnings():
        return pytest.warns(UserWarning, match="No target network updater")
    return contextlib.nullcontext()


def lambda_return(reward, next_value, done, terminated, gamma, lmbda):
    """The lambda-return of each step of ``[batch, T]`` trajectories, by its backward recursion.

    G_t = r_t + gamma (1 - terminated_t) [(1 - lmbda) V_t + lmbda (V_t if done_t or t = T - 1 else G_{t+1})];
    lmbda = 0 is TD(0), lmbda = 1 is TD(1).
    """
    out = torch.empty_like(reward)
    for b in range(reward.shape[0]):
        following = None
        for t in reversed(range(reward.shape[1])):
            value = next_value[b, t]
            tail = value if (done[b, t] or following is None) else following
            out[b, t] = reward[b, t] + gamma * (~terminated[b, t]).float() * (
                (1 - lmbda) * value + lmbda * tail
            )
            following = out[b, t]
    return out


class TestAWAC(LossModuleTestBase):
    seed = 0

    def _create_mock_actor(self, keys=DEFAULT_KEYS, device="cpu"):
        # a linear tanh-Gaussian policy on [-1, 1]^ACTION_DIM
        bound = torch.ones(ACTION_DIM)
        head = TensorDictModule(
            nn.Sequential(nn.Linear(OBS_DIM, 2 * ACTION_DIM), NormalParamExtractor()),
            in_keys=[keys.observation],
            out_keys=["loc", "scale"],
        )
        policy = ProbabilisticActor(
            head,
            ["loc", "scale"],
            out_keys=[keys.action],
            distribution_class=TanhNormal,
            spec=Bounded(-bound, bound, (ACTION_DIM,)),
        )
        return policy.to(device)

    def _create_mock_qvalue(
        self, keys=DEFAULT_KEYS, device="cpu", out_keys=None, dropout=0.0
    ):
        trunk = MLP(
            in_features=OBS_DIM + ACTION_DIM,
            out_features=1,
            num_cells=[16],
            dropout=dropout or None,
        )
        reads = [keys.observation, keys.action]
        return ValueOperator(trunk, in_keys=reads, out_keys=out_keys).to(device)

    def _create_mock_loss(
        self, keys=DEFAULT_KEYS, device="cpu", out_keys=None, **kwargs
    ):
        critic = self._create_mock_qvalue(keys, device, out_keys=out_keys)
        return AWACLoss(self._create_mock_actor(keys, device), critic, **kwargs)

    def _create_mock_data_awac(self, batch=16, keys=DEFAULT_KEYS, device="cpu"):
        # independent transitions; the actions stay inside the [-1, 1] bounds
        entries = {
            keys.observation: torch.randn(batch, OBS_DIM),
            keys.action: torch.empty(batch, ACTION_DIM).uniform_(-0.9, 0.9),
            ("next", keys.observation): torch.randn(batch, OBS_DIM),
            ("next", keys.reward): torch.randn(batch, 1),
            ("next", keys.done): torch.zeros(batch, 1).bool(),
            ("next", keys.terminated): torch.zeros(batch, 1).bool(),
        }
        return TensorDict(entries, [batch]).to(device)

    def _create_seq_mock_data_awac(self, batch=3, T=6, device="cpu"):
        # trajectories, time last: a terminal and a timeout inside the first one, every one done at its end
        td = self._create_mock_data_awac(batch * T, device=device).reshape(batch, T)
        done = torch.zeros(batch, T, 1, dtype=torch.bool, device=device)
        terminated = torch.zeros_like(done)
        done[:, -1] = True
        done[0, 1] = terminated[0, 1] = True
        done[0, 3] = True
        td.set(("next", "done"), done)
        td.set(("next", "terminated"), terminated)
        return td

    def test_reset_parameters_recursive(self):
        self.reset_parameters_recursive_test(self._create_mock_loss())

    @pytest.mark.parametrize("num_qvalue", [1, 2, 4])
    @pytest.mark.parametrize("device", get_default_devices())
    @pytest.mark.parametrize("temperature", [0.1, 1.0, 10.0])
    @pytest.mark.parametrize("td_est", list(ValueEstimators) + [None])
    def test_awac(self, num_qvalue, device, temperature, td_est):
        torch.manual_seed(self.seed)
        td = self._create_mock_data_awac(device=device)
        loss_fn = self._create_mock_loss(
            device=device, num_qvalue_nets=num_qvalue, temperature=temperature
        )
        if td_est in UNSUPPORTED:
            pytest.raises(NotImplementedError, loss_fn.make_value_estimator, td_est)
            return
        if td_est in SUPPORTED:
            assert loss_fn.make_value_estimator(td_est) is loss_fn

        with _check_td_steady(td), _no_updater_warning():
            losses = loss_fn(td)
        # the per-sample TD error is written back, for prioritised replay
        assert td.get(loss_fn.tensor_keys.priority).shape == td.shape
        assert set(losses.keys()) == set(loss_fn.out_keys)

        # each loss reaches only its own network
        owners = {
            "loss_actor": "actor_network_params",
            "loss_qvalue": "qvalue_network_params",
        }
        for key, owner in owners.items():
            loss_fn.zero_grad()
            losses[key].backward(retain_graph=True)
            for name in owners.values():
                grads = [
                    p.grad
                    for p in getattr(loss_fn, name).values(True, True)
                    if isinstance(p, nn.Parameter)
                ]
                if name == owner:
                    assert all(g is not None and g.norm() > 0 for g in grads), (
                        key,
                        name,
                    )
                else:
                    assert all(g is None or (g == 0).all() for g in grads), (key, name)
        loss_fn.zero_grad()

        sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
        named_parameters = list(loss_fn.named_parameters())
        assert len({p for _, p in named_parameters}) == len(named_parameters)
        for name, p in named_parameters:
            if name.startswith("target_"):
                assert p.grad is None or p.grad.norm() == 0.0, name
            else:
                assert p.grad is not None and p.grad.norm() > 0.0, name

    @pytest.mark.parametrize("td_est", SUPPORTED)
    def test_awac_make_value_estimator(self, td_est):
        loss_fn = self._create_mock_loss()
        hyperparams = {"gamma": 0.9}
        if td_est is ValueEstimators.TDLambda:
            hyperparams["lmbda"] = 0.8
        # make_value_estimator returns the loss, so that calls chain
        out = loss_fn.make_value_estimator(td_est, **hyperparams)
        assert out is loss_fn
        assert isinstance(loss_fn.value_estimator, ESTIMATOR_CLASSES[td_est])
        assert float(loss_fn.value_estimator.gamma) == pytest.approx(0.9)
        assert (
            loss_fn.make_value_estimator(TD0Estimator, gamma=0.5, value_network=None)
            is loss_fn
        )
        assert float(loss_fn.value_estimator.gamma) == pytest.approx(0.5)
        estimator = TD1Estimator(gamma=0.7, value_network=None)
        assert loss_fn.make_value_estimator(estimator) is loss_fn
        assert loss_fn.value_estimator is estimator
        loss_fn = self._create_mock_loss().make_value_estimator(gamma=0.9)
        assert isinstance(loss_fn, AWACLoss)
        assert isinstance(loss_fn.value_estimator, TD0Estimator)

    @pytest.mark.parametrize(
        "td_est,lmbda",
        [
            (ValueEstimators.TD0, 0.0),
            (ValueEstimators.TD1, 1.0),
            (ValueEstimators.TDLambda, 0.8),
        ],
    )
    def test_awac_value_estimator_targets(self, td_est, lmbda):
        torch.manual_seed(self.seed)
        gamma = 0.9
        hyperparams = {"gamma": gamma}
        if td_est is ValueEstimators.TDLambda:
            hyperparams["lmbda"] = lmbda
        loss_fn = self._create_mock_loss().make_value_estimator(td_est, **hyperparams)
        SoftUpdate(loss_fn, tau=0.005)
        td = self._create_seq_mock_data_awac()
        _, metadata = loss_fn.qvalue_loss(td)
        expected = lambda_return(
            td.get(("next", "reward")).squeeze(-1),
            metadata["next_state_value"],
            td.get(("next", "done")).squeeze(-1),
            td.get(("next", "terminated")).squeeze(-1),
            gamma,
            lmbda,
        )
        torch.testing.assert_close(metadata["target_value"], expected)
        torch.testing.assert_close(
            metadata["target_value"][0, 1], td.get(("next", "reward"))[0, 1, 0]
        )

    def test_awac_target_value(self):
        # the TD(0) target: r + gamma * min_j Q'_j(s', a'), a' ~ pi(.|s')
        torch.manual_seed(self.seed)
        loss_fn = self._create_mock_loss().make_value_estimator(gamma=0.9)
        SoftUpdate(loss_fn, tau=0.005)
        td = self._create_mock_data_awac(batch=8)
        torch.manual_seed(1)
        _, metadata = loss_fn.qvalue_loss(td)
        torch.manual_seed(1)
        next_td = td.get("next").select("observation").clone()
        with loss_fn.actor_network_params.to_module(loss_fn.actor_network):
            next_action = loss_fn.actor_network.get_dist(next_td).sample()
        next_td.set("action", next_action)
        values = []
        for i in range(loss_fn.num_qvalue_nets):
            with loss_fn.target_qvalue_network_params[i].to_module(
                loss_fn.qvalue_network
            ):
                values.append(
                    loss_fn.qvalue_network(next_td.clone())["state_action_value"]
                )
        next_value = torch.stack(values).min(0).values.squeeze(-1)
        torch.testing.assert_close(metadata["next_state_value"], next_value)
        expected = td.get(("next", "reward")).squeeze(-1) + 0.9 * next_value
        torch.testing.assert_close(metadata["target_value"], expected)

    @pytest.mark.parametrize("temperature", [0.5, 2.0])
    def test_awac_actor_loss(self, temperature):
        # -log pi(a|s) min(exp((Q(s, a) - V(s)) / temperature), max_weight), V(s) = Q(s, a~pi(s))
        torch.manual_seed(self.seed)
        loss_fn = self._create_mock_loss(temperature=temperature, max_weight=5.0)
        td = self._create_mock_data_awac(batch=8)
        torch.manual_seed(1)
        loss, metadata = loss_fn.actor_loss(td)
        torch.manual_seed(1)
        with loss_fn.actor_network_params.to_module(loss_fn.actor_network):
            dist = loss_fn.actor_network.get_dist(td.select("observation"))
        log_prob = dist.log_prob(td.get("action"))
        policy_action = dist.sample((1,))[0]

        def min_q(action):
            values = []
            for i in range(loss_fn.num_qvalue_nets):
                with loss_fn.qvalue_network_params[i].to_module(loss_fn.qvalue_network):
                    values.append(
                        loss_fn.qvalue_network(
                            TensorDict(
                                {
                                    "observation": td.get("observation"),
                                    "action": action,
                                },
                                td.batch_size,
                            )
                        )["state_action_value"]
                    )
            return torch.stack(values).min(0).values.squeeze(-1)

        advantage = min_q(td.get("action")) - min_q(policy_action)
        weight = torch.exp(advantage / temperature).clamp_max(5.0)
        torch.testing.assert_close(loss, -(weight.detach() * log_prob).mean())
        torch.testing.assert_close(metadata["awac_weight"], weight.detach().mean())

    def test_awac_deactivate_vmap(self):
        torch.manual_seed(self.seed)
        td = self._create_mock_data_awac()
        loss_vmap = self._create_mock_loss(deactivate_vmap=False)
        loss_no_vmap = self._create_mock_loss(deactivate_vmap=True)
        loss_no_vmap.load_state_dict(loss_vmap.state_dict())
        for loss_fn in (loss_vmap, loss_no_vmap):
            SoftUpdate(loss_fn, tau=0.005)
        torch.manual_seed(1)
        out_vmap = loss_vmap(td.clone())
        torch.manual_seed(1)
        out_no_vmap = loss_no_vmap(td.clone())
        assert_allclose_td(out_vmap, out_no_vmap)

    @pytest.mark.parametrize("device", get_default_devices())
    def test_awac_state_dict(self, device):
        torch.manual_seed(self.seed)
        loss_fn = self._create_mock_loss(device=device)
        sd = loss_fn.state_dict()
        assert any(key.startswith("target_qvalue_network_params") for key in sd)
        loss_fn2 = self._create_mock_loss(device=device)
        loss_fn2.load_state_dict(sd)
        for key, value in loss_fn2.state_dict().items():
            torch.testing.assert_close(value, sd[key])

    @pytest.mark.parametrize("td_est", SUPPORTED)
    def test_awac_tensordict_keys(self, td_est):
        loss_fn = self._create_mock_loss()
        # every key defaults to its own name, except the priority
        names = list(Keys._fields[1:]) + ["state_action_value", "priority_weight"]
        defaults = dict(zip(names, names), priority="td_error")
        self.tensordict_keys_test(loss_fn, default_keys=defaults, td_est=td_est)

        # the keys the value estimator reads follow the loss's
        loss_fn = self._create_mock_loss(out_keys=["state_action_value_test"])
        renamed = {flag: (flag, f"{flag}_test") for flag in ("done", "terminated")}
        renamed["reward"] = ("reward", ("reward", "test"))
        renamed["state_action_value"] = ("value", "state_action_value_test")
        self.set_advantage_keys_through_loss_test(loss_fn, td_est, renamed)

    @pytest.mark.parametrize("action_key", ["action", "action2"])
    @pytest.mark.parametrize("observation_key", ["observation", "observation2"])
    @pytest.mark.parametrize("reward_key", ["reward", "reward2"])
    @pytest.mark.parametrize("done_key", ["done", "done2"])
    @pytest.mark.parametrize("terminated_key", ["terminated", "terminated2"])
    def test_awac_notensordict(
        self, observation_key, action_key, reward_key, done_key, terminated_key
    ):
        keys = Keys(observation_key, action_key, reward_key, done_key, terminated_key)
        torch.manual_seed(self.seed)
        td = self._create_mock_data_awac(keys=keys)
        loss = self._create_mock_loss(keys=keys)
        loss.set_keys(**keys.loss_keys())
        # one keyword argument per leaf of the batch, nested keys joined by "_"
        kwargs = td.flatten_keys("_").to_dict()
        assert set(self._flatten_in_keys(loss.in_keys)) == set(kwargs)

        with _no_updater_warning():
            torch.manual_seed(self.seed)
            outputs = loss(**kwargs)
            torch.manual_seed(self.seed)
            from_td = loss(td)
        assert len(outputs) == len(loss.out_keys)
        for key, value in zip(loss.out_keys, outputs):
            torch.testing.assert_close(value, from_td.get(key))
        # after select_out_keys, only those are returned
        loss.select_out_keys("loss_actor", "loss_qvalue")
        with _no_updater_warning():
            torch.manual_seed(self.seed)
            selected = loss(**kwargs)
        assert len(selected) == 2
        torch.testing.assert_close(selected[0], from_td["loss_actor"])
        torch.testing.assert_close(selected[1], from_td["loss_qvalue"])

    def test_awac_nested_keys(self):
        # the same numbers with nested observation, action, reward, done and terminated keys
        torch.manual_seed(self.seed)
        flat = self._create_mock_loss()
        nested_keys = Keys(*(("agent", name) for name in Keys._fields))
        nested = self._create_mock_loss(keys=nested_keys)
        nested.set_keys(**nested_keys.loss_keys())
        nested.load_state_dict(flat.state_dict())
        td = self._create_mock_data_awac()
        td_nested = TensorDict(batch_size=td.batch_size)
        for key in ("observation", "action"):
            td_nested.set(("agent", key), td.get(key))
        for key in ("observation", "reward", "done", "terminated"):
            td_nested.set(("next", "agent", key), td.get(("next", key)))
        assert ("next", "agent", "reward") in nested.in_keys
        for loss_fn in (flat, nested):
            SoftUpdate(loss_fn, tau=0.005)
        torch.manual_seed(1)
        out_flat = flat(td)
        torch.manual_seed(1)
        out_nested = nested(td_nested)
        assert_allclose_td(out_flat, out_nested)

    @pytest.mark.parametrize("reduction", [None, "none", "mean", "sum"])
    def test_awac_reduction(self, reduction):
        torch.manual_seed(self.seed)
        device = get_default_devices()[0]
        td = self._create_mock_data_awac(device=device)
        loss_fn = self._create_mock_loss(device=device, reduction=reduction)
        loss_fn.make_value_estimator()
        with _check_td_steady(td), _no_updater_warning():
            loss = loss_fn(td)
        for key in loss.keys():
            if not key.startswith("loss"):
                continue
            if reduction == "none":
                assert loss[key].shape == td.shape, key
            else:
                assert loss[key].shape == torch.Size([]), key

    def test_awac_priority_weight(self):
        torch.manual_seed(self.seed)
        td = self._create_mock_data_awac()
        loss_fn = self._create_mock_loss(reduction="sum")
        SoftUpdate(loss_fn, tau=0.005)
        torch.manual_seed(1)
        unweighted = loss_fn(td.clone())
        td.set("priority_weight", torch.full(td.shape, 2.0))
        torch.manual_seed(1)
        weighted = loss_fn(td.clone())
        for key in ("loss_actor", "loss_qvalue"):
            torch.testing.assert_close(weighted[key], 2 * unweighted[key])

    def test_awac_vmap_randomness(self):
        torch.manual_seed(self.seed)
        td = self._create_mock_data_awac()
        loss_fn = AWACLoss(
            self._create_mock_actor(), self._create_mock_qvalue(dropout=0.1)
        )
        SoftUpdate(loss_fn, tau=0.005)
        assert loss_fn.vmap_randomness == "different"
        assert loss_fn(td)["loss_qvalue"].isfinite()
        loss_fn.set_vmap_randomness("error")
        with pytest.raises(RuntimeError, match="randomness"):
            loss_fn(td)
        loss_fn.set_vmap_randomness("same")
        assert loss_fn(td)["loss_qvalue"].isfinite()

    def test_awac_errors(self):
        with pytest.raises(ValueError, match="temperature"):
            self._create_mock_loss(temperature=0.0)
        with pytest.raises(TypeError, match="stochastic actor"):
            AWACLoss(self._create_mock_qvalue(), self._create_mock_qvalue())


if __name__ == "__main__":
    args, unknown = argparse.ArgumentParser().parse_known_args()
    pytest.main([__file__, "--capture", "no", "--exitfirst"] + unknown)
