"""Seeded, stratified samples for ``data.limit`` (training rows) and ``eval.max_examples`` (held-out rows).

Why not the first N rows: files and built-in datasets are often sorted (by label, by topic, by book), so the first
N of a label-sorted file is a one-class training set and the first N of a held-out split scores a different
population than the split. A sample is taken in a *stratified order* instead: every stratum (label, or the column
data.stratify_by names) is shuffled and spread evenly over the order, so any prefix of it holds each stratum in
proportion, to within one row. Rows the task refuses (say, over task.max_length with data.on_bad_rows: skip) are
replaced by the next ones in that order, so the sample has N usable rows whenever the split has them.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tunelab.data.sources import Row

StratumKey = Callable[[Row], str]


class Featurized(Protocol):
    """What a task's ``featurize`` returns (tasks.base.Prepared); the data layer does not import tasks."""

    features: list[dict[str, Any]]
    rejected: list[tuple[str, str]]
    truncated: int


def stratified_order(rows: list[Row], key: StratumKey | None, rng: random.Random) -> list[Row]:
    """All rows, reordered so that every prefix is a stratified random sample of them.

    Member i of a stratum of n rows (shuffled) sits at (i + u) / n, u drawn once per stratum; sorting all rows by
    that position interleaves the strata in proportion to their sizes.
    """
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        groups[key(row) if key else ""].append(row)
    placed: list[tuple[float, float, int, Row]] = []
    for name in sorted(groups):
        members = groups[name][:]
        rng.shuffle(members)
        offset = rng.random()
        placed += [((i + offset) / len(members), rng.random(), len(placed) + i, row) for i, row in enumerate(members)]
    placed.sort(key=lambda item: item[:3])
    return [row for *_, row in placed]


@dataclass
class Sampled:
    """What ``featurize_sample`` made of a split: the features, the rows the task refused, how many inputs it
    truncated or converted (by what), and how many rows were left out of the sample (never featurized)."""

    features: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    truncated: int = 0
    converted: Counter[str] = field(default_factory=Counter)
    left_out: int = 0

    def add(self, prepared: Featurized) -> None:
        self.features += prepared.features
        self.rejected += prepared.rejected
        self.truncated += prepared.truncated
        self.converted.update(getattr(prepared, "converted", {}))


def featurize_sample(rows: list[Row], cap: int | None, featurize: Callable[[list[Row]], Featurized],
                     key: StratumKey | None, seed: str) -> Sampled:
    """Features of at most ``cap`` rows: all rows in their order when they fit, else a stratified sample, with the
    counts the caller needs to account for every row."""
    sampled = Sampled()
    if cap is None or len(rows) <= cap:
        sampled.add(featurize(rows))
        return sampled
    order = stratified_order(rows, key, random.Random(seed))
    used = 0
    while len(sampled.features) < cap and used < len(order):
        chunk = order[used : used + cap - len(sampled.features)]
        used += len(chunk)
        sampled.add(featurize(chunk))
    sampled.left_out = len(order) - used
    return sampled
