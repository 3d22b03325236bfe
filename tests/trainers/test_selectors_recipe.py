"""The selectors recipe (issue 15): decomposed OTC at the matched online share, one selector per variant."""

from __future__ import annotations

from pathlib import Path

from torchrl_otc.trainers.sweep import expand_recipe, load_recipe

RECIPE = Path(__file__).parents[2] / "examples" / "recipes" / "selectors.yaml"
SELECTORS = {  # label: (distance, next_state, reconstruct)
    "dec-feature": ("feature", "displacement", "action"),
    "dec-feature-next-state": ("feature", "next_state", "action"),
    "dec-embedding-action": ("embedding", "displacement", "action"),
    "dec-embedding-next-state": ("embedding", "displacement", "next_state"),
    "dec-value": ("value", "displacement", "action"),
    "dec-likelihood": ("likelihood", "displacement", "action"),
}


def test_the_smoke_preset_pairs_every_decomposed_selector_with_its_seeds_coupled_otc_run(tmp_path):
    recipe = load_recipe(RECIPE)
    configs = expand_recipe(recipe, "smoke", runs_root=tmp_path)
    tasks = ("nav/nonstationary", "coord/partner-modes")
    labels = ["uniform", "otc-feature", "mix-matched", *SELECTORS, "mix-0.5", "dec-likelihood-0.5"]
    assert {c.task.name for c in configs} == set(tasks)
    assert len(configs) == len(tasks) * len(labels)  # one seed per task at smoke size
    folder = tmp_path / "selectors-smoke"
    by_name = {c.run.run_name: c for c in configs}
    for config in configs:
        assert config.run.threads == 1 and config.data.kind == "random"
        label = config.run.run_name.split("-td3bc-")[1].rsplit("-seed", 1)[0]
        assert label in labels
        sampler = config.sampler
        if label in SELECTORS:
            assert sampler.name == "otc" and sampler.online_fraction == "matched"
            distance = sampler.distance
            assert (distance.name, distance.next_state, distance.reconstruct) == SELECTORS[label]
        if label in SELECTORS or label == "mix-matched":
            pair = by_name[Path(sampler.mix_pair).name]
            assert Path(sampler.mix_pair) == folder / pair.run.run_name
            assert pair.run.run_name.split("-td3bc-")[1].startswith("otc-feature-seed")
            assert (pair.task.name, pair.run.seed) == (config.task.name, config.run.seed)
            assert pair.sampler.online_fraction is None  # the coupled procedure
        elif (
            label == "dec-likelihood-0.5"
        ):  # the fixed share of the recommended preset, with its own mix
            assert (sampler.name, sampler.distance.name, sampler.online_fraction) == (
                "otc",
                "likelihood",
                0.5,
            )
            assert sampler.mix_pair is None
        elif label == "mix-0.5":
            assert (sampler.name, sampler.mix_fraction, sampler.mix_pair) == ("mix", 0.5, None)
        else:
            assert sampler.online_fraction is None
    # the cpu preset: both tasks, 16 paired seeds each, every variant
    cpu = expand_recipe(recipe, "cpu", runs_root=tmp_path)
    assert len(cpu) == len(tasks) * 16 * len(labels)
    assert {(c.task.name, c.run.seed) for c in cpu} == {(t, s) for t in tasks for s in range(16)}
