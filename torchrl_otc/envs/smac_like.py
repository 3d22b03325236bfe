"""A SMAC-shaped test task: discrete actions, per-agent action masks, deaths and a shared team reward (section 4.6).

The paper's SMAC experiments (section 4.6) need StarCraft II, which cannot be installed on our machines
(``smac/5m_vs_6m`` builds TorchRL's ``SMACv2Env`` where the game is installed). :class:`SmacLikeEnv` is a small,
pure-PyTorch stand-in with the same shape, so code written for SMAC (masks, dead agents, the team reward, the spec
layout) can be tested anywhere. It is **not** StarCraft: there is no unit type, cooldown, shield or pathing.

**Map** ``smaclike/3m`` (:data:`SMAC_LIKE_MAPS`): 3 allied marines (the agents) fight 3 scripted enemy marines on a
``width x height`` grid (10 x 6 cells). Allies start in the two left columns, enemies in the two right ones, each
in a uniformly drawn cell. Every unit has ``health`` 45 and deals ``damage`` 6 per attack (SMAC's marine).

**Actions** (SMAC's order, ``6 + n_enemies`` of them, one-hot): 0 no-op, 1 stop, 2 north (+y), 3 south (-y),
4 east (+x), 5 west (-x), ``6 + j`` attack enemy ``j``. **Availability** (``("agents", "action_mask")``, as SMAC's
``get_avail_actions``): a dead agent can only no-op; a living agent can stop, move to any cell inside the grid, and
attack every living enemy within ``shoot_range`` (3 cells, Euclidean), never no-op. An unavailable action raises a
``ValueError`` (SMAC raises too).

**Dynamics**, all from the state before the step, then applied together: each living ally does its action; each
living enemy attacks its nearest living ally if that one is within ``shoot_range``, else steps one cell towards it
(along the axis of the larger gap). Damage then lands on both sides at once (a unit killed this step still fired);
a unit whose health reaches 0 is dead for the rest of the episode: it stays where it fell, its only action is
no-op, its observation is all zeros.

**Reward** (SMAC's default, ``reward_only_positive``), shared by the team: damage dealt to enemies, plus
``reward_death_value`` (10) per enemy killed, plus ``reward_win`` (200) when the last enemy dies, scaled by
``reward_scale_rate / max_reward`` with ``max_reward = n_enemies * (health + reward_death_value) + reward_win``, so
an episode returns at most ``reward_scale_rate`` (20). **Episodes** end by termination when either side is wiped
out (a win, a loss, or a draw if both fall together) and by truncation after ``max_steps`` (60, SMAC's limit for
3m). Unlike TorchRL's ``SMACv2Env``, which reports SMAC's time limit as a termination, the time limit here is a
truncation (timeouts are not terminals, as everywhere in this package).

**Observations** (per agent, in ``[-1, 1]``, SMAC's feature groups): 4 move flags (the available moves), per
enemy ``[attackable, distance, dx, dy, health]`` (zero when dead or beyond ``sight_range``, 5 cells), per other
ally ``[visible, distance, dx, dy, health]`` (same rule), own ``[health]``; distances and offsets are divided by
``sight_range``, health by the maximum. 3m: 30 numbers, as SMAC's 3m. **State**: per ally and per enemy
``[health, x, y]`` (positions centred and scaled to ``[-1, 1]``; zeros when dead), then every ally's last action,
one-hot (3m: 45 numbers).

**Layouts.** ``layout="agents"`` (default) is TorchRL's ``SMACv2Env(categorical_actions=False)`` layout:
``("agents", "observation")``, ``("agents", "action_mask")``, ``("agents", "action")`` (``OneHot``, masked),
root ``"state"``, ``"info"`` (``battle_won``, ``episode_limit``, ``dead_allies``, ``dead_enemies``), the shared
root ``"reward"`` and root ``done``/``terminated``/``truncated``. ``layout="joint"`` is the datasets' single-agent
view: ``observation`` = the state, ``action`` = the agents' one-hot blocks side by side (``MultiOneHot``, agent
``i``'s at columns ``i * n_actions ..``), ``action_mask`` alike, ``reward``, done flags, and with ``local_obs=True``
``local_observation`` (the agents' observations, ``[n_agents, obs_dim]``). Everything is vectorised over
``num_envs`` environments and deterministic given the seed.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, MultiOneHot, OneHot, Unbounded
from torchrl.envs import EnvBase

from torchrl_otc.envs._common import done_spec, reset_indices

__all__ = [
    "SMAC_LIKE_MAPS",
    "N_NON_ATTACK_ACTIONS",
    "SmacLikeEnv",
]

#: The maps: name -> (allied units = agents, scripted enemies).
SMAC_LIKE_MAPS: dict[str, tuple[int, int]] = {"3m": (3, 3)}
#: Actions before the attacks: no-op, stop, north, south, east, west (SMAC's order).
N_NON_ATTACK_ACTIONS = 6
_NO_OP, _STOP = 0, 1
# north (+y), south (-y), east (+x), west (-x): actions 2..5
_MOVES = torch.tensor([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0]])


class SmacLikeEnv(EnvBase):
    """Allied units against scripted enemies on a grid, in TorchRL's SMACv2 layout (section 4.6's shape).

    See the module's description for the map, actions, masks, dynamics, reward and observations.

    Args:
        num_envs: number of environments simulated at once (the batch size). Defaults to 1.

    Keyword Args:
        n_allies: allied units, the agents. Defaults to 3.
        n_enemies: scripted enemy units. Defaults to 3.
        layout: ``"agents"`` (SMACv2Env's layout, default) or ``"joint"`` (the datasets' view).
        local_obs: in the joint layout, also write the agents' observations under ``local_observation``.
        width: grid width in cells. Defaults to 10.
        height: grid height in cells. Defaults to 6.
        health: every unit's starting health. Defaults to 45 (a marine).
        damage: health an attack removes. Defaults to 6 (a marine).
        shoot_range: distance up to which a unit can attack. Defaults to 3.
        sight_range: distance up to which an agent sees other units. Defaults to 5.
        max_steps: episode length before truncation. Defaults to :attr:`DEFAULT_MAX_STEPS` (60).
        reward_death_value: reward per enemy killed, before scaling. Defaults to 10 (SMAC).
        reward_win: reward for winning, before scaling. Defaults to 200 (SMAC).
        reward_scale_rate: the most an episode can return. Defaults to 20 (SMAC).
        device: torch device. Defaults to CPU.
        seed: seed of the environment's random generator. Defaults to ``None`` (random).

    Examples:
        >>> env = SmacLikeEnv(num_envs=4, seed=0)
        >>> td = env.rollout(60, break_when_any_done=False)
        >>> td["agents", "observation"].shape, td["agents", "action"].shape, td["state"].shape
        (torch.Size([4, 60, 3, 30]), torch.Size([4, 60, 3, 9]), torch.Size([4, 60, 45]))
        >>> bool((td["agents", "action"].bool() <= td["agents", "action_mask"]).all())  # only available actions
        True
        >>> joint = SmacLikeEnv(num_envs=2, layout="joint", seed=0)
        >>> joint.rollout(3)["action"].shape
        torch.Size([2, 3, 27])
    """

    #: SMAC's episode limit for 3m.
    DEFAULT_MAX_STEPS = 60

    def __init__(
        self,
        num_envs: int = 1,
        *,
        n_allies: int = 3,
        n_enemies: int = 3,
        layout: str = "agents",
        local_obs: bool = False,
        width: int = 10,
        height: int = 6,
        health: float = 45.0,
        damage: float = 6.0,
        shoot_range: float = 3.0,
        sight_range: float = 5.0,
        max_steps: int = DEFAULT_MAX_STEPS,
        reward_death_value: float = 10.0,
        reward_win: float = 200.0,
        reward_scale_rate: float = 20.0,
        device: torch.device | str | None = None,
        seed: int | None = None,
    ) -> None:
        if num_envs < 1 or n_allies < 1 or n_enemies < 1:
            raise ValueError(
                f"num_envs, n_allies and n_enemies must be >= 1; got {num_envs}, {n_allies}, {n_enemies}."
            )
        if layout not in ("agents", "joint"):
            raise ValueError(f"layout must be 'agents' or 'joint'; got {layout!r}.")
        if local_obs and layout == "agents":
            raise ValueError(
                "local_obs applies to the joint layout: in the agents layout ('agents', 'observation') already "
                "holds each agent's own observation."
            )
        if width < 4 or height < 1:
            raise ValueError(
                f"The grid needs width >= 4 (two start columns per side) and height >= 1; got {width} x {height}."
            )
        if min(health, damage, shoot_range, max_steps, reward_scale_rate) <= 0:
            raise ValueError(
                "health, damage, shoot_range, max_steps and reward_scale_rate must be positive; got "
                f"{health}, {damage}, {shoot_range}, {max_steps}, {reward_scale_rate}."
            )
        if sight_range < shoot_range:
            raise ValueError(
                f"sight_range ({sight_range}) must be at least shoot_range ({shoot_range}): an agent sees what "
                "it can attack."
            )
        device = torch.device(device if device is not None else "cpu")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.num_envs = num_envs
        self.n_allies, self.n_enemies = int(n_allies), int(n_enemies)
        self.layout = layout
        self.local_obs = bool(local_obs)
        self.width, self.height = int(width), int(height)
        self.health, self.damage = float(health), float(damage)
        self.shoot_range, self.sight_range = float(shoot_range), float(sight_range)
        self.max_steps = int(max_steps)
        self.reward_death_value = float(reward_death_value)
        self.reward_win = float(reward_win)
        self.reward_scale_rate = float(reward_scale_rate)
        sizes = self.sizes(self.n_allies, self.n_enemies)
        self.n_actions, self.obs_dim, self.state_dim = (
            sizes["num_actions"],
            sizes["obs_dim"],
            sizes["state_dim"],
        )
        self._rng = torch.Generator(device=device)
        self._set_seed(seed)
        self._make_specs()
        b, n, m = num_envs, self.n_allies, self.n_enemies
        self._ally_pos = torch.zeros(b, n, 2, device=device)
        self._enemy_pos = torch.zeros(b, m, 2, device=device)
        self._ally_hp = torch.zeros(b, n, device=device)
        self._enemy_hp = torch.zeros(b, m, device=device)
        self._last_action = torch.zeros(b, n, self.n_actions, device=device)
        self._steps = torch.zeros(b, dtype=torch.long, device=device)
        self._mask = torch.zeros(b, n, self.n_actions, dtype=torch.bool, device=device)

    @staticmethod
    def sizes(n_allies: int, n_enemies: int) -> dict[str, int]:
        """The number of actions, the observation size and the state size of a map.

        Args:
            n_allies: allied units (agents).
            n_enemies: enemy units.

        Returns:
            ``{"num_actions": ..., "obs_dim": ..., "state_dim": ...}``.

        Examples:
            >>> SmacLikeEnv.sizes(3, 3)  # SMAC's 3m has 9 actions and 30 observation features as well
            {'num_actions': 9, 'obs_dim': 30, 'state_dim': 45}
        """
        num_actions = N_NON_ATTACK_ACTIONS + n_enemies
        obs_dim = 4 + 5 * n_enemies + 5 * (n_allies - 1) + 1
        state_dim = 3 * n_allies + 3 * n_enemies + n_allies * num_actions
        return {"num_actions": num_actions, "obs_dim": obs_dim, "state_dim": state_dim}

    # ------------------------------------------------------------------ specs
    def _make_specs(self) -> None:
        shape, dev = self.batch_size, self.device
        n, a = self.n_allies, self.n_actions
        group = (*shape, n)
        mask = Categorical(2, (*group, a), dtype=torch.bool, device=dev)
        info = Composite(
            battle_won=Categorical(2, shape, dtype=torch.bool, device=dev),
            episode_limit=Categorical(2, shape, dtype=torch.bool, device=dev),
            dead_allies=Bounded(0, n, shape, dtype=torch.long, device=dev),
            dead_enemies=Bounded(0, self.n_enemies, shape, dtype=torch.long, device=dev),
            shape=shape,
            device=dev,
        )
        state = Bounded(-1.0, 1.0, (*shape, self.state_dim), device=dev)
        if self.layout == "agents":
            self.observation_spec = Composite(
                agents=Composite(
                    observation=Bounded(-1.0, 1.0, (*group, self.obs_dim), device=dev),
                    action_mask=mask,
                    shape=group,
                    device=dev,
                ),
                state=state,
                info=info,
                shape=shape,
                device=dev,
            )
            self.action_spec = Composite(
                agents=Composite(
                    action=OneHot(a, (*group, a), dtype=torch.long, device=dev),
                    shape=group,
                    device=dev,
                ),
                shape=shape,
                device=dev,
            )
        else:
            obs: dict[str, Any] = {
                "observation": state,
                "action_mask": Categorical(2, (*shape, n * a), dtype=torch.bool, device=dev),
            }
            if self.local_obs:
                obs["local_observation"] = Bounded(-1.0, 1.0, (*group, self.obs_dim), device=dev)
            self.observation_spec = Composite(obs, shape=shape, device=dev)
            self.action_spec = MultiOneHot(
                [a] * n, shape=(*shape, n * a), dtype=torch.long, device=dev
            )
        self.reward_spec = Unbounded((*shape, 1), device=dev)
        self.state_spec = Composite(shape=shape, device=dev)
        self.done_spec = done_spec(shape, dev)

    def _update_spec_mask(self) -> None:
        if self.layout == "agents":
            self.full_action_spec["agents", "action"].update_mask(self._mask.clone())
        else:
            self.action_spec.update_mask(self._mask.flatten(-2).clone())

    # ------------------------------------------------------------------ rules
    @property
    def max_reward(self) -> float:
        """The unscaled reward of a perfect episode: ``n_enemies * (health + reward_death_value) + reward_win``."""
        return self.n_enemies * (self.health + self.reward_death_value) + self.reward_win

    def available_actions(self) -> torch.Tensor:
        """The action mask of the current state, ``[num_envs, n_allies, n_actions]`` (SMAC's ``get_avail_actions``).

        Returns:
            Booleans: a dead agent has only no-op; a living one stop, the moves that stay inside the grid and the
            attacks on living enemies within ``shoot_range``.

        Examples:
            >>> env = SmacLikeEnv(seed=0)
            >>> _ = env.reset()
            >>> env.available_actions()[0, 0, :2].tolist()  # living: no no-op, stop
            [False, True]
        """
        alive = self._ally_hp > 0  # [B, N]
        target = self._ally_pos.unsqueeze(-2) + _MOVES.to(self.device)  # [B, N, 4, 2]
        inside = (
            (target[..., 0] >= 0)
            & (target[..., 0] <= self.width - 1)
            & (target[..., 1] >= 0)
            & (target[..., 1] <= self.height - 1)
        )
        dist = (self._ally_pos.unsqueeze(-2) - self._enemy_pos.unsqueeze(-3)).norm(
            dim=-1
        )  # [B, N, M]
        attack = (dist <= self.shoot_range) & (self._enemy_hp > 0).unsqueeze(-2)
        living = torch.cat(
            [
                torch.zeros_like(alive).unsqueeze(-1),
                torch.ones_like(alive).unsqueeze(-1),
                inside,
                attack,
            ],
            dim=-1,
        )
        dead = torch.zeros_like(living)
        dead[..., _NO_OP] = True
        return torch.where(alive.unsqueeze(-1), living, dead)

    def _features(
        self, rel: torch.Tensor, alive: torch.Tensor, hp: torch.Tensor, flag: torch.Tensor
    ) -> torch.Tensor:
        """``[flag, distance, dx, dy, health]`` of units at offsets ``rel`` ``[B, N, K, 2]``; zero if unseen."""
        dist = rel.norm(dim=-1)
        seen = alive & (dist <= self.sight_range)
        feats = torch.cat(
            [
                flag.float().unsqueeze(-1),
                (dist / self.sight_range).unsqueeze(-1),
                rel / self.sight_range,
                (hp / self.health).unsqueeze(-1),
            ],
            dim=-1,
        )
        return feats * seen.unsqueeze(-1)

    def observations(self) -> torch.Tensor:
        """Every agent's observation, ``[num_envs, n_allies, obs_dim]`` (zeros for dead agents).

        Returns:
            ``[move flags (4), enemies (5 each), other allies (5 each), own health]`` (see the module's text).

        Examples:
            >>> env = SmacLikeEnv(num_envs=2, seed=0)
            >>> _ = env.reset()
            >>> env.observations().shape
            torch.Size([2, 3, 30])
        """
        b, n, m = self.num_envs, self.n_allies, self.n_enemies
        alive = self._ally_hp > 0
        moves = self._mask[..., 2:N_NON_ATTACK_ACTIONS].float()
        to_enemy = self._enemy_pos.unsqueeze(-3) - self._ally_pos.unsqueeze(-2)  # [B, N, M, 2]
        enemy_alive = (self._enemy_hp > 0).unsqueeze(-2).expand(b, n, m)
        attackable = self._mask[..., N_NON_ATTACK_ACTIONS:]
        enemies = self._features(
            to_enemy, enemy_alive, self._enemy_hp.unsqueeze(-2).expand(b, n, m), attackable
        )
        # the other allies of agent i, in index order
        others = torch.tensor(
            [[k for k in range(n) if k != i] for i in range(n)],
            device=self.device,
            dtype=torch.long,
        ).reshape(n, n - 1)
        to_ally = self._ally_pos[:, others] - self._ally_pos.unsqueeze(-2)  # [B, N, N-1, 2]
        ally_alive = alive[:, others]
        allies = self._features(to_ally, ally_alive, self._ally_hp[:, others], ally_alive)
        own = (self._ally_hp / self.health).unsqueeze(-1)
        obs = torch.cat([moves, enemies.flatten(-2), allies.flatten(-2), own], dim=-1)
        return obs * alive.unsqueeze(-1)

    def global_state(self) -> torch.Tensor:
        """The global state, ``[num_envs, state_dim]``: per unit ``[health, x, y]`` (zeros if dead), last actions.

        Examples:
            >>> env = SmacLikeEnv(num_envs=2, seed=0)
            >>> _ = env.reset()
            >>> env.global_state().shape
            torch.Size([2, 45])
        """
        centre = torch.tensor([(self.width - 1) / 2, (self.height - 1) / 2], device=self.device)
        half = centre.clamp_min(0.5)

        def units(pos: torch.Tensor, hp: torch.Tensor) -> torch.Tensor:
            feats = torch.cat([(hp / self.health).unsqueeze(-1), (pos - centre) / half], dim=-1)
            return (feats * (hp > 0).unsqueeze(-1)).flatten(-2)

        return torch.cat(
            [
                units(self._ally_pos, self._ally_hp),
                units(self._enemy_pos, self._enemy_hp),
                self._last_action.flatten(-2),
            ],
            dim=-1,
        )

    def _enemy_policy(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The scripted enemies: ``(damage to each ally [B, N], enemy moves [B, M, 2])`` from the current state."""
        ally_alive = self._ally_hp > 0
        enemy_alive = (self._enemy_hp > 0) & ally_alive.any(-1, keepdim=True)
        gap = self._ally_pos.unsqueeze(-3) - self._enemy_pos.unsqueeze(-2)  # [B, M, N, 2]
        dist = gap.norm(dim=-1).masked_fill(~ally_alive.unsqueeze(-2), float("inf"))
        nearest_dist, nearest = dist.min(dim=-1)  # [B, M]
        fires = enemy_alive & (nearest_dist <= self.shoot_range)
        hits = torch.zeros_like(self._ally_hp).scatter_add_(
            -1, nearest, fires.float() * self.damage
        )
        towards = gap.gather(-2, nearest[..., None, None].expand(*nearest.shape, 1, 2)).squeeze(-2)
        along_x = towards[..., 0].abs() >= towards[..., 1].abs()
        step = torch.where(
            along_x.unsqueeze(-1),
            torch.stack([towards[..., 0].sign(), torch.zeros_like(towards[..., 0])], -1),
            torch.stack([torch.zeros_like(towards[..., 1]), towards[..., 1].sign()], -1),
        )
        walks = enemy_alive & ~fires
        return hits, step * walks.unsqueeze(-1)

    # ------------------------------------------------------------------ env API
    def _info(self, truncated: torch.Tensor) -> TensorDict:
        return TensorDict(
            {
                "battle_won": ((self._enemy_hp <= 0).all(-1) & (self._ally_hp > 0).any(-1)),
                "episode_limit": truncated.reshape(self.num_envs).clone(),
                "dead_allies": (self._ally_hp <= 0).sum(-1),
                "dead_enemies": (self._enemy_hp <= 0).sum(-1),
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _out(self, reward: torch.Tensor | None, done: dict[str, torch.Tensor]) -> TensorDictBase:
        self._mask = self.available_actions()
        self._update_spec_mask()
        obs, state = self.observations(), self.global_state()
        out: dict[str, Any] = dict(done)
        if self.layout == "agents":
            out["agents"] = TensorDict(
                {"observation": obs, "action_mask": self._mask.clone()},
                batch_size=(self.num_envs, self.n_allies),
                device=self.device,
            )
            out["state"] = state
            out["info"] = self._info(done["truncated"])
        else:
            out["observation"] = state
            out["action_mask"] = self._mask.flatten(-2).clone()
            if self.local_obs:
                out["local_observation"] = obs
        if reward is not None:
            out["reward"] = reward
        return TensorDict(out, batch_size=self.batch_size, device=self.device)

    def _cells(self, n: int, k: int, columns: tuple[int, int]) -> torch.Tensor:
        x = torch.randint(
            columns[0], columns[1] + 1, (n, k), generator=self._rng, device=self.device
        )
        y = torch.randint(0, self.height, (n, k), generator=self._rng, device=self.device)
        return torch.stack([x, y], dim=-1).float()

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        idx = reset_indices(tensordict, self.num_envs, self.device)
        n = idx.numel()
        if n:
            self._ally_pos[idx] = self._cells(n, self.n_allies, (0, 1))
            self._enemy_pos[idx] = self._cells(n, self.n_enemies, (self.width - 2, self.width - 1))
            self._ally_hp[idx] = self.health
            self._enemy_hp[idx] = self.health
            self._last_action[idx] = 0.0
            self._steps[idx] = 0
        false = torch.zeros(self.num_envs, 1, dtype=torch.bool, device=self.device)
        return self._out(
            None, {"done": false, "terminated": false.clone(), "truncated": false.clone()}
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        b, n = self.num_envs, self.n_allies
        if self.layout == "agents":
            action = tensordict.get(("agents", "action"))
        else:
            action = tensordict.get("action").reshape(b, n, self.n_actions)
        if bool((action.sum(-1) != 1).any()):
            raise ValueError(
                f"SmacLikeEnv takes one-hot actions (exactly one 1 per agent among {self.n_actions} columns)."
            )
        index = action.argmax(-1)  # [B, N]
        if not bool(self._mask.gather(-1, index.unsqueeze(-1)).all()):
            env_i, agent_i = (
                (~self._mask.gather(-1, index.unsqueeze(-1)).squeeze(-1)).nonzero()[0].tolist()
            )
            raise ValueError(
                f"Agent {agent_i} of environment {env_i} cannot perform action {int(index[env_i, agent_i])}: it is "
                "masked out. Sample from ('agents', 'action_mask') (or the joint 'action_mask')."
            )
        # decisions from the state before the step
        target = (index - N_NON_ATTACK_ACTIONS).clamp_min(0)
        attacks = index >= N_NON_ATTACK_ACTIONS
        enemy_damage = torch.zeros_like(self._enemy_hp).scatter_add_(
            -1, target, attacks.float() * self.damage
        )
        ally_damage, enemy_steps = self._enemy_policy()
        # moves
        is_move = (index >= 2) & (index < N_NON_ATTACK_ACTIONS)
        moves = _MOVES.to(self.device)[(index - 2).clamp(0, 3)] * is_move.unsqueeze(-1)
        self._ally_pos = self._ally_pos + moves
        self._enemy_pos = self._enemy_pos + enemy_steps
        # damage lands on both sides at once
        enemy_before = self._enemy_hp
        self._enemy_hp = (self._enemy_hp - enemy_damage).clamp_min(0.0)
        self._ally_hp = (self._ally_hp - ally_damage).clamp_min(0.0)
        self._last_action = action.to(torch.float32)
        self._steps = self._steps + 1
        kills = ((enemy_before > 0) & (self._enemy_hp <= 0)).sum(-1, keepdim=True).float()
        enemies_dead = (self._enemy_hp <= 0).all(-1, keepdim=True)
        allies_dead = (self._ally_hp <= 0).all(-1, keepdim=True)
        won = enemies_dead & ~allies_dead
        dealt = (enemy_before - self._enemy_hp).sum(-1, keepdim=True)
        raw = dealt + self.reward_death_value * kills + self.reward_win * won.float()
        reward = raw * (self.reward_scale_rate / self.max_reward)
        terminated = enemies_dead | allies_dead
        truncated = (self._steps >= self.max_steps).unsqueeze(-1) & ~terminated
        return self._out(
            reward,
            {"done": terminated | truncated, "terminated": terminated, "truncated": truncated},
        )

    def set_units(
        self,
        env_index: int = 0,
        *,
        ally_pos: Any = None,
        enemy_pos: Any = None,
        ally_health: Any = None,
        enemy_health: Any = None,
    ) -> TensorDictBase:
        """Place environment ``env_index``'s units by hand (tests, hand-made scenarios) and observe the result.

        Positions are cells ``[n, 2]`` (``x, y``), health values ``[n]`` (0: dead); what is not given stays. The
        episode's step count is kept. Call it after :meth:`reset`.

        Args:
            env_index: which environment. Defaults to 0.

        Keyword Args:
            ally_pos: the allies' cells.
            enemy_pos: the enemies' cells.
            ally_health: the allies' health.
            enemy_health: the enemies' health.

        Returns:
            The observation of every environment, as :meth:`reset` returns it (masks, observations, state).

        Examples:
            >>> env = SmacLikeEnv(seed=0)
            >>> _ = env.reset()
            >>> td = env.set_units(ally_health=[45, 0, 45])
            >>> td["agents", "action_mask"][0, 1].tolist()  # the dead agent can only no-op
            [True, False, False, False, False, False, False, False, False]
        """
        for value, target in (
            (ally_pos, self._ally_pos),
            (enemy_pos, self._enemy_pos),
            (ally_health, self._ally_hp),
            (enemy_health, self._enemy_hp),
        ):
            if value is not None:
                target[env_index] = torch.as_tensor(value, dtype=torch.float32, device=self.device)
        false = torch.zeros(self.num_envs, 1, dtype=torch.bool, device=self.device)
        return self._out(
            None, {"done": false, "terminated": false.clone(), "truncated": false.clone()}
        )

    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            self._rng.seed()
        else:
            self._rng.manual_seed(int(seed))
