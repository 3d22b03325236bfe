"""MPE tasks (appendix): rewards on set positions, both backends, specs."""

from __future__ import annotations

import warnings

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from torchrl_otc.envs.mpe import PREY_SPEED, navigation_reward, predator_prey_reward, prey_velocity

pytest.importorskip("vmas")

from torchrl_otc.envs.mpe import make_pettingzoo_env, make_vmas_env  # noqa: E402

warnings.filterwarnings("ignore", message="PettingZoo in TorchRL is tested", category=UserWarning)


def _pz(*args, **kwargs):
    pytest.importorskip("mpe2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return make_pettingzoo_env(*args, **kwargs)


def _set_positions(env, positions: torch.Tensor) -> None:
    """Place agents then landmarks/prey at ``positions`` ([n_entities, 2]) in env 0 of either backend."""
    if hasattr(env, "base_env"):  # VMAS (TransformedEnv)
        world = env.base_env._env.world
        for e, p in zip(world.agents + world.landmarks, positions):
            e.set_pos(p.to(torch.float32), batch_index=0)
    else:  # PettingZoo
        world = env._env.aec_env.unwrapped.world
        for e, p in zip(world.agents + world.landmarks, positions):
            e.state.p_pos = p.double().numpy().copy()


def _step(env, td, actions: torch.Tensor):
    if len(env.batch_size):
        td[("agents", "action")] = (
            actions.unsqueeze(0).expand(env.batch_size[0], *actions.shape).clone()
        )
        return env.step(td)["next"][0]
    td[("agents", "action")] = actions.clone()
    return env.step(td)["next"]


BACKENDS = ["vmas", "pettingzoo"]


def _make(backend, task, n, **kwargs):
    if backend == "vmas":
        return make_vmas_env(task, n, num_envs=2, seed=0, **kwargs)
    return _pz(task, n, seed=0, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "task,n",
    [
        ("navigation", 3),
        ("navigation", 4),
        ("navigation", 5),
        ("navigation", 6),
        ("predator_prey", 3),
    ],
)
@pytest.mark.parametrize("local_obs", [False, True])
def test_specs(backend, task, n, local_obs):
    env = _make(backend, task, n, local_obs=local_obs)
    check_env_specs(env)
    spec = env.full_action_spec["agents", "action"]
    assert spec.shape[-2:] == (n, 2)
    assert torch.all(spec.space.low == -0.1) and torch.all(spec.space.high == 0.1)
    obs = env.full_observation_spec["agents", "observation"]
    assert obs.shape[-1] == (4 * n if task == "navigation" else 8)
    if local_obs:
        assert env.full_observation_spec["agents", "local_observation"].shape[-1] == obs.shape[-1]


def test_navigation_reward_function_by_hand():
    agents = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    landmarks = torch.tensor([[0.0, 0.5], [2.0, 0.0], [0.0, 1.0]])
    # landmark 0: closest agent 0 or 2 at 0.5; landmark 1: agent 1 at 1.0; landmark 2: agent 2 at 0
    assert float(navigation_reward(agents, landmarks)) == pytest.approx(-1.5)


def test_predator_prey_functions_by_hand():
    predators = torch.tensor([[0.05, 0.0], [0.0, 0.0999], [0.3, 0.0]])
    assert float(predator_prey_reward(predators, torch.zeros(2))) == 2.0
    v = prey_velocity(torch.tensor([[0.05, 0.0], [0.0, -0.3], [0.5, 0.5]]), torch.zeros(2), 0.13)
    torch.testing.assert_close(v, torch.tensor([-0.13, 0.0]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_navigation_reward_on_set_positions(backend):
    env = _make(backend, "navigation", 3)
    td = env.reset()
    # agents (0,0) (1,0) (0,1); landmarks (0.05,0.5) (2,0) (0,1.1)
    _set_positions(
        env, torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.05, 0.5], [2.0, 0.0], [0.0, 1.1]])
    )
    actions = torch.tensor([[0.05, 0.1], [0.1, 0.0], [0.0, 0.1]])
    nxt = _step(env, td, actions)
    # after the move: agents (0.05,0.1) (1.1,0) (0,1.1): landmark 0 -> agent 0 at 0.4; landmark 1 -> agent 1 at
    # 0.9; landmark 2 -> agent 2 at 0.
    expected = -(0.4 + 0.9 + 0.0)
    torch.testing.assert_close(
        nxt["agents", "reward"].view(-1), torch.full((3,), expected), atol=1e-5, rtol=0
    )
    state = nxt["agents", "observation"][0]
    torch.testing.assert_close(
        state[:6], torch.tensor([0.05, 0.1, 1.1, 0.0, 0.0, 1.1]), atol=1e-6, rtol=0
    )
    # every agent observes the same global state
    assert torch.equal(nxt["agents", "observation"][1], state)


@pytest.mark.parametrize("backend", BACKENDS)
def test_predator_prey_reward_on_set_positions(backend):
    env = _make(backend, "predator_prey", 3)
    td = env.reset()
    s = PREY_SPEED  # 1.3 * 0.1 * sqrt(2)
    # The prey at (0, 0) flees its nearest predator (0, at (0.05, 0)) at full speed: to (-s, 0).
    # Predator 0 moves to (-0.05, 0): s - 0.05 = 0.134 from the prey, no catch.
    # Predator 1 moves from (-s, -0.15) to (-s, -0.05): 0.05 away, a catch.
    # Predator 2 moves from (-s - 0.05, 0.08) to (-s - 0.05, 0.03): 0.058 away, a catch. Reward: 2.
    _set_positions(env, torch.tensor([[0.05, 0.0], [-s, -0.15], [-s - 0.05, 0.08], [0.0, 0.0]]))
    actions = torch.tensor([[-0.1, 0.0], [0.0, 0.1], [0.0, -0.05]])
    nxt = _step(env, td, actions)
    torch.testing.assert_close(nxt["agents", "reward"].view(-1), torch.full((3,), 2.0))
    state = nxt["agents", "observation"][0]
    torch.testing.assert_close(state[6:8], torch.tensor([-s, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        state[:6], torch.tensor([-0.05, 0.0, -s, -0.05, -s - 0.05, 0.03]), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("diagonal", [False, True], ids=["along-an-axis", "diagonal"])
def test_a_predator_chasing_at_top_speed_falls_behind_the_prey(backend, diagonal):
    """The prey flees its nearest predator faster than any predator moves, in every direction: a lone chaser
    loses ``PREY_SPEED - |a|`` per step and never touches it (the reason the predators must cooperate)."""
    from torchrl.envs.utils import step_mdp

    env = _make(backend, "predator_prey", 3)
    td = env.reset()
    heading = torch.tensor([2**-0.5, 2**-0.5]) if diagonal else torch.tensor([1.0, 0.0])
    prey = torch.tensor([-0.6, -0.6]) if diagonal else torch.tensor([-0.6, 0.0])
    chaser = prey - 0.2 * heading
    # the two other predators stay far behind, so the chaser is the prey's nearest predator throughout
    _set_positions(
        env, torch.stack([chaser, torch.tensor([-0.95, 0.95]), torch.tensor([0.95, -0.95]), prey])
    )
    action = 0.1 * heading / heading.abs().max()  # the chaser's top speed along ``heading``
    speed = float(action.norm())
    assert speed == pytest.approx(0.1 * 2**0.5 if diagonal else 0.1)
    actions = torch.stack([action, torch.zeros(2), torch.zeros(2)])
    for t in range(1, 5):
        batched = len(env.batch_size) > 0
        td[("agents", "action")] = (
            actions.expand(env.batch_size[0], 3, 2).clone() if batched else actions.clone()
        )
        td = env.step(td)
        nxt = td["next"][0] if batched else td["next"]
        state = nxt["agents", "observation"][0]
        gap = float((state[6:8] - state[0:2]).norm())
        assert gap == pytest.approx(0.2 + t * (PREY_SPEED - speed), abs=1e-5), t
        assert float(nxt["agents", "reward"].sum()) == 0.0
        td = step_mdp(td)


@pytest.mark.parametrize("backend", BACKENDS)
def test_arena_keeps_prey_and_predators_inside(backend):
    env = _make(backend, "predator_prey", 3)
    td = env.reset()
    _set_positions(env, torch.tensor([[0.9, 0.0], [0.0, 0.0], [0.0, 0.5], [0.99, 0.0]]))
    nxt = _step(env, td, torch.tensor([[0.1, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    state = nxt["agents", "observation"][0]
    assert float(state.abs().max()) <= 1.0 + 1e-6
    assert float(state[6]) == pytest.approx(1.0)  # pushed against the wall
    assert float(state[0]) == pytest.approx(1.0)


def test_backends_agree_step_for_step():
    pytest.importorskip("mpe2")
    g = torch.Generator().manual_seed(3)
    for task, n in (("navigation", 4), ("predator_prey", 3)):
        v = make_vmas_env(task, n, num_envs=1, seed=0)
        p = _pz(task, n, seed=0)
        tv, tp = v.reset(), p.reset()
        pos = torch.rand(2 * n if task == "navigation" else 4, 2, generator=g) * 2 - 1
        _set_positions(v, pos)
        _set_positions(p, pos)
        for _ in range(10):
            a = (torch.rand(n, 2, generator=g) * 2 - 1) * 0.1
            tv[("agents", "action")] = a.unsqueeze(0)
            tp[("agents", "action")] = a
            ov, op = v.step(tv)["next"], p.step(tp)["next"]
            torch.testing.assert_close(
                ov["agents", "reward"][0], op["agents", "reward"], atol=1e-5, rtol=0
            )
            torch.testing.assert_close(
                ov["agents", "observation"][0], op["agents", "observation"], atol=1e-5, rtol=0
            )
            tv, tp = ov, op


@pytest.mark.parametrize("backend", BACKENDS)
def test_episodes_truncate_after_25_steps(backend):
    env = _make(backend, "navigation", 3)
    td = env.rollout(25, break_when_any_done=False)
    done = td["next", "done"].reshape(-1, 25)
    trunc = td["next", "truncated"].reshape(-1, 25)
    assert done[:, -1].all() and not done[:, :-1].any()
    assert trunc[:, -1].all()
    assert not td["next", "terminated"].any()


def test_local_observations_are_agent_centred():
    env = make_vmas_env("navigation", 3, num_envs=1, seed=0, local_obs=True)
    td = env.reset()
    _set_positions(
        env, torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [2.0, 0.0], [0.0, 1.1]])
    )
    nxt = _step(env, td, torch.zeros(3, 2))
    local = nxt["agents", "local_observation"]
    # agent 1: own position, landmarks minus own position, then agents 0 and 2 minus own position
    expected = torch.tensor([1.0, 0.0, -0.5, 0.5, 1.0, 0.0, -1.0, 1.1, -1.0, 0.0, -1.0, 1.0])
    torch.testing.assert_close(local[1], expected, atol=1e-6, rtol=0)
