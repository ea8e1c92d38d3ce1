"""From the recipe's data section to featurized train/validation/test examples.

Splits are deterministic for a seed and stratified by label when the task has labels, so every strategy compared
on a task sees exactly the same examples. Bad rows stop the run (default) or are skipped and counted; rows that
data.limit or eval.max_examples leave out of their seeded sample are counted too. The counts go into the run
summary: every row read is used or counted.
"""

from __future__ import annotations

import random
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunelab.data.builtin import load_builtin
from tunelab.data.images import read_image_folder
from tunelab.data.labels import label_name
from tunelab.data.sample import Featurized, StratumKey, featurize_sample
from tunelab.data.sources import Row, from_records, read_file
from tunelab.errors import DataError
from tunelab.recipe import DataConfig, SplitConfig

SPLITS = ("train", "validation", "test")


class RowTask(Protocol):
    """What the data layer needs of a task (tasks/ sits above data/, so it is not imported)."""

    def check_row(self, row: Row) -> str | None: ...

    def featurize(self, rows: list[Row]) -> Featurized: ...


@dataclass
class DataReport:
    """What happened to the rows: read, skipped (by reason, including rows left out of a data.limit or
    eval.max_examples sample), truncated, per split. Goes into summary.json."""

    source: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    converted: Counter[str] = field(default_factory=Counter)  # rows kept after a conversion (e.g. CMYK to RGB)
    sampled_from: dict[str, int] = field(default_factory=dict)  # split -> its rows before a sample was taken
    synthetic: dict[str, Any] = field(default_factory=dict)  # data.augment: rows added to train, and from which run

    def add_left_out(self, split: str, setting: str, kept: int, total: int, left_out: int, how: str) -> None:
        """Count the rows a sample left out, with the kept size beside the split's full size in the reason."""
        if not left_out:
            return
        self.sampled_from[split] = total
        verb = "used" if split == "train" else "evaluated"
        self.skipped[f"{split}: left out by {setting} ({how}; {kept} of the split's {total} rows {verb})"] = left_out

    def add_skips(self, rejected: list[tuple[str, str]], cfg: DataConfig) -> None:
        """Raise on the first bad rows (default) or count them by reason."""
        if not rejected:
            return
        if cfg.on_bad_rows == "error":
            shown = "\n".join(f"  - {where}: {problem}" for where, problem in rejected[:5])
            more = f"\n  ... and {len(rejected) - 5} more" if len(rejected) > 5 else ""
            raise DataError(
                f"{len(rejected)} bad row(s):\n{shown}{more}\n"
                "Fix the data, or set data.on_bad_rows: skip to drop such rows (they are counted in the run summary)."
            )
        for _, problem in rejected:
            reason = re.sub(r"'[^']*'|\d+", "…", problem)
            self.skipped[reason] = self.skipped.get(reason, 0) + 1


ExtraTrain = Callable[[Any], tuple[list[Row], dict[str, Any]]]  # task -> rows for train only, and their report


def prepare_rows(cfg: DataConfig, task: RowTask, seed: int, max_examples: int | None,
                 extra_train: ExtraTrain | None = None) -> tuple[dict[str, list[dict[str, Any]]], DataReport]:
    """Read, validate, split, sample (data.limit, eval.max_examples) and featurize: the examples per split and
    the report that accounts for every row read. ``extra_train`` (data.augment, tunelab.augment) adds rows to the
    finished training split only, after data.limit; the report says how many and from where."""
    given, source_report = read_rows(cfg)
    report = DataReport(source=source_report)
    if hasattr(task, "fit_labels"):
        task.fit_labels(given["train"])
    valid = {name: validate(rows, task.check_row, cfg, report) for name, rows in given.items()}
    key, how = stratum_key(cfg, task, valid["train"])
    missing = [name for name in ("validation", "test") if name not in valid]
    if missing:
        valid |= split_rows(valid["train"], cfg, seed, key, missing, report.skipped)
    splits: dict[str, list[dict[str, Any]]] = {}
    for name, rows in valid.items():
        cap, setting = (cfg.limit, "data.limit") if name == "train" else (max_examples, "eval.max_examples")
        sampled = featurize_sample(rows, cap, task.featurize, key, f"{seed}:{name}")
        report.add_skips(sampled.rejected, cfg)
        report.truncated += sampled.truncated
        report.converted.update(sampled.converted)
        report.add_left_out(name, f"{setting}={cap}", len(sampled.features), len(rows), sampled.left_out, how)
        splits[name] = sampled.features
        report.rows[name] = len(sampled.features)
    if extra_train is not None:
        add_train_rows(splits, report, task, extra_train)
    require_rows(splits, report)
    if hasattr(task, "fit_splits"):  # a task that fits on the training split only (a VAE's scaler) sees the splits
        task.fit_splits(splits)
    return splits, report


def add_train_rows(splits: dict[str, list[dict[str, Any]]], report: DataReport, task: RowTask,
                   extra_train: ExtraTrain) -> None:
    """Featurize the extra rows and append them to the training split; every one must be usable (they are made,
    not read, so a refused one is a bug to report, not a row to skip)."""
    rows, about = extra_train(task)
    made = task.featurize(rows)
    if made.rejected:
        where, problem = made.rejected[0]
        raise DataError(f"data.augment: {len(made.rejected)} of {len(rows)} synthetic rows were refused ({where}: "
                        f"{problem})")
    report.synthetic = about | {"real_train_rows": len(splits["train"])}
    splits["train"] = splits["train"] + made.features
    report.rows["train"] = len(splits["train"])


def stratum_key(cfg: DataConfig, task: RowTask, train: list[Row]) -> tuple[StratumKey | None, str]:
    """What splits and samples are stratified by (data.stratify_by, else the task's label), and how to say it."""
    column = cfg.stratify_by
    if column is None:
        key = getattr(task, "stratify_key", None)
        return key, "a seeded sample stratified by label" if key else "a seeded random sample"
    if train and not any(column in row.values for row in train):
        raise DataError(f"data.stratify_by: no training row has a column '{column}' (columns found: "
                        f"{', '.join(map(str, train[0].values))}); name one of them or remove data.stratify_by")
    return (lambda row: str(row.values.get(column, "(missing)"))), f"a seeded sample stratified by '{column}'"


def read_rows(cfg: DataConfig) -> tuple[dict[str, list[Row]], dict[str, int]]:
    """Rows per given split (only 'train' unless the recipe or the built-in dataset names others)."""
    if cfg.dataset:
        loaded, report = load_builtin(cfg.dataset)
        if isinstance(loaded, dict):
            _refuse_split(cfg, {name: len(rows) for name, rows in loaded.items()})
            return {name: from_records(rows, f"{cfg.dataset}[{name}]") for name, rows in loaded.items()}, report
        return {"train": from_records(loaded, cfg.dataset)}, report
    found, folders = {}, {}
    for name in SPLITS:
        if getattr(cfg, name) and Path(getattr(cfg, name)).is_dir():  # an image folder: one subfolder per class
            found[name], folders[name] = read_image_folder(Path(getattr(cfg, name)))
        elif getattr(cfg, name):
            found[name] = read_file(getattr(cfg, name))
    for name, rows in found.items():
        if not rows:
            raise DataError(f"{getattr(cfg, name)}: the {name} file has no rows")
    _refuse_unused_shares(cfg, list(found))
    source = _multiline_report({n: r for n, r in found.items() if n not in folders}, cfg)
    for name, counts in folders.items():
        source |= {f"{name}_{key}": value for key, value in counts.items()}
    return found, source


def _refuse_split(cfg: DataConfig, sizes: dict[str, int]) -> None:
    """A built-in dataset that comes split was split on purpose (whole books, whole questions held out): carving
    it again by data.split would undo that, and ignoring the setting would be silent. So it is refused."""
    if cfg.split != SplitConfig():
        shown = ", ".join(f"{name} {n}" for name, n in sizes.items())
        raise DataError(f"data.split: the built-in dataset '{cfg.dataset}' comes already split ({shown} rows; see "
                        "tunelab.data.builtin for how), so data.split cannot apply; remove it. To use fewer rows, set "
                        "data.limit (training) or eval.max_examples (validation, test): both take seeded samples.")


def _refuse_unused_shares(cfg: DataConfig, given: list[str]) -> None:
    """A share of a split the recipe gives as a file would be silently ignored."""
    defaults = SplitConfig()
    for name in ("validation", "test"):
        if name in given and getattr(cfg.split, name) != getattr(defaults, name):
            raise DataError(f"data.split.{name}={getattr(cfg.split, name)} cannot apply: the {name} rows come from "
                            f"data.{name} ({getattr(cfg, name)}); remove data.split.{name} or data.{name}")
    if "validation" in given and "test" in given and cfg.split.stratify != defaults.stratify:
        raise DataError("data.split.stratify cannot apply: data.validation and data.test give those splits as files, "
                        "so nothing is carved out of train; remove data.split.stratify")


def _multiline_report(found: dict[str, list[Row]], cfg: DataConfig) -> dict[str, int]:
    """Count the CSV rows whose quoted field spans lines, and name the lines of those that will be used: legal
    CSV, but a stray quote makes the same shape, so the user hears of it."""
    report = {}
    for name, rows in found.items():
        spanning = [row for row in rows if row.last_line]
        if not spanning:
            continue
        report[f"{name}_rows_spanning_lines"] = len(spanning)
        kept = [row for row in spanning if row.doubt is None or cfg.multiline_fields == "keep"]
        if kept:
            lines = ", ".join(f"{row.line}-{row.last_line}" for row in kept[:5]) + (", ..." if len(kept) > 5 else "")
            warnings.warn(f"{kept[0].source}: {len(kept)} row(s) have a quoted field that spans several lines "
                          f"(lines {lines}); each is read as one row", stacklevel=3)
    return report


def validate(rows: list[Row], check: Callable[[Row], str | None], cfg: DataConfig, report: DataReport) -> list[Row]:
    """Keep the rows the task accepts; the rest are an error or a counted skip. A row the reader doubted (a quoted
    field over several lines that holds the delimiter) is refused unless data.multiline_fields is 'keep'."""
    good, rejected = [], []
    for row in rows:
        problem = row.doubt if row.doubt and cfg.multiline_fields == "check" else check(row)
        if problem is None:
            good.append(row)
        else:
            rejected.append((row.where(), problem))
    report.add_skips(rejected, cfg)
    if rows and not good:
        raise DataError(f"{rows[0].source}: all {len(rows)} rows were skipped ({_reasons(rejected)}); "
                        f"nothing is left to use. Fix the data or data.columns (columns found: {', '.join(map(str, rows[0].values))}).")
    return good


def require_rows(splits: dict[str, list], report: DataReport) -> None:
    """No split may end up empty after featurizing (e.g. every validation text over task.max_length)."""
    for name, features in splits.items():
        if not features:
            skipped = f"; rows skipped so far: {report.skipped}" if report.skipped else ""
            raise DataError(f"the {name} split has no usable rows{skipped}. Fix the data, the task limits or data.split.")


def _reasons(rejected: list[tuple[str, str]]) -> str:
    counts = Counter(problem for _, problem in rejected)
    return "; ".join(f"{n} x {problem}" for problem, n in counts.most_common(3))


def split_rows(rows: list[Row], cfg: DataConfig, seed: int, stratify_key: StratumKey | None, missing: list[str],
               skipped: dict[str, int] | None = None) -> dict[str, list[Row]]:
    """Carve the missing validation/test splits out of train, deterministically and stratified by label (or
    data.stratify_by). An empty split is an error that names the rows skipped so far, the likely cause."""
    shares = {name: getattr(cfg.split, name) for name in missing}
    if shares.get("validation") == 0:
        raise DataError("data.split.validation is 0 and there is no data.validation file; training needs validation "
                        "rows to choose the best checkpoint. Give a share (e.g. 0.1) or a file.")
    if sum(shares.values()) >= 1.0:
        raise DataError(f"data.split: validation + test shares add up to {sum(shares.values())}; they must leave rows to train on")
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        groups[stratify_key(row) if stratify_key and cfg.split.stratify else ""].append(row)
    out: dict[str, list[Row]] = {name: [] for name in ("train", *missing)}
    rng = random.Random(seed)
    for key in sorted(groups):
        members = groups[key][:]
        rng.shuffle(members)
        start = 0
        for name in missing:
            take = round(len(members) * shares[name])
            out[name] += members[start : start + take]
            start += take
        out["train"] += members[start:]
    for name, part in out.items():
        rng.shuffle(part)
        if not part and (name == "train" or shares.get(name, 0) > 0):
            dropped = f"; rows skipped: {skipped}" if skipped else ""
            raise DataError(f"the {name} split is empty ({len(rows)} usable rows, split shares {shares}{dropped}); "
                            "give more data or change data.split")
    return {name: part for name, part in out.items() if part}  # a share of 0 asks for no split at all


def label_names(rows: list[Row], column: str, given: list[str] | None) -> list[str]:
    """Label names in id order: as the recipe lists them, else sorted names seen in training."""
    seen = Counter(label_name(row.values.get(column)) for row in rows)
    seen.pop(None, None)
    if given:
        if len(set(given)) != len(given):
            raise DataError(f"data.labels has repeated names: {given}")
        return list(given)
    if len(seen) < 2:
        raise DataError(
            f"the training data has {len(seen)} distinct label(s) in column '{column}' ({list(seen)}); "
            "classification needs at least 2"
        )
    return sorted(seen)
