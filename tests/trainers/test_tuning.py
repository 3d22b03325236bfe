"""End-to-end tests of the online-tuning loop (Algorithm 1) at tiny sizes."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from tensordict import TensorDict

from torchrl_otc.configs.tune import parse_overrides
from torchrl_otc.report import load_run
from torchrl_otc.trainers.tuning import OnlineTuner

TINY = [
    "task=nav/nonstationary",
    "dataset_size=1500",
    "offline_updates=20",
    "deployments=2",
    "steps_per_deployment=100",
    "updates_per_deployment=20",
    "eval_episodes=2",
    "num_candidates=64",
    "num_online=50",
    "checkpoint_every=8",
]


def config(tmp_path, *overrides):
    cfg = parse_overrides([*TINY, *overrides])
    cfg.run.runs_root, cfg.data.cache_dir = str(tmp_path / "runs"), str(tmp_path / "cache")
    return cfg


STRATEGIES = [
    ("otc",),
    ("otc", "distance=embedding"),
    ("otc", "distance=value"),
    ("otc", "distance=value", "value_refresh_every=2", "score_every=2"),
    ("uniform",),
    ("online-only",),
    ("balanced-replay",),
]


@pytest.mark.parametrize("strategy,overrides", [(s[0], s[1:]) for s in STRATEGIES])
def test_run_folder_and_metrics(tmp_path, strategy, overrides):
    cfg = config(tmp_path, f"strategy={strategy}", *overrides)
    summary = OnlineTuner(cfg, progress=False).run()
    assert sorted(summary["returns"]) == [0, 1, 2]
    run = load_run(summary["run_dir"])
    assert run.config["strategy"] == strategy
    for name in ("meta.json", "config.yaml", "metrics.csv", "checkpoint/state.pt"):
        assert (run.path / name).exists(), name
    values = [float(r["value"]) for r in run.rows]
    assert values and all(math.isfinite(v) for v in values)
    assert {r["phase"] for r in run.rows} == {"offline", "online"}
    steps = [int(r["step"]) for r in run.rows]
    assert steps == sorted(steps)  # one step axis across both phases
    assert max(steps) == 20 + 2 * 20
    share = run.series("agent0/online_share")
    if strategy == "online-only":
        assert share[1] == 1.0 and share[2] == 1.0
    if strategy == "uniform":  # 100 online rows among 1600: uniform draws ~6 % of them
        assert share[1] < 0.2
    online_names = {r["name"] for r in run.rows if r["phase"] == "online"}
    offline_names = {r["name"] for r in run.rows if r["phase"] == "offline"}
    if (
        "distance=embedding" in overrides
    ):  # the CVAE trains in the online phase, and before it on B^0
        assert {"agent0/distance/loss_vae", "agent0/distance/vae_kl"} <= online_names
        assert "agent0/distance/loss_vae" in offline_names
    else:
        assert not any("distance/" in name for name in online_names | offline_names)
    if (
        strategy == "balanced-replay"
    ):  # the density-ratio network trains only once online data exists
        assert {"agent0/sampler/loss", "agent0/sampler/weight_online"} <= online_names
        assert not any("sampler/" in name for name in offline_names)
    if strategy == "otc":
        alpha, d = run.series("agent0/alpha"), run.series("agent0/D")
        assert alpha[2] == pytest.approx(min(max(alpha[1] * d[2] / d[1], 0.1), 10.0), rel=1e-6)


def test_alpha_follows_eq4(tmp_path):
    summary = OnlineTuner(config(tmp_path), progress=False).run()
    run = load_run(summary["run_dir"])
    alpha, d = run.series("agent0/alpha"), run.series("agent0/D")
    assert alpha[0] == alpha[1] == 1.0  # unchanged before and at the first deployment
    assert alpha[2] == pytest.approx(min(max(alpha[1] * d[2] / d[1], 0.1), 10.0), rel=1e-6)


def test_offline_agents_are_reused_across_strategies(tmp_path):
    first = OnlineTuner(config(tmp_path, "strategy=otc"), progress=False).run()
    second = OnlineTuner(config(tmp_path, "strategy=uniform"), progress=False).run()
    assert (
        first["returns"][0] == second["returns"][0]
    )  # same offline-trained agents, same evaluation
    # The second run loaded them from the cache and still holds the offline phase's rows on the same axis.
    a, b = load_run(first["run_dir"]), load_run(second["run_dir"])

    def training_rows(run):
        return [
            (r["step"], r["name"], r["value"])
            for r in run.rows
            if r["phase"] == "offline" and "/loss" in r["name"]
        ]

    assert training_rows(a) and training_rows(a) == training_rows(b)


def _killed_then_resumed(tmp_path, monkeypatch, where: str, *overrides: str, edit=None):
    """Runs to a KeyboardInterrupt at ``where`` and resumes; returns (reference run, resumed run).

    ``where``: ``"update"`` (update 13 of deployment 2's tuning), ``"collection"`` (deployment 2's collection) or
    ``"offline"`` (update 11 of offline training, after its first in-phase checkpoint: checkpoint_every=8).
    ``edit(checkpoint_dir)`` runs between the kill and the resume.
    """
    reference = OnlineTuner(config(tmp_path / "a", *overrides), progress=False).run()
    tuner = OnlineTuner(config(tmp_path / "b", *overrides), progress=False)
    if where == "collection":
        original = tuner._collect

        def collect(deployment, steps, explore_agent=None):
            if deployment == 2:
                raise KeyboardInterrupt("killed while collecting")
            return original(deployment, steps, explore_agent)

        monkeypatch.setattr(tuner, "_collect", collect)
    else:
        original = tuner._train
        phase_killed, deployment_killed, update_killed = (
            ("online", 2, 13) if where == "update" else ("offline", 0, 11)
        )

        def train(steps, *, phase, deployment, start=0):
            if phase == phase_killed and deployment == deployment_killed:
                learner = tuner.agents[0].learner
                update = learner.update

                def failing(**kwargs):
                    if tuner._stage["update"] >= update_killed:
                        raise KeyboardInterrupt(f"killed in the {phase} phase")
                    return update(**kwargs)

                monkeypatch.setattr(learner, "update", failing)
            return original(steps, phase=phase, deployment=deployment, start=start)

        monkeypatch.setattr(tuner, "_train", train)
    with pytest.raises(KeyboardInterrupt):
        tuner.run()
    monkeypatch.undo()
    if edit is not None:
        edit(tuner.folder.checkpoint_dir)
    resumed = OnlineTuner.resume(tuner.folder.path, progress=False).run()
    return load_run(reference["run_dir"]), load_run(resumed["run_dir"])


@pytest.mark.parametrize(
    "where,distance",
    [
        ("update", "feature"),
        ("update", "embedding"),
        ("collection", "feature"),
        ("offline", "feature"),
    ],
)
def test_resume_after_a_kill_anywhere_equals_uninterrupted_run(
    tmp_path, monkeypatch, where, distance
):
    a, b = _killed_then_resumed(tmp_path, monkeypatch, where, f"distance={distance}")
    names = ["agent0/loss_qvalue", "agent0/alpha", "agent0/D", "eval/return_mean"]
    if distance == "embedding":  # the CVAE, its optimiser and its random stream were checkpointed
        names.append("agent0/distance/loss_vae")
    for name in names:
        assert a.series(name) == pytest.approx(b.series(name)), name
    rows = lambda run: [(r["step"], r["phase"], r["name"]) for r in run.rows]  # noqa: E731
    assert rows(a) == rows(b)  # no row lost, none duplicated
    # The online data of every deployment survived, read from the buffers (no copy kept aside).
    state = torch.load(b.path / "checkpoint" / "state.pt", weights_only=False)
    assert state["format"] == 2 and state["agents"][0]["rows"] == {"merged": 200, "online": 100}
    merged = TensorDict.load_memmap(b.path / "checkpoint" / "agent0" / "merged")
    assert merged["deployment"].tolist() == [1] * 100 + [2] * 100 and merged["is_online"].all()
    online = TensorDict.load_memmap(b.path / "checkpoint" / "agent0" / "online")
    assert torch.equal(online["observation"], merged["observation"][100:])


def _as_format_1(checkpoint: Path) -> None:
    """Rewrites a checkpoint as earlier versions wrote it: every deployment's rows and the online buffer pickled
    in state.pt ("online_rows", "current_online"), torch's random state only, no buffer folders."""
    state = torch.load(checkpoint / "state.pt", weights_only=False)
    for i, agent in enumerate(state["agents"]):
        merged = TensorDict.load_memmap(checkpoint / f"agent{i}" / "merged").to_tensordict()
        online = TensorDict.load_memmap(checkpoint / f"agent{i}" / "online").to_tensordict()
        deployments = merged["deployment"]
        agent["online_rows"] = [merged[deployments == k] for k in deployments.unique().tolist()]
        agent["current_online"] = online
        del agent["rows"]
        shutil.rmtree(checkpoint / f"agent{i}")
    rng = state.pop("rng")
    state["torch_rng"], state["cuda_rng"] = rng["torch_cpu"], None
    del state["format"]
    torch.save(state, checkpoint / "state.pt")


def test_a_checkpoint_of_the_earlier_format_resumes(tmp_path, monkeypatch):
    a, b = _killed_then_resumed(
        tmp_path, monkeypatch, "update", "distance=embedding", edit=_as_format_1
    )
    for name in ("agent0/loss_qvalue", "agent0/alpha", "agent0/D", "agent0/distance/loss_vae"):
        assert a.series(name) == pytest.approx(b.series(name)), name
    assert a.series("eval/return_mean") == b.series("eval/return_mean")


def test_resume_before_the_first_checkpoint_restarts_cleanly(tmp_path):
    cfg = config(tmp_path)
    tuner = OnlineTuner(cfg, progress=False)
    tuner.folder.write_config(cfg.to_dict())
    tuner.folder.log({"agent0/loss_qvalue": 1.0}, step=1, phase="offline", deployment=0)
    resumed = OnlineTuner.resume(tuner.folder.path, progress=False).run()
    reference = OnlineTuner(config(tmp_path / "ref"), progress=False).run()
    a, b = load_run(reference["run_dir"]), load_run(resumed["run_dir"])
    assert [(r["step"], r["name"]) for r in a.rows] == [(r["step"], r["name"]) for r in b.rows]


def test_a_run_folder_of_the_flat_config_of_earlier_versions_resumes(tmp_path):
    cfg = config(tmp_path, "algo=bcq", "strategy=uniform", "seed=3")
    tuner = OnlineTuner(cfg, progress=False)
    old = {
        k: v for k, v in cfg.to_flat().items() if "." not in k
    }  # config.yaml as earlier versions wrote it
    assert "algo" in old and "algorithm.actor_lr" not in old
    tuner.folder.write_config(old)
    assert OnlineTuner.resume(tuner.folder.path, progress=False).config == cfg


def test_a_dotted_algorithm_override_reaches_the_optimisers_and_config_yaml(tmp_path):
    """otc tune algo=bcq algorithm.actor_lr=0.0003: the value reaches make_algorithm and is recorded."""
    cfg = config(
        tmp_path,
        "algorithm.actor_lr=0.0003",  # before algo=: applied after it all the same
        "algo=bcq",
        "algorithm.hidden_sizes=32,32",
        "deployments=1",
        "offline_updates=4",
        "updates_per_deployment=4",
    )
    tuner = OnlineTuner(cfg, progress=False)
    summary = tuner.run()
    for agent in tuner.agents:
        optimizers = agent.learner.algorithm.optimizers
        assert agent.learner.config.actor_lr == 3e-4
        assert [g["lr"] for g in optimizers["actor"].param_groups] == [3e-4]
        assert [g["lr"] for g in optimizers["critic"].param_groups] == [
            1e-4
        ]  # Table 3's, untouched
        widths = {p.shape[0] for p in agent.learner.parameters() if p.dim() == 2}
        assert 32 in widths and 64 not in widths  # BCQ's Table 3 width (64) replaced everywhere
    written = yaml.safe_load((Path(summary["run_dir"]) / "config.yaml").read_text())
    assert written["algorithm"]["name"] == "bcq"
    assert written["algorithm"]["actor_lr"] == 3e-4 and written["algorithm"]["hidden_sizes"] == [
        32,
        32,
    ]
    assert OnlineTuner.resume(summary["run_dir"], progress=False).config == tuner.config


def test_learned_distances_do_not_change_the_offline_agents(tmp_path):
    """d_e trains on B^0 after offline training, in its own stream: the offline phase is the strategies' own."""
    plain = OnlineTuner(config(tmp_path / "a", "strategy=uniform"), progress=False)
    plain.run()
    learned = OnlineTuner(config(tmp_path / "b", "distance=embedding"), progress=False)
    learned.run()
    a, b = load_run(plain.folder.path), load_run(learned.folder.path)
    assert a.series("eval/return_mean")[0] == b.series("eval/return_mean")[0]
    offline = [n for n in {r["name"] for r in a.rows if r["phase"] == "offline"} if "loss" in n]
    assert offline
    for name in offline:
        assert [r["value"] for r in a.rows if r["name"] == name and r["phase"] == "offline"] == [
            r["value"] for r in b.rows if r["name"] == name and r["phase"] == "offline"
        ], name


def test_existing_run_folder_is_not_overwritten(tmp_path):
    cfg = config(tmp_path)
    OnlineTuner(cfg, progress=False).run()
    with pytest.raises(FileExistsError, match="resume="):  # also a ValueError: one line at the CLI
        OnlineTuner(cfg, progress=False).run()


def test_otc_samples_offline_rows_with_the_online_dynamics_on_navigation(tmp_path):
    """Section 4.5's mechanism inside the loop: offline rows drawn by OTC have the online sign of beta more often
    than uniformly drawn ones. Online actions must cover the offline ones for the state-action match to mean
    anything, so the deployment explores (section 4.6's sequential collection, wide noise)."""
    base = [
        "dataset_size=5000",
        "offline_updates=20",
        "deployments=1",
        "steps_per_deployment=500",
        "updates_per_deployment=60",
        "sequential_exploration=true",
        "exploration_noise=1.0",
        "checkpoint_every=1000",
    ]
    shares = {}
    for strategy in ("uniform", "otc"):
        cfg = config(tmp_path, *base, f"strategy={strategy}")
        run = load_run(OnlineTuner(cfg, progress=False).run()["run_dir"])
        shares[strategy] = run.series("agent0/offline_right_dynamics_share")[1]
    # Each share averages 60 batches of 128 rows (>= 2500 offline rows): binomial standard error <= 0.01,
    # doubled for the correlation of rows drawn from one candidate set; the margin is 5 of those.
    assert shares["otc"] > shares["uniform"] + 0.1, shares


def test_a_task_hook_alone_sets_up_the_deployments_and_labels_the_rows(tmp_path):
    """A new labelled task implements DeploymentHook only: the loop asks it and never names a task."""

    class EvenRowsAreRight:
        def __init__(self):
            self.deployments = []

        def env_kwargs(self, deployment, num_deployments):
            self.deployments.append(deployment)
            return {"beta": 0.2}

        def right_dynamics(self, rows, deployment, num_deployments):
            return rows.get("transition_id") % 2 == 0

    hook = EvenRowsAreRight()
    tuner = OnlineTuner(config(tmp_path, "deployments=1", "strategy=uniform"), progress=False)
    tuner.task = dataclasses.replace(tuner.task, deployments=hook)
    run = load_run(tuner.run()["run_dir"])
    assert sorted(set(hook.deployments)) == [
        0,
        1,
    ]  # the offline evaluation, the deployment and its evaluation
    share = run.series("agent0/offline_right_dynamics_share")
    assert sorted(share) == [0, 1] and all(0.3 < s < 0.7 for s in share.values())


def test_bad_task_and_missing_options_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="Valid tasks"):
        OnlineTuner(config(tmp_path, "task=mpe/navigation-9"), progress=False)
    assert not (tmp_path / "runs").exists()


def test_otc_tune_and_report_commands(tmp_path, capsys, caplog):
    from torchrl_otc.cli import main

    overrides = [
        *TINY,
        f"runs_root={tmp_path / 'runs'}",
        f"cache_dir={tmp_path / 'cache'}",
        "run_name=cli",
    ]
    assert main(["tune", "--no-progress", *overrides]) == 0
    out = capsys.readouterr().out
    assert "| random | nav/nonstationary |" in out and "report:" in out
    assert (tmp_path / "runs" / "cli" / "report.md").exists()
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "returns.png").exists()
    assert main(["tune", "algo=sac"]) == 2
    assert "valid values: bcq, awac, cql, td3bc" in caplog.text
    assert main(["tune", f"resume={tmp_path / 'nothing'}"]) == 2


@pytest.mark.parametrize("algo", ["bcq", "awac", "cql", "td3bc"])
@pytest.mark.parametrize("task", ["mpe/navigation-3", "mamujoco/hopper-3x1"])
def test_every_algorithm_on_mpe_and_mamujoco(tmp_path, algo, task):
    pytest.importorskip("vmas" if task.startswith("mpe") else "gymnasium_robotics")
    cfg = config(
        tmp_path,
        f"task={task}",
        f"algo={algo}",
        "dataset_size=600",
        "offline_updates=4",
        "updates_per_deployment=4",
        "steps_per_deployment=40",
        "eval_episodes=1",
        "deployments=2",
    )
    summary = OnlineTuner(cfg, progress=False).run()
    run = load_run(summary["run_dir"])
    assert sorted(run.returns) == [0, 1, 2]
    assert all(math.isfinite(float(r["value"])) for r in run.rows)
    for i in range(2):  # eq. 4, agent by agent
        alpha, d = run.series(f"agent{i}/alpha"), run.series(f"agent{i}/D")
        assert alpha[0] == alpha[1] == 1.0
        assert alpha[2] == pytest.approx(min(max(alpha[1] * d[2] / d[1], 0.1), 10.0), rel=1e-6)
    n_agents = 3
    alphas = {r["name"] for r in run.rows if r["name"].endswith("/alpha")}
    assert alphas == {f"agent{i}/alpha" for i in range(n_agents)}


def test_decentralised_buffers_and_parameters(tmp_path, monkeypatch):
    pytest.importorskip("vmas")
    cfg = config(
        tmp_path,
        "task=mpe/navigation-3",
        "dataset_size=600",
        "offline_updates=2",
        "updates_per_deployment=2",
        "steps_per_deployment=40",
        "eval_episodes=1",
        "deployments=1",
    )
    tuner = OnlineTuner(cfg, progress=False)
    joints = []
    original = tuner._add_online
    monkeypatch.setattr(
        tuner,
        "_add_online",
        lambda k, joint, agents=None: (joints.append(joint), original(k, joint, agents)),
    )
    tuner.run()
    from torchrl_otc.envs.registry import get_task

    partition = get_task("mpe/navigation-3").action_partition
    (joint,) = joints
    for agent in tuner.agents:
        online = agent.learner.online_buffer[:]
        # Only this agent's action columns: exactly its columns of the joint action, nothing of the others.
        assert online["action"].shape[-1] == len(partition[agent.index])
        torch.testing.assert_close(
            online["action"], joint["action"][:, list(partition[agent.index])]
        )
    pointers = [
        {p.untyped_storage().data_ptr() for p in agent.learner.parameters()}
        for agent in tuner.agents
    ]
    for i in range(len(pointers)):
        for j in range(i + 1, len(pointers)):
            assert not pointers[i] & pointers[j]


def test_diverging_agent_stops_the_run_and_names_it(tmp_path, monkeypatch):
    tuner = OnlineTuner(config(tmp_path), progress=False)
    original = tuner._build_agents

    def build_then_break():
        original()
        learner = tuner.agents[0].learner
        update = learner.update

        def nan_after_offline(**kwargs):
            metrics = update(**kwargs)
            if tuner._stage["stage"] == "update":
                metrics["loss_qvalue"] = float("nan")
            return metrics

        monkeypatch.setattr(learner, "update", nan_after_offline)

    monkeypatch.setattr(tuner, "_build_agents", build_then_break)
    from torchrl_otc.trainers.tuning import DivergenceError

    with pytest.raises(
        DivergenceError, match=r"Agent 0 diverged: loss_qvalue = nan at update 0.*checkpoint"
    ):
        tuner.run()
    run = load_run(tuner.folder.path)
    assert run.returns[0] is not None  # the offline evaluation written before the failure is kept
    assert (tuner.folder.path / "checkpoint" / "COMPLETE").exists()


def test_dataset_of_another_task_is_refused(tmp_path):
    from torchrl_otc.data.datasets.builders import build_dataset

    build_dataset("nav/nonstationary", "random", 300, seed=0, out=tmp_path / "nav", progress=False)
    cfg = config(tmp_path, "task=mpe/navigation-3", f"dataset_path={tmp_path / 'nav'}")
    with pytest.raises(ValueError, match="is for task 'nav/nonstationary', not 'mpe/navigation-3'"):
        OnlineTuner(cfg, progress=False).run()


def test_dataset_with_other_shapes_is_refused(tmp_path):
    from torchrl_otc.data.datasets.builders import build_dataset
    from torchrl_otc.envs import registry

    build_dataset("nav/nonstationary", "random", 300, seed=0, out=tmp_path / "nav", progress=False)
    cfg = config(tmp_path, f"dataset_path={tmp_path / 'nav'}")
    tuner = OnlineTuner(cfg, progress=False)
    tuner.task = dataclasses.replace(tuner.task, state_dim=tuner.task.state_dim + 1)
    with pytest.raises(
        ValueError,
        match=r"observation shape \(4,\) and action shape \(2,\) but task 'nav/nonstationary' has \(5,\)",
    ):
        tuner.run()
    assert registry  # the registry's task itself is untouched
    assert OnlineTuner(cfg, progress=False).task.state_dim == 4


def test_tensorboard_logger_mirrors_metrics_or_says_what_to_install(tmp_path):
    cfg = config(tmp_path, "logger=tensorboard", "deployments=1")
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install tensorboard"):
            OnlineTuner(cfg, progress=False).run()
        return
    summary = OnlineTuner(cfg, progress=False).run()
    assert list((tmp_path / "runs").rglob("events.out.tfevents*")), summary
