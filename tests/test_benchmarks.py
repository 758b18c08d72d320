"""Every hub benchmark loads through lm-eval from rows in its real schema, quirks included (dataset hub
mocked), and every reference answer, written as the prompt asks a model to write it, scores as correct
after the benchmark's own extraction and checker."""

from __future__ import annotations

import json

import pytest

from tests.helpers import ROOT
from unlock.lm_eval.prompts import load_task
from unlock.tasks import hub
from unlock.tasks.utils import process_generation

TASKS_DIR = str(ROOT / "unlock" / "tasks")
# Reference answers in the forms the real files hold (HUB_DATA.md): LaTeX, e-notation, lists, floats.
ANSWERS = [
    "4.5e33",
    "2^{1009}",
    "\\frac{\\pi}{3}",
    "-1-\\sqrt{3}",
    "(1, 2)",
    "\\{1, 3\\}",
    "x^2+2x+1",
    "12",
    "1-i",
    "[0, 1)",
    "6.0e-3",
    "\\dfrac{2}{3}",
]


def _rows(schema: str, n: int, split: str) -> list[dict]:
    """n rows of a benchmark's hub schema, answers cycling through ANSWERS, with the quirks of the
    real files: two empty answers (gaokao2023en), a brace-less \\boxed (MATH train), list answers."""
    rows = []
    for i in range(n):
        answer = ANSWERS[i % len(ANSWERS)]
        question = f"{split} problem {i}: what is it?"
        if schema == "gsm8k":
            rows.append({"question": question, "answer": f"work\n#### {1000 + i:,}"})
        elif schema == "math":
            solution = f"so $\\boxed {i}$." if split == "train" and i < 2 else f"so $\\boxed{{{answer}}}$."
            rows.append({"problem": question, "solution": solution, "level": "Level 1", "type": "Algebra"})
        elif schema == "svamp":
            rows.append({"Body": f"Ann has {i}.", "Question": question, "Answer": float(i), "question_concat": None})
        elif schema == "agieval":
            rows.append({"query": f"Q: {question} A: The answer is", "answer": answer})
        elif schema == "olympiadbench":
            rows.append({"question": question, "final_answer": [f"${answer}$"], "context": None})
        elif schema == "gaokao":
            rows.append({"question": question, "answer": "" if i in (3, 7) else answer})
        else:  # minerva, deepmind, amc23
            rows.append({"question": question, "answer": answer if schema != "amc23" else float(i)})
    return rows


BENCHMARKS = {  # task -> (schema, rows per hub split)
    "unlock_gsm8k": ("gsm8k", {"train": 400, "test": 50}),
    "unlock_math": ("math", {"train": 60, "test": 10}),
    "unlock_svamp": ("svamp", {"train": 150, "test": 40}),
    "unlock_agieval_math": ("agieval", {"test": 340}),
    "unlock_minerva_math": ("minerva", {"test": 120}),
    "unlock_olympiadbench": ("olympiadbench", {"train": 220}),
    "unlock_deepmind_math": ("deepmind", {"train": 760}),
    "unlock_gaokao2023en": ("gaokao", {"train": 120}),
    "unlock_amc23": ("amc23", {"test": 40}),
}


@pytest.fixture
def mocked_hub(monkeypatch):
    import datasets

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        schema, sizes = next(v for k, v in BENCHMARKS.items() if _path(k) == path)
        return datasets.Dataset.from_list(_rows(schema, sizes[split], split))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub.DROPPED.clear()


def _path(task: str) -> str:
    import yaml

    text = (ROOT / "unlock" / "tasks" / "hub" / f"{task}.yaml").read_text()
    return yaml.safe_load("\n".join(line for line in text.splitlines() if "!function" not in line))["dataset_kwargs"][
        "path"
    ]


@pytest.mark.parametrize("task", sorted(BENCHMARKS))
def test_benchmark_loads_and_its_references_score_as_correct(task, mocked_hub):
    loaded = load_task(task, TASKS_DIR)
    docs = list(loaded.test_docs()) + list(loaded.validation_docs()) + list(loaded.training_docs())
    assert docs and all(doc["answer"] for doc in docs), "no row without an answer gets through"
    for doc in docs:
        output = f"Step 1: think.\nThe final answer is {doc['answer']}."
        metrics = process_generation(doc, [output])
        assert metrics["acc"] == 1.0 and metrics["unparsable"] == 0.0, doc["answer"]


def test_rows_without_an_answer_are_dropped_and_counted(mocked_hub):
    load_task("unlock_gaokao2023en", TASKS_DIR)
    assert hub.DROPPED["MARIO-Math-Reasoning/Gaokao2023-Math-En"] == {"train": 2}
    load_task("unlock_minerva_math", TASKS_DIR)
    assert hub.DROPPED["math-ai/minervamath"] == {"test": 0}


def test_brace_less_boxed_math_solutions_load(mocked_hub):
    train = list(load_task("unlock_math", TASKS_DIR).training_docs()) + list(
        load_task("unlock_math", TASKS_DIR).validation_docs()
    )
    answers = {doc["question"]: doc["answer"] for doc in train}
    assert answers["train problem 0: what is it?"] == "0" and answers["train problem 1: what is it?"] == "1"
    assert not any(hub.DROPPED.get("EleutherAI/hendrycks_math", {}).values())


# --------------------------------------------------------------------------------------------------
# benchmark.source=qwen25_math: the research code's item sets, by URL through datasets' json builder
# --------------------------------------------------------------------------------------------------
FIXTURES = ROOT / "tests" / "fixtures" / "qwen25_math"
PINNED = "QwenLM/Qwen2.5-Math/a45202bd16f1ec06f433442dc1152d0074773465/evaluation/data/"
Q25 = {"minerva_math": 272, "olympiadbench": 675, "gaokao2023en": 385, "amc23": 40, "math": 5000}


@pytest.fixture
def qwen_files(monkeypatch, tmp_path):
    """Serve each pinned URL from the fixture rows, repeated to the real file's size."""
    import datasets

    real_load = datasets.load_dataset
    served: list[str] = []

    def fake_load_dataset(path, name=None, split=None, data_files=None, **kwargs):
        assert path == "json" and PINNED in data_files and data_files.endswith("/test.jsonl"), data_files
        bench = data_files.split(PINNED)[1].split("/")[0]
        rows = [json.loads(line) for line in (FIXTURES / bench / "test.jsonl").read_text().splitlines()]
        local = tmp_path / f"{bench}.jsonl"
        with local.open("w") as handle:
            for i in range(Q25[bench]):
                row = dict(rows[i % len(rows)])
                for key in ("question", "problem"):
                    if key in row:
                        row[key] = f"{row[key]} (item {i})"
                handle.write(json.dumps(row) + "\n")
        served.append(bench)
        return real_load("json", data_files=str(local), split=split)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub.DROPPED.clear()
    return served


@pytest.mark.parametrize("bench", sorted(Q25))
def test_qwen25_math_item_sets_compose_load_and_score(bench, qwen_files):
    from tests.helpers import compose_run

    cfg = compose_run([f"benchmark={bench}", "benchmark.source=qwen25_math"])
    assert cfg.benchmark.direct_task == f"unlock_{bench}_q25" and cfg.benchmark.cot_task == f"unlock_{bench}_q25_cot"
    task = load_task(cfg.benchmark.direct_task, TASKS_DIR)
    splits = {name: list(getattr(task, f"{name}_docs")()) for name in ("training", "validation", "test")}
    questions = {name: {doc["question"] for doc in docs} for name, docs in splits.items()}
    assert (
        not (questions["training"] & questions["validation"])
        and not (questions["training"] | questions["validation"]) & questions["test"]
    )
    dropped = sum(hub.DROPPED[next(iter(hub.DROPPED))].values())
    assert sum(len(docs) for docs in splits.values()) + dropped == Q25[bench] and qwen_files == [bench]
    for docs in splits.values():
        for doc in docs:
            assert process_generation(doc, [f"The final answer is {doc['answer']}."])["acc"] == 1.0, doc


def test_minerva_answer_is_the_last_boxed_of_the_solution(qwen_files):
    docs = list(load_task("unlock_minerva_math_q25", TASKS_DIR).test_docs())
    answers = {doc["answer"] for doc in docs}
    assert answers == {"66.4", "4.5e33", "1.2e-5"}


def test_olympiadbench_answer_is_final_answer_0_without_math_mode(qwen_files):
    docs = list(load_task("unlock_olympiadbench_q25", TASKS_DIR).test_docs())
    assert {doc["answer"] for doc in docs} == {"2^{1009}", "-1-\\sqrt{3}", "(1,2)"}


@pytest.mark.parametrize("bench", ["svamp", "gsm8k", "agieval_math", "deepmind_math", "arith"])
def test_qwen25_math_source_is_a_clear_error_where_it_has_no_items(bench, tmp_path):
    from tests.helpers import compose_run
    from unlock.run.config import run_settings
    from unlock.run.harness import run

    cfg = compose_run(
        [
            f"benchmark={bench}",
            "benchmark.source=qwen25_math",
            "experiment=tiny",
            "dry_run=true",
            f"paths.cache_dir={tmp_path}",
        ]
    )
    with pytest.raises(
        ValueError,
        match=f"benchmark.source=qwen25_math has no items for benchmark '{bench}'; "
        "it covers: minerva_math, olympiadbench, gaokao2023en, amc23, math",
    ):
        run(run_settings(cfg), tmp_path)


# --------------------------------------------------------------------------------------------------
# capability=icl: worked examples before the Unlocked prompt
# --------------------------------------------------------------------------------------------------
def test_icl_prompts_carry_train_examples_disjoint_from_the_questions():
    from unlock.lm_eval.prompts import build_prompt_sets

    plain = build_prompt_sets("unlock_arith", "unlock_arith_cot", "train", 6, 3, 0, TASKS_DIR)
    icl = build_prompt_sets("unlock_arith", "unlock_arith_cot", "train", 6, 3, 0, TASKS_DIR, n_shots=4)
    assert icl.locked == plain.locked and icl.heldout_locked == plain.heldout_locked
    assert icl == build_prompt_sets("unlock_arith", "unlock_arith_cot", "train", 6, 3, 0, TASKS_DIR, n_shots=4)
    context = icl.unlocked[0][: -len(plain.unlocked[0])]
    assert all(prompt == context + own for prompt, own in zip(icl.unlocked, plain.unlocked, strict=False))
    examples = context.strip().split("\n\n")
    assert len(examples) == 4 and all("Let's think step by step." in e and "The final answer is" in e for e in examples)
    shot_questions = {e.split("\n")[0] for e in examples}
    used = {p.split("\n")[0] for p in plain.locked + plain.heldout_locked}
    train = {f"Question: {d['question']}" for d in load_task("unlock_arith", TASKS_DIR).training_docs()}
    assert shot_questions <= train and not shot_questions & used


@pytest.mark.parametrize("bench", ["arith", "gsm8k", "math"])
def test_icl_composes_with_benchmarks_that_have_worked_solutions(bench):
    from tests.helpers import compose_run
    from unlock.run.config import validate

    cfg = compose_run([f"benchmark={bench}", "capability=icl"])
    validate(cfg)
    assert cfg.capability.n_shots == (5 if bench == "math" else 8)


@pytest.mark.parametrize(
    "bench", ["svamp", "agieval_math", "minerva_math", "olympiadbench", "deepmind_math", "gaokao2023en", "amc23"]
)
def test_icl_is_a_clear_error_without_worked_solutions(bench):
    from tests.helpers import compose_run
    from unlock.run.config import validate

    with pytest.raises(
        ValueError,
        match=f"needs worked solutions, and benchmark '{bench}' has none; benchmarks with them: arith, gsm8k, math",
    ):
        validate(compose_run([f"benchmark={bench}", "capability=icl"]))


@pytest.mark.parametrize("task", ["unlock_gsm8k", "unlock_math"])
def test_icl_examples_from_hub_solutions(task, mocked_hub):
    from unlock.lm_eval.prompts import build_prompt_sets

    sets = build_prompt_sets(task, f"{task}_cot", "train", 4, 2, 0, TASKS_DIR, n_shots=3)
    context = sets.unlocked[0].split("\n\n")[:3]
    assert all("The final answer is" in example for example in context)
    assert ("#### " not in sets.unlocked[0]) if task == "unlock_gsm8k" else ("\\boxed" in sets.unlocked[0])


def test_a_task_without_solutions_fails_clearly_when_shots_are_asked(mocked_hub):
    from unlock.lm_eval.prompts import build_prompt_sets

    with pytest.raises(
        ValueError, match="needs worked solutions, but task 'unlock_minerva_math_cot' has items without one"
    ):
        build_prompt_sets("unlock_minerva_math", "unlock_minerva_math_cot", "train", 4, 2, 0, TASKS_DIR, n_shots=2)


def test_dry_run_reports_items_and_dropped_rows(mocked_hub, tmp_path, capsys):
    from tests.helpers import compose_run
    from unlock.run.config import run_settings
    from unlock.run.harness import run

    cfg = compose_run(
        ["experiment=tiny", "benchmark=gaokao2023en", "dry_run=true", "check_data=true", f"paths.cache_dir={tmp_path}"]
    )
    record = run(run_settings(cfg), tmp_path)
    assert record["data"]["dropped_rows"] == {"MARIO-Math-Reasoning/Gaokao2023-Math-En": {"train": 2}}
    assert record["data"]["items"] == {"train": 64, "validation": 32, "test": 120 - 2 - 96}
    assert "dropped for want of an answer" in capsys.readouterr().out


def test_dry_run_of_the_offline_benchmark_checks_its_data(tmp_path):
    from tests.helpers import settings_for
    from unlock.run.harness import run

    record = run(settings_for(["experiment=tiny", "dry_run=true", f"paths.cache_dir={tmp_path}"]), tmp_path)
    assert record["data"]["items"] == {"train": 200, "validation": 80, "test": 120}


def test_dry_run_prints_the_power_of_the_planned_test_items(tmp_path, capsys):
    """The planned items are the split's, cut by eval.limit; the effect is stats.effect where the paper
    reports none, its gain where it does (qwen15 7B -> 14B, GSM8K: 74.2 - 15.9 points)."""
    from tests.helpers import compose_run, settings_for
    from unlock.analysis.stats import items_needed, power_at
    from unlock.run.config import run_settings
    from unlock.run.harness import run
    from unlock.run.plan import planned_power

    record = run(
        settings_for(
            ["experiment=tiny", "dry_run=true", "eval.limit=100", "stats.effect=0.2", f"paths.cache_dir={tmp_path}"]
        ),
        tmp_path,
    )
    plan = record["power"]["unlock vs unsteered"]
    assert (plan["n"], plan["effect"], plan["effect_from"]) == (100, 0.2, "default")
    # unlock's comparisons decide the verdict: the one-sided exact test at 5%, the power of that test
    assert plan["power"] == pytest.approx(power_at(100, 0.2, 0.2, 0.05, 1))
    assert plan["items_needed"] == items_needed(0.2, 0.2, 0.8, 0.05, 1)
    other = record["power"]["native vs unsteered"]  # a Holm-family member: two-sided at 0.05 / m
    assert other["power"] == pytest.approx(power_at(100, 0.2, 0.2, 0.05 / other["family_size"], 2))
    assert set(record["power"]) == {
        "unlock vs unsteered",
        "unlock vs random",
        "prompting vs unsteered",
        "native vs unsteered",
        "native vs random",
        "random vs unsteered",
        "unlock vs reversed",
        "reversed vs unsteered",
        "reversed vs random",
    }
    assert "power of the paired tests on 100 test items" in capsys.readouterr().out
    paper = compose_run(["experiment=paper/cot_qwen15_7b_to_14b", "benchmark=gsm8k", f"paths.cache_dir={tmp_path}"])
    gain = planned_power(run_settings(paper), 1319)["unlock vs unsteered"]
    assert gain["effect_from"] == "paper" and gain["effect"] == pytest.approx(0.583) and gain["power"] > 0.99
