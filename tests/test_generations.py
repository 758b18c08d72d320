"""Generation analyses: repetition, length bins and first words, on samples written as a run writes them."""

from __future__ import annotations

import json

import pytest

from unlock.analysis.generations import (
    analyse,
    length_bin,
    longest_repeat_share,
    read_samples,
    write,
)


@pytest.mark.parametrize(
    ("text", "share"),
    [
        ("", 0.0),
        ("one", 0.0),
        ("a b c d", 0.0),
        ("10 Answer: 10 Answer: 10 Answer: 10", 5 / 7),  # "10 Answer: 10 Answer: 10" twice (overlapping)
        ("Bloomfield " * 10, 9 / 10),
        ("x y z x y w", 2 / 6),
    ],
)
def test_longest_repeat_share(text, share):
    assert longest_repeat_share(text) == pytest.approx(share)


def test_length_bins():
    assert [length_bin(n) for n in (0, 24, 25, 99, 100, 799, 800, 5000)] == [
        "0-25",
        "0-25",
        "25-50",
        "50-100",
        "100-200",
        "400-800",
        "800+",
        "800+",
    ]


def _samples(run_dir, condition, rows):
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    (run_dir / "samples" / f"{condition}__unlock_arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_per_condition_analysis_and_files(tmp_path):
    _samples(
        tmp_path / "0",
        "unlock",
        [
            {"response": "Step 1: 2 + 2 = 4. The final answer is 4.", "acc": 1.0},
            {"response": "Step 1: " + "go " * 60, "acc": 0.0},
        ],
    )
    _samples(tmp_path / "1", "unlock", [{"response": "First, 3.", "acc": 1.0}])
    _samples(tmp_path / "0", "unsteered", [{"response": "4", "acc": 1.0}, {"response": "", "acc": 0.0}])
    by_condition = read_samples(tmp_path)
    assert {k: len(v) for k, v in by_condition.items()} == {"unlock": 3, "unsteered": 2}
    result = write(tmp_path)
    unlock = result["unlock"]
    assert unlock["acc_by_length"] == {"0-25": {"n": 2, "acc": 1.0}, "50-100": {"n": 1, "acc": 0.0}}
    assert unlock["first_words"] == {"Step": pytest.approx(2 / 3), "First,": pytest.approx(1 / 3)}
    assert result["unsteered"]["first_words"] == {"4": 0.5, "<empty>": 0.5}
    assert result == analyse(by_condition)
    for name in ("generations.json", "generations.md", "acc_by_length.png", "first_words.png"):
        assert (tmp_path / name).is_file()
    assert write(tmp_path / "empty") == {}


@pytest.mark.parametrize(
    "first",
    [
        "7777777777777777",
        "9" * 400,
        "2024-01-01",
        "'quoted'",
        '"double"',
        "\x00\x07\x1b[31m",
        "",
        "$x^{$",
        "a|b",
        "\ud800",
    ],
)
def test_any_first_word_a_model_writes_is_analysed_tabled_and_plotted(tmp_path, first):
    """Numbers of any length (a category axis overflowed on 7777777777777777), dates, quotes, control
    characters, an empty response, mathtext and markdown syntax, a lone surrogate."""
    from unlock.analysis.generations import plot, shown_word, table

    rows = [{"response": f"{first} and more", "acc": 1}, {"response": "", "acc": 0}]
    result = analyse({"unlock": rows, "unsteered": rows[:1]})
    assert table(result).encode() and len(shown_word(first)) <= 24
    assert [p.name for p in plot(result, tmp_path)] == ["acc_by_length.png", "first_words.png"]
