"""Bring your own offline multi-agent dataset: a D4RL HDF5 file or your own arrays.

The package keeps offline data in one format: *joint* transitions in TorchRL's layout (``observation`` = the global
state, ``action`` = the joint action, ``("next", ...)`` = reward, next state and done flags) plus metadata that
says which action columns belong to which agent (``action_partition``). The decentralised datasets ``B_i^0`` of the
paper (section 4.1) are cut from it: agent ``i`` keeps the state, its own action columns, the shared reward and the
next state; the other agents' actions are deleted.

This script writes a small D4RL-style HDF5 file for a made-up two-agent robot (6-d state, 2 + 2 action columns),
then:

1. loads it with :func:`~torchrl_otc.data.datasets.load_d4rl_hdf5` (no ``d4rl`` package needed, only ``h5py``);
2. builds the same kind of dataset from plain NumPy arrays;
3. saves both in the package's format (memory-mapped, with a checksum) and loads them back, checked;
4. cuts each agent's view with ``split_agents`` and with the ``AgentView`` replay-buffer transform;
5. trains agent 0 for a few updates on its own data with an OTC-sampled buffer.

    python examples/tutorials/bring_your_own_dataset.py --tiny
    python examples/tutorials/bring_your_own_dataset.py --out my_datasets/

For a real D4RL file of a registered robot, pass the task instead of the partition, e.g.
``load_d4rl_hdf5("halfcheetah-medium-v2.hdf5", task="mamujoco/halfcheetah-2x3")``, or run
``otc data import d4rl FILE --task mamujoco/halfcheetah-2x3 --out DIR``. Needs the ``data`` extra (h5py).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Unbounded

from torchrl_otc import AgentLearner, AgentView
from torchrl_otc.data.datasets import (
    load_d4rl_hdf5,
    load_offline_dataset,
    save_dataset,
    validate_transitions,
)
from torchrl_otc.data.transforms import split_agents

STATE_DIM = 6
#: Agent 0 holds joint action columns 0 and 1, agent 1 holds 2 and 3.
ACTION_PARTITION = [[0, 1], [2, 3]]


def robot_episodes(episodes: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """Random-action episodes of a linear two-agent robot, as flat arrays (what a D4RL file holds)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(4, STATE_DIM)) * 0.1  # how the joint action moves the state
    obs, act, rew, term, tout = [], [], [], [], []
    for e in range(episodes):
        s = rng.uniform(-1, 1, STATE_DIM)
        for t in range(length):
            a = rng.uniform(-1, 1, 4)
            s_next = s + a @ mix
            fell = bool(e == 0 and t == length // 2)  # episode 0 ends early, in a terminal state
            obs.append(s)
            act.append(a)
            rew.append(-np.abs(s_next).sum())
            term.append(fell)
            tout.append(t == length - 1 and not fell)
            s = s_next
            if fell:
                break
    return {
        "observations": np.asarray(obs, dtype=np.float32),
        "actions": np.asarray(act, dtype=np.float32),
        "rewards": np.asarray(rew, dtype=np.float32),
        "terminals": np.asarray(term),
        "timeouts": np.asarray(tout),
    }


def write_d4rl_file(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """A D4RL-style HDF5 file: flat datasets, one row per step, no ``next_observations``."""
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


def transitions_from_arrays(
    obs: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    next_obs: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
) -> TensorDict:
    """Your own arrays in TorchRL's transition layout (the keys of ``REQUIRED_KEYS``)."""
    n = len(obs)
    flag = lambda x: torch.as_tensor(np.asarray(x, dtype=bool)).reshape(n, 1)  # noqa: E731
    data = TensorDict(
        {
            "observation": torch.as_tensor(obs, dtype=torch.float32),
            "action": torch.as_tensor(actions, dtype=torch.float32),
            ("next", "observation"): torch.as_tensor(next_obs, dtype=torch.float32),  # never zeroed
            ("next", "reward"): torch.as_tensor(rewards, dtype=torch.float32).reshape(n, 1),
            ("next", "terminated"): flag(terminated),
            ("next", "truncated"): flag(truncated),  # a timeout is a truncation, not a terminal
            ("next", "done"): flag(np.logical_or(terminated, truncated)),
        },
        batch_size=[n],
    )
    validate_transitions(data, where="my arrays")  # raises DatasetError saying what is wrong
    return data


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Bring your own offline multi-agent dataset.")
    parser.add_argument("--tiny", action="store_true", help="20 short episodes, 10 updates")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for the files (default: temp dir)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small networks: one thread is fastest on a shared CPU
    torch.manual_seed(args.seed)
    out = args.out or Path(tempfile.mkdtemp(prefix="otc-byod-"))
    out.mkdir(parents=True, exist_ok=True)
    episodes, length, updates = (20, 25, 10) if args.tiny else (200, 100, 200)

    # 1. A D4RL HDF5 file -> the joint layout. Without next_observations in the file, the next state of a row is
    #    the following row of its episode, and each episode's last row (whose next state is unknown) is dropped.
    arrays = robot_episodes(episodes, length, args.seed)
    hdf5 = write_d4rl_file(out / "robot-random.hdf5", arrays)
    from_file = load_d4rl_hdf5(hdf5, action_partition=ACTION_PARTITION)
    stats = from_file.metadata["stats"]
    print(
        f"{hdf5.name}: {stats['rows_in_file']} rows in the file, {len(from_file)} transitions "
        f"({stats['dropped_rows']} episode-final rows dropped), {from_file.n_agents} agents"
    )

    # 2. Your own arrays -> the same layout. Here: consecutive rows of each episode, like the loader does.
    end = arrays["terminals"] | arrays["timeouts"]
    keep = np.flatnonzero(~end[:-1])  # rows whose next row is in the same episode
    mine = transitions_from_arrays(
        obs=arrays["observations"][keep],
        actions=arrays["actions"][keep],
        rewards=arrays["rewards"][keep],
        next_obs=arrays["observations"][keep + 1],
        terminated=np.zeros(len(keep), dtype=bool),
        truncated=np.zeros(len(keep), dtype=bool),
    )

    # 3. Save in the package's format (memory-mapped data + metadata.json with a SHA-256 checksum), load checked.
    meta = {"task": None, "kind": "custom", "action_partition": ACTION_PARTITION, "seed": args.seed}
    save_dataset(
        from_file.data,
        out / "robot-from-hdf5",
        {**from_file.metadata, "kind": "d4rl"},
        overwrite=True,
    )
    save_dataset(mine, out / "robot-from-arrays", meta, overwrite=True)
    dataset = load_offline_dataset(
        out / "robot-from-arrays"
    )  # verifies the checksum, NaNs, all-zero columns
    print(
        f"saved and reloaded {dataset.path.name}: {len(dataset)} rows, checksum {dataset.metadata['checksum'][:12]}..."
    )

    # 4. Decentralise: agent i's (s, a_i, r, s', done), in memory ...
    views = [v.to_tensordict() for v in split_agents(dataset)]
    for i, view in enumerate(views):
        print(
            f"agent {i}: action columns {ACTION_PARTITION[i]} -> action shape {tuple(view['action'].shape)}"
        )
    # ... or as a replay-buffer transform: the buffer stores agent 1's view only.
    agent1_buffer = dataset.replay_buffer(
        batch_size=32, transform=AgentView(1, dataset.action_partition)
    )
    stored_width = agent1_buffer.storage[0]["action"].shape[-1]

    # 5. Agent 0 on its own data: an AgentLearner with an OTC-sampled merged buffer (uniform until online data).
    learner = AgentLearner(
        "td3bc",
        Unbounded(shape=(STATE_DIM,)),
        Bounded(-1.0, 1.0, shape=(len(ACTION_PARTITION[0]),)),
        seed=args.seed,
        merged_capacity=len(views[0]) + 1000,
        online_capacity=1000,
        sampler_kwargs={"num_candidates": 64, "num_online": 100},
    )
    learner.add_offline(views[0])
    losses = [learner.update()["loss_qvalue"] for _ in range(updates)]
    print(
        f"agent 0, {updates} offline TD3+BC updates: loss_qvalue {losses[0]:.3f} -> {losses[-1]:.3f}"
    )
    print(
        "a dataset of a registered task (its state and action sizes) trains end to end with "
        f"`otc tune task=TASK dataset_path={out / 'robot-from-arrays'}`"
    )
    return {
        "out": out,
        "hdf5_rows": stats["rows_in_file"],
        "hdf5_transitions": len(from_file),
        "dropped_rows": stats["dropped_rows"],
        "episodes": int(end.sum()),
        "from_file": from_file,
        "dataset": dataset,
        "views": views,
        "agent1_stored_action_width": stored_width,
        "losses": losses,
    }


if __name__ == "__main__":
    main()
