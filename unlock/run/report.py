"""Paper vs this harness: a markdown table for every paper setup that has results on disk.

    make report                         # scans the log dir, writes <log_dir>/paper_report.md
    python -m unlock.run.report DIR [DIR..] --out report.md

The paper's numbers live in unlock/analysis/paper_numbers.yaml. A run counts when it finished, was evaluated
on the test split and names a setup (``paper.setup``, set by the conf/experiment/paper/ presets);
for each (setup, benchmark) the newest such run is reported, flagged when it does not name the sweep
point it ran (``selected_from``) or when the setup has several test runs (choosing among test runs is
selection on test items). The difference's 95% interval is the
Wilson interval of this run's accuracy minus the paper's value (the paper's own sampling error is
not published; its figure-reading error, read_precision, is listed beside it).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from unlock.analysis.paired import verdict_line, words
from unlock.analysis.paper import load_paper_numbers, paper_numbers
from unlock.run.conditions import BASELINE, label
from unlock.run.config import project_root
from unlock.store.artifacts import atomic_write_bytes

Found = dict[tuple[str, str, str], list[tuple[Path, dict[str, Any]]]]


def find_results(dirs: list[Path]) -> Found:
    """Every finished test-split record per (paper setup, benchmark, variant) under ``dirs``, oldest first."""
    found: Found = {}
    paths = sorted((p for d in dirs for p in Path(d).rglob("results.json")), key=lambda p: p.stat().st_mtime)
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a file being written by a running job; the next report picks it up
        config = record.get("config") or {}
        setup = (config.get("paper") or {}).get("setup")
        if record.get("status") != "ok" or not setup or config.get("eval", {}).get("split") != "test":
            continue
        # One row per setup, benchmark, item set and capability: a qwen25_math or in-context run never
        # replaces a hub or plain-CoT one.
        benchmark = config["benchmark"]
        variant = f"{benchmark.get('source', 'hub')}, {config.get('capability', {}).get('name', 'cot')}"
        found.setdefault((setup, benchmark["name"], variant), []).append((path, record))
    return found


def selection_flags(runs: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """What a setup's test runs lack to be trusted as a reproduction: the newest names no sweep point it
    ran (``selected_from``), or the setup has several test runs (picking among them uses test items)."""
    flags = []
    newest = runs[-1][1]
    if not newest.get("selected_from"):
        flags.append(
            "the reported run names no validation sweep point (selected_from): its settings were not "
            "shown to be chosen on validation items"
        )
    if len(runs) > 1:
        sources = sorted({str(r.get("selected_from")) for _, r in runs})
        flags.append(
            f"{len(runs)} test runs of this setup (selected_from: {', '.join(sources)}); the newest is "
            "reported: choosing among test runs is selection on the test items"
        )
    return flags


def comparison_rows(setup: str, benchmark: str, record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per condition the paper reports: paper %, ours %, difference and its 95% interval."""
    task = record["config"]["capability"]["locked_task"]
    rows = []
    for condition, paper_value in paper_numbers(setup, benchmark).items():
        metrics = record["conditions"].get(condition, {}).get(task)
        row: dict[str, Any] = {"setup": setup, "benchmark": benchmark, "condition": condition, "paper": paper_value}
        if not metrics or "acc" not in metrics:
            rows.append({**row, "ours": None})
            continue
        ours = 100 * metrics["acc"]
        low, high = (100 * v for v in metrics["acc_ci95"])
        rows.append(
            {
                **row,
                "ours": ours,
                "n": metrics["n"],
                "ci": (low, high),
                "diff": ours - paper_value,
                "diff_ci": (low - paper_value, high - paper_value),
                **gain_columns(setup, benchmark, condition, record.get("paired", {}).get(condition, {}).get(task, {})),
            }
        )
    return rows


def gain_columns(setup: str, benchmark: str, condition: str, versus: dict[str, Any]) -> dict[str, Any]:
    """The paper's gain over the unsteered Target beside ours, with our paired interval and power."""
    numbers = paper_numbers(setup, benchmark)
    paired = versus.get(BASELINE) or {}
    out: dict[str, Any] = {}
    if condition != BASELINE and BASELINE in numbers:
        out["paper_gain"] = numbers[condition] - numbers[BASELINE]
    if paired.get("n"):
        out.update(
            gain=100 * paired["diff"],
            gain_ci=tuple(100 * v for v in paired["diff_ci95"]),
            gain_words=words(paired) if "p_adjusted" in paired else f"McNemar p = {paired['p_mcnemar']:.2g}",
            items_needed=paired["items_needed"],
            underpowered=paired["underpowered"],
        )
    return out


def _gain_cells(row: dict[str, Any]) -> str:
    paper = f"{row['paper_gain']:+.1f}" if "paper_gain" in row else ""
    if "gain" not in row:
        return f"{paper} | | "
    low, high = row["gain_ci"]
    power = f"underpowered (needs {row['items_needed']})" if row["underpowered"] else "ok"
    return f"{paper} | {row['gain']:+.1f} [{low:+.1f}, {high:+.1f}], {row['gain_words']} | {power}"


def render(found: Found) -> str:
    lines = [
        "# Paper vs this harness",
        "",
        "Accuracy in %. diff = ours - paper; its 95% interval is ours' Wilson interval shifted by the "
        "paper's value. `ok` where that interval contains 0. Gain = the condition minus the unsteered Target, "
        "the paper's beside ours on the same items (paired: Newcombe's 95% interval, and what the run's "
        "decision rule says: UNLOCK by its verdict, the others Holm-adjusted); power: whether our items "
        "detect the paper's gain with 80% power with the test that decides (items needed if not).",
        "",
    ]
    setups = load_paper_numbers()
    if not found:
        lines.append("No finished test-split runs of a paper preset yet (run `python launch.py experiment=paper/...`).")
    for (setup, benchmark, variant), runs in sorted(found.items()):
        path, record = runs[-1]
        lines += [
            f"## {setup} / {benchmark} ({variant})",
            "",
            f"{setups[setup]['description']}; paper values read to +-{setups[setup]['read_precision']}. "
            f"Run: `{path}`; answers checked by {record.get('checker', 'an older checker (unnamed)')}.",
            "",
            *(f"**Flag:** {flag}.\n" for flag in selection_flags(runs)),
            *([verdict_line(record["verdict"]), ""] if "verdict" in record else []),
            "| condition | paper | ours (n) | 95% CI | diff | diff 95% CI | | paper gain "
            "| our gain [paired 95% CI] | power |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in comparison_rows(setup, benchmark, record):
            name = label(row["condition"])
            if row["ours"] is None:
                lines.append(f"| {name} | {row['paper']:.1f} | not run | | | | | | | |")
                continue
            low, high = row["diff_ci"]
            verdict = "ok" if low <= 0 <= high else ("above" if low > 0 else "below")
            lines.append(
                f"| {name} | {row['paper']:.1f} | {row['ours']:.1f} ({row['n']}) | "
                f"[{row['ci'][0]:.1f}, {row['ci'][1]:.1f}] | {row['diff']:+.1f} | [{low:+.1f}, {high:+.1f}] | "
                f"{verdict} | "
                f"{_gain_cells(row)} |"
            )
        lines.append("")
    missing = sorted({(s, b) for s in setups for b in setups[s]["results"]} - {key[:2] for key in found})
    if missing:
        lines += ["Setups without results yet: " + ", ".join(f"{s}/{b}" for s, b in missing), ""]
    return "\n".join(lines)


def default_log_dir() -> Path:
    return Path(os.environ.get("UNLOCK_LOGS", Path(project_root()) / "logs"))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="*", type=Path, help="directories to scan (default: the log dir)")
    parser.add_argument("--out", type=Path, help="markdown file to write (default: <first dir>/paper_report.md)")
    args = parser.parse_args(argv)
    dirs = args.dirs or [default_log_dir()]
    missing = [d for d in dirs if not d.is_dir()]
    if missing:
        raise SystemExit(f"report: no such directory {', '.join(map(str, missing))}")
    text = render(find_results(dirs))
    out = args.out or dirs[0] / "paper_report.md"
    atomic_write_bytes(out, text.encode())
    print(text)
    print(f"written to {out}")
    return out


if __name__ == "__main__":
    main()
