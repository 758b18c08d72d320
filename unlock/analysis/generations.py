"""The paper's generation analyses over a run's or a sweep's samples: accuracy by generation length,
repetition, and the first word of each generation, per condition.

    python -m unlock.analysis.generations logs/runs/<time>       # a run (launch.py does this after every run)
    python -m unlock.analysis.generations logs/multiruns/<time>  # every job of a sweep, pooled per condition

Writes generations.json, generations.md and two plots into the directory.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from unlock.analysis.plots import pyplot, save_figure
from unlock.store.artifacts import atomic_write_bytes, atomic_write_json

LENGTH_BINS = (0, 25, 50, 100, 200, 400, 800)  # words; the last bin is open


def longest_repeat_share(text: str) -> float:
    """Length of the longest word sequence that occurs at least twice (overlaps allowed), as a share of
    the generation's words: 0 for no repeated word, near 1 for a loop ("10\\nAnswer:\\n10\\nAnswer:...")."""
    words = text.split()
    if len(words) < 2:
        return 0.0
    order = sorted(range(len(words)), key=lambda i: words[i:])
    longest = 0
    for a, b in zip(order, order[1:], strict=False):
        n = 0
        while a + n < len(words) and b + n < len(words) and words[a + n] == words[b + n]:
            n += 1
        longest = max(longest, n)
    return longest / len(words)


def length_bin(words: int) -> str:
    edges = list(LENGTH_BINS)
    for low, high in zip(edges, edges[1:], strict=False):
        if words < high:
            return f"{low}-{high}"
    return f"{edges[-1]}+"


def read_samples(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """Rows of every samples/<condition>__<task>.jsonl under ``directory``, by condition."""
    by_condition: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(Path(directory).rglob("samples/*__*.jsonl")):
        condition = path.stem.split("__")[0]
        by_condition[condition].extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return dict(by_condition)


def analyse(by_condition: dict[str, list[dict[str, Any]]], top_words: int = 5) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for condition, rows in by_condition.items():
        bins: dict[str, list[float]] = defaultdict(list)
        for row in rows:
            bins[length_bin(len(str(row.get("response", "")).split()))].append(float(row.get("acc", 0.0)))
        first = Counter((str(row.get("response", "")).split() or ["<empty>"])[0] for row in rows)
        out[condition] = {
            "n": len(rows),
            "acc_by_length": {
                b: {"n": len(v), "acc": sum(v) / len(v)}
                for b, v in sorted(bins.items(), key=lambda kv: int(kv[0].split("-")[0].rstrip("+")))
            },
            "repetition": sum(longest_repeat_share(str(row.get("response", ""))) for row in rows) / max(len(rows), 1),
            "first_words": {w: c / len(rows) for w, c in first.most_common(top_words)},
        }
    return out


def shown_word(word: str, width: int = 24) -> str:
    """A generation's first word as a label any renderer takes, whatever the model wrote: its repr (quotes,
    escapes for control characters and lone surrogates), cut to ``width`` characters, with matplotlib's
    mathtext ``$`` and markdown's ``|`` escaped."""
    text = repr(word)
    if len(text) > width:
        text = text[: width - 3] + "..."
    return text.replace("$", r"\$").replace("|", r"\|")


def table(result: dict[str, Any]) -> str:
    lines = [
        "| condition | n | repetition | first words | accuracy by length (words: acc, n) |",
        "|---|---|---|---|---|",
    ]
    for condition, r in result.items():
        words = ", ".join(f"{shown_word(w)} {share:.0%}" for w, share in r["first_words"].items())
        bins = "; ".join(f"{b}: {v['acc']:.2f} ({v['n']})" for b, v in r["acc_by_length"].items())
        lines.append(f"| {condition} | {r['n']} | {r['repetition']:.2f} | {words} | {bins} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [length_bin(edge) for edge in LENGTH_BINS]  # every bin in order, as positions
    for condition, r in result.items():
        xs = [labels.index(b) for b in r["acc_by_length"]]
        ax.plot(xs, [v["acc"] for v in r["acc_by_length"].values()], marker="o", label=condition)
    ax.set_xticks(range(len(labels)), labels)
    ax.set(xlabel="generation length (words)", ylabel="accuracy", title="accuracy by generation length")
    ax.legend(fontsize=8)
    paths = [save_figure(fig, out_dir / "acc_by_length.png")]
    fig, axes = plt.subplots(1, len(result), figsize=(2.6 * len(result) + 1, 3.2), squeeze=False)
    for ax, (condition, r) in zip(axes[0], result.items(), strict=False):
        # Numeric positions with text tick labels: a category axis parses labels that look like numbers
        # or dates, and overflows on "7777777777777777".
        positions = list(range(len(r["first_words"])))
        ax.barh(positions, list(r["first_words"].values())[::-1])
        ax.set_yticks(positions, [shown_word(w) for w in r["first_words"]][::-1])
        ax.set(title=condition, xlabel="share")
    paths.append(save_figure(fig, out_dir / "first_words.png"))
    return paths


def write(directory: str | Path) -> dict[str, Any]:
    """Analyse the samples under ``directory`` and write the results there ({} when there are none)."""
    directory = Path(directory)
    result = analyse(read_samples(directory))
    if result:
        atomic_write_json(directory / "generations.json", result)
        atomic_write_bytes(directory / "generations.md", table(result).encode())
        plot(result, directory)
    return result


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m unlock.analysis.generations RUN_OR_SWEEP_DIR")
    print(table(write(sys.argv[1])) or "no samples found")
