"""The synthetic dataset: determinism, labels, the teacher's mistakes, difficulty, baselines."""

import collections
import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from dss_jax.data import parsers, report, safe_eval, synthetic
from dss_jax.data.cache import read_cache
from dss_jax.data.synthetic import SyntheticConfig
from dss_jax.data.synthetic.templates import TEMPLATES

SMALL = SyntheticConfig(train_size=400, validation_size=60, test_size=80)
DEFAULT_FINGERPRINT = "3e612b10be62"  # the default settings, before unlabeled_size existed
GOLD_LABEL = re.compile(r"^(\( )+\d+\.0 [-+*/] .*\d+\.0( \))+$")


@pytest.fixture(scope="module")
def default_records():
    """The dataset at its default settings (2000 / 200 / 300), generated in memory."""
    return synthetic.generate_records(SyntheticConfig())


def _operators(label: str) -> int:
    return sum(label.count(f" {op} ") for op in "+-*/")


def test_same_seed_same_bytes_and_settings_name_the_files(tmp_path):
    a = synthetic.write_dataset(SMALL, tmp_path / "a")
    b = synthetic.write_dataset(SMALL, tmp_path / "b")
    for split in synthetic.SPLITS:
        assert a[split].read_bytes() == b[split].read_bytes()
        assert a[split].relative_to(tmp_path / "a") == b[split].relative_to(tmp_path / "b")
    other_seed = synthetic.write_dataset(dataclasses.replace(SMALL, seed=1), tmp_path / "a")
    assert other_seed["train"].parent != a["train"].parent
    assert other_seed["train"].read_bytes() != a["train"].read_bytes()
    # Any changed setting is a new directory, so a stale file is never reused ...
    harder = dataclasses.replace(SMALL, min_operations=3)
    assert synthetic.split_paths(harder, tmp_path / "a")["train"].parent != a["train"].parent
    # ... and existing files for the same settings are kept as they are.
    mtime = a["train"].stat().st_mtime_ns
    assert synthetic.ensure_dataset(SMALL, tmp_path / "a") == a
    assert a["train"].stat().st_mtime_ns == mtime
    settings = json.loads((a["train"].parent / "settings.json").read_text())
    assert settings["train_size"] == 400 and settings["generator_version"] == synthetic.GENERATOR_VERSION
    # A missing split regenerates the dataset, to the same bytes.
    expected = a["test"].read_bytes()
    a["test"].unlink()
    assert synthetic.ensure_dataset(SMALL, tmp_path / "a")["test"].read_bytes() == expected


def test_records_follow_the_cache_format(tmp_path):
    paths = synthetic.write_dataset(SMALL, tmp_path)
    for split, path in paths.items():
        records = read_cache(path)  # validates every line
        assert len(records) == SMALL.sizes()[split]
        assert [r.position for r in records] == list(range(len(records)))
        assert {(r.dataset, r.split) for r in records} == {("synthetic", split)}
        assert [r.id for r in records] == [f"synthetic/{split}/{i}" for i in range(len(records))]
        for r in records:
            assert r.input.count("\n") == 1 and r.input.endswith("?")
            assert [(s.teacher, s.prompt_id) for s in r.samples] == [("synthetic-teacher", "synthetic-cot")]
    inputs = [r.input for p in paths.values() for r in read_cache(p)]
    assert len(set(inputs)) == len(inputs)  # no problem twice, within or across splits


def test_gold_labels_evaluate_to_the_stated_integer_answer(default_records):
    templates = collections.Counter()
    for records in default_records.values():
        for r in records:
            assert GOLD_LABEL.match(r.label), r.label
            answer = safe_eval.evaluate(r.label)
            assert answer == r.meta["answer"] and answer == int(answer) and answer > 0
            assert _operators(r.label) == r.meta["operations"]
            # Every number of the equation is in the question.
            question_numbers = set(re.findall(r"\d+", r.input))
            assert set(re.findall(r"(\d+)\.0", r.label)) <= question_numbers
            templates[r.meta["template"]] += 1
    assert len(templates) == len(TEMPLATES) >= 15
    ops = collections.Counter(r.meta["operations"] for rs in default_records.values() for r in rs)
    assert set(ops) == {1, 2, 3} and min(ops.values()) > 600


def test_distractor_numbers_are_in_the_story_but_not_the_answer(default_records):
    records = default_records["train"]
    with_distractor = [r for r in records if r.meta["distractors"]]
    assert 0.3 <= len(with_distractor) / len(records) <= 0.5  # 30% sentences + built-in ones
    for r in with_distractor:
        numbers = re.findall(r"\d+", r.input)
        label_numbers = re.findall(r"(\d+)\.0", r.label)
        for x in r.meta["distractors"]:
            assert str(x) in numbers and str(x) not in label_numbers
    plain = synthetic.generate_records(dataclasses.replace(SMALL, distractor_rate=0.0))["train"]
    # Without distractor sentences only the two templates with a built-in spare number have one.
    assert {r.meta["template"] for r in plain if r.meta["distractors"]} <= {"transfer", "selection"}


def test_teacher_is_wrong_on_the_configured_fraction(default_records):
    config = SyntheticConfig()
    for records in default_records.values():
        n = len(records)
        outcomes = collections.Counter(r.samples[0].meta["outcome"] for r in records)
        assert outcomes["wrong"] == round(n * config.teacher_error_rate)
        assert outcomes["slip"] == round(n * config.teacher_slip_rate)
        assert outcomes["unparsable"] == round(n * config.unparsable_rate)
        wrong = sum(not parsers.labels_match("svamp", r.samples[0].label, r.label) for r in records)
        assert wrong == outcomes["wrong"] + outcomes["unparsable"]
        # The data package's report agrees: accuracy = 1 - error rate - unparsable rate.
        summary = report.summarize(records, "svamp")
        assert summary.teacher_accuracy == pytest.approx(1 - (outcomes["wrong"] + outcomes["unparsable"]) / n)
        assert summary.teacher_accuracy == pytest.approx(0.83, abs=0.01)
        assert summary.unparsed == outcomes["unparsable"]
    # Every kind of mistake shows up, each with a wrong label.
    train = default_records["train"]
    mistakes = collections.Counter(
        r.samples[0].meta.get("mistake") for r in train if r.samples[0].meta["outcome"] == "wrong"
    )
    assert set(mistakes) == {"wrong_operation", "distractor", "misread", "label_typo"}
    for r in train:
        if r.samples[0].meta.get("mistake") == "distractor":  # the teacher used the spare number
            used = {int(x) for x in re.findall(r"\d+", r.samples[0].label)}
            assert used & set(r.meta["distractors"])


def _final_result(rationale: str) -> int:
    return int(re.findall(r"= (-?\d+)", rationale)[-1])


def test_slips_break_the_rationale_not_the_label(default_records):
    for r in default_records["train"]:
        sample = r.samples[0]
        outcome = sample.meta["outcome"]
        if outcome == "correct":
            assert _final_result(sample.rationale) == r.meta["answer"]
            assert parsers.labels_match("svamp", sample.label, r.label)
        elif outcome == "slip":
            assert _final_result(sample.rationale) != r.meta["answer"]
            assert parsers.labels_match("svamp", sample.label, r.label)
        elif outcome == "wrong" and sample.meta["mistake"] == "label_typo":
            # Right reasoning, then a wrong number in the equation.
            assert _final_result(sample.rationale) == r.meta["answer"]
            assert not parsers.labels_match("svamp", sample.label, r.label)


def test_every_completion_parses_except_the_unparsable_ones(default_records):
    kinds = collections.Counter()
    for records in default_records.values():
        for r in records:
            sample = r.samples[0]
            parsed = parsers.parse_completion("svamp", sample.completion)
            if sample.meta["outcome"] == "unparsable":
                assert not parsed.ok and sample.rationale is None and sample.label is None
                kinds[sample.meta["mistake"]] += 1
            else:
                assert parsed.ok and (parsed.rationale, parsed.label) == (sample.rationale, sample.label)
                assert sample.completion.startswith(sample.rationale + " The answer is ")
                assert "Q:" not in sample.rationale and "\n" not in sample.rationale
                kinds["continued" if "\n\nQ: " in sample.completion else "stopped"] += 1
    assert {"truncated", "no_answer_phrase", "rambles"} <= set(kinds)
    assert kinds["continued"] > 0.2 * (kinds["continued"] + kinds["stopped"])  # the parser's cut is exercised


def test_rates_and_samples_are_configurable():
    config = dataclasses.replace(
        SMALL, teacher_error_rate=0.4, unparsable_rate=0.1, teacher_slip_rate=0.0, samples_per_record=3
    )
    records = synthetic.generate_records(config)["train"]
    assert all(len(r.samples) == 3 for r in records)
    for k in range(3):
        summary = report.summarize(records, "svamp", sample_index=k)
        assert summary.teacher_accuracy == pytest.approx(0.5)
        assert summary.unparsed == 40
    # Samples of one record are drawn independently (self-consistency has something to vote on).
    assert sum(len({s.completion for s in r.samples}) > 1 for r in records) > 0.3 * len(records)
    perfect = synthetic.generate_records(
        dataclasses.replace(SMALL, teacher_error_rate=0.0, teacher_slip_rate=0.0, unparsable_rate=0.0)
    )["test"]
    assert report.summarize(perfect, "svamp").teacher_accuracy == 1.0


def test_difficulty_sets_the_operation_count_and_numbers():
    for low, high in ((1, 1), (2, 2), (3, 3), (1, 2)):
        config = dataclasses.replace(SMALL, min_operations=low, max_operations=high)
        records = synthetic.generate_records(config)["train"]
        counts = {_operators(r.label) for r in records}
        assert counts == set(range(low, high + 1)), (low, high, counts)
    small_numbers = dataclasses.replace(SMALL, max_operations=1, min_number=2, max_number=9, distractor_rate=0.0)
    for r in synthetic.generate_records(small_numbers)["train"]:
        # Stories draw from [2, 9]; only an exact division's dividend (a product) is larger.
        numbers = [int(x) for x in re.findall(r"\d+", r.input)]
        assert min(numbers) >= 2 and (max(numbers) <= 9 or "/" in r.label)


def test_bad_settings_name_the_setting():
    for bad, match in (
        (dict(max_operations=4), "max_operations"),
        (dict(train_size=0), "train_size"),
        (dict(teacher_error_rate=1.5), "teacher_error_rate"),
        (dict(teacher_error_rate=0.6, unparsable_rate=0.5), "at most 1"),
        (dict(min_number=10, max_number=11), "max_number"),
        (dict(samples_per_record=0), "samples_per_record"),
    ):
        with pytest.raises(ValueError, match=match):
            SyntheticConfig(**bad)


def test_trivial_baselines_are_far_below_the_teacher(default_records):
    train = default_records["train"]
    figures = {split: synthetic.baselines(train, default_records[split]) for split in ("validation", "test")}
    print("synthetic baselines (default settings):", figures)
    for accs in figures.values():
        assert set(accs) == {"majority_answer", "first_two_numbers"}
        assert accs["majority_answer"] < 0.05 and accs["first_two_numbers"] < 0.2
    # The majority answer really is the most common training answer value.
    answers = collections.Counter(r.meta["answer"] for r in train)
    top = answers.most_common(1)[0][0]
    test = default_records["test"]
    assert figures["test"]["majority_answer"] == sum(r.meta["answer"] == top for r in test) / len(test)


def test_command_writes_and_reports(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [
        sys.executable,
        "-m",
        "dss_jax.make_synthetic",
        f"--cache_dir={tmp_path}",
        "--train_size=100",
        "--validation_size=20",
        "--test_size=30",
        "--max_operations=2",
        "--teacher_error_rate=0.2",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    config = SyntheticConfig(train_size=100, validation_size=20, test_size=30, max_operations=2, teacher_error_rate=0.2)
    paths = synthetic.split_paths(config, tmp_path)
    assert f"[train] path={paths['train']}" in out and paths["test"].is_file()
    assert "[train] teacher_accuracy=0.780000" in out and "[test] baseline_majority_answer=" in out
    bad = subprocess.run(cmd + ["--max_operations=5"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "max_operations" in bad.stderr


def test_an_unlabeled_pool_changes_nothing_else(tmp_path):
    small = SyntheticConfig(train_size=60, validation_size=10, test_size=10)
    pooled = dataclasses.replace(small, unlabeled_size=40)
    plain_paths = synthetic.write_dataset(small, tmp_path)
    pooled_paths = synthetic.write_dataset(pooled, tmp_path)
    assert set(plain_paths) == set(synthetic.SPLITS) and set(pooled_paths) == set(synthetic.SPLITS) | {"unlabeled"}
    for split in synthetic.SPLITS:
        assert pooled_paths[split].read_bytes() == plain_paths[split].read_bytes()
    unlabeled = read_cache(pooled_paths["unlabeled"])
    assert [r.id for r in unlabeled] == [f"synthetic/unlabeled/{i}" for i in range(40)]
    assert all(r.label is None and r.samples == () and r.split == "unlabeled" for r in unlabeled)
    labeled_texts = {r.input for split in synthetic.SPLITS for r in read_cache(plain_paths[split])}
    texts = [r.input for r in unlabeled]
    assert len(set(texts)) == 40 and labeled_texts.isdisjoint(texts)
    # Datasets written before the pool existed keep their names (the default's hash is pinned).
    assert "unlabeled_size" not in small.settings() and pooled.fingerprint() != small.fingerprint()
    assert SyntheticConfig().fingerprint() == DEFAULT_FINGERPRINT
    with pytest.raises(ValueError, match="unlabeled_size must be at least 0"):
        SyntheticConfig(unlabeled_size=-1)


def test_make_synthetic_writes_nowhere_in_a_run(tmp_path):
    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    (run / "task.json").write_text(json.dumps({"task": "dss_synthetic", "options": {}}))
    cmd = [sys.executable, "-m", "dss_jax.make_synthetic", f"--cache_dir={run / 'train'}", "--train_size=10"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"lies in {run / 'train'}, part of the training run {run}" in proc.stderr and "--force" in proc.stderr
    assert list((run / "train").iterdir()) == []
