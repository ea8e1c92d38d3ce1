"""The bench compares like with like: tunelab's side trains every parameter, the new head included, at the
scenario's one rate, as the Trainer's side does (``learning_rate=s.lr``).

The bench used to leave ``optim.head_lr`` unset, so tunelab's head over a frozen pooler (LoRA, feature extraction)
trained at the strategies' default head rate while the Trainer's trained at the scenario's 5e-4 / 1e-3, and the two
accuracies were printed side by side as if comparable.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tunelab.recipe import parse_recipe
from tunelab.strategies.registry import make_strategy
from tunelab.train.optim import head_rate

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def bench() -> tuple:
    sys.path.insert(0, str(BENCH))
    try:
        import common
        import tunelab_side
    finally:
        sys.path.remove(str(BENCH))
    return common, tunelab_side


def test_every_bench_scenario_trains_the_head_at_the_scenario_rate(bench: tuple, tmp_path: Path) -> None:
    common, tunelab_side = bench
    scenarios = common.scenarios(train_rows=64, causal_steps=4)
    frozen_pooler = [s for s in scenarios.values() if s.strategy["method"] in ("lora", "feature_extraction")]
    assert len(frozen_pooler) >= 2, "the scenarios where the head rate matters must be among those checked"
    for s in scenarios.values():
        recipe = parse_recipe(tunelab_side.recipe_for(s, tmp_path))
        strategy = make_strategy(recipe.strategy, recipe.task.type)
        assert recipe.train.lr == s.lr, s.name
        head = head_rate(recipe, strategy.default_head_lr)
        assert head == s.lr, f"{s.name}: tunelab's head trains at {head}, the Trainer's at {s.lr}"
