"""Importing the paper's released files into the teacher cache."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from dss_jax.data import dss_paper, report, sources
from dss_jax.data.cache import read_cache

# (dataset, split, records, unparsed, teacher right) over the released files. The teacher
# accuracies equal the reference's scoring except two svamp train labels written with
# Python's `and` (see tests/test_parsers.py), which the reference counts right.
EXPECTED = [
    ("svamp", "train", 800, 13, 586),
    ("svamp", "test", 200, 2, 148),
    ("cqa", "train", 9741, 3, 7234),
    ("cqa", "test", 1221, 0, 943),
    ("anli1", "sample", 64, 0, 45),
    ("esnli", "sample", 64, 0, 44),
]


@pytest.fixture(scope="module")
def imported(dss_palm_dir):
    return {(d, s): dss_paper.import_split(dss_palm_dir, d, s) for d, s, *_ in EXPECTED}


@pytest.mark.shared_data
@pytest.mark.parametrize("dataset,split,n,unparsed,right", EXPECTED)
def test_counts_and_teacher_accuracy(imported, dataset, split, n, unparsed, right):
    records = imported[(dataset, split)]
    summary = report.summarize(records, dataset)
    assert (summary.records, summary.unparsed, summary.teacher_correct, summary.judged) == (n, unparsed, right, n)
    assert summary.teacher_accuracy == pytest.approx(right / n)
    assert [r.position for r in records] == list(range(n))
    assert len({r.id for r in records}) == n
    assert all(len(r.samples) == 1 and r.samples[0].teacher == "palm-540b" for r in records)


@pytest.mark.shared_data
def test_inputs_are_built_as_the_reference_builds_them(imported, dss_palm_dir):
    svamp = imported[("svamp", "train")][0]
    first = json.loads(open(dss_palm_dir / "svamp" / "svamp_train.json").readline())
    assert svamp.input == first["input"] and svamp.label == first["label"] == "( 84.0 / 2.0 )"

    cqa = imported[("cqa", "test")][0]
    assert cqa.input == (
        "A beaver is know for building prowess, their supplies come from where?\nAnswer Choices:\n"
        "(a) british columbia\n(b) body of water\n(c) wooded area\n(d) pay debts\n(e) zoo"
    )
    assert cqa.label == "wooded area"
    assert cqa.meta["source_id"] == "080ef6941410139d6869e78122bc741e"

    anli = imported[("anli1", "sample")][0]
    assert anli.input.endswith(
        "Signet Jewelers group.</s>The first Ernest Jones store was opened on the continent of Europe."
    )
    assert anli.label == "entailment" and anli.samples[0].label == "contradiction"
    esnli = imported[("esnli", "sample")][0]
    assert esnli.label == "neutral" and "</s>" in esnli.input


@pytest.mark.shared_data
def test_svamp_split_reproduces_the_released_files(dss_palm_dir):
    problems = json.load(open(dss_palm_dir / "svamp" / "SVAMP.json"))
    for split in ("train", "test"):
        rows = sources.svamp_paper_split(problems, split)
        released = dss_paper.read_rows(dss_palm_dir, "svamp", split)
        assert [sources.build_input("svamp", r) for r in rows] == [r["input"] for r in released]
        assert [sources.gold_label("svamp", r) for r in rows] == [r["label"] for r in released]


@pytest.mark.shared_data
def test_command_line(dss_palm_dir, tmp_path):
    out = tmp_path / "svamp_test.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "dss_jax.import_dss",
        "--dss_dir",
        str(dss_palm_dir),
        "--dataset",
        "svamp",
        "--split",
        "test",
        "--output",
        str(out),
    ]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "records=200" in lines and "unparsed=2" in lines
    assert lines[-1] == "teacher_accuracy=0.740000"
    records = read_cache(out)
    assert len(records) == 200 and records[5].position == 5 and records[5].id == "svamp/test/5"
    # A second run refuses to overwrite silently.
    again = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "already holds a result" in again.stderr and "--overwrite" in again.stderr


def _fake_layout(root, dataset="svamp", n=3, chunk_lengths=(3,)):
    d = root / dataset
    (d / "llm").mkdir(parents=True)
    with open(d / f"{dataset}_train.json", "w") as f:
        for i in range(n):
            f.write(json.dumps({"input": f"Q{i}", "label": f"( {i}.0 + 1.0 )"}) + "\n")
    start = 0
    for k, length in enumerate(chunk_lengths):
        comps = [f"R{i}. The answer is ({i} + 1)." for i in range(start, start + length)]
        (d / "llm" / f"train_CoT_{k}.json").write_text(json.dumps(comps))
        start += length


def test_small_layout_and_chunk_alignment(tmp_path, monkeypatch):
    monkeypatch.setitem(sources.DATASETS, "svamp", sources.DatasetSpec("svamp", "svamp", 2, ("train",), False))
    _fake_layout(tmp_path, n=3, chunk_lengths=(2, 1))
    records = dss_paper.import_split(tmp_path, "svamp", "train")
    assert [r.samples[0].label for r in records] == ["(0 + 1)", "(1 + 1)", "(2 + 1)"]
    assert report.summarize(records, "svamp").teacher_accuracy == 1.0


@pytest.mark.parametrize(
    "chunks,message",
    [
        ((1, 2), r"train_CoT_0.json: holds 1 completions, expected 2"),
        ((2,), r"train_CoT_1.json not found; svamp_train.json has 3 lines, so 2 completion file"),
        ((2, 1, 1), r"train_CoT_2.json: more completion files"),
    ],
)
def test_misaligned_chunks_are_named(tmp_path, monkeypatch, chunks, message):
    monkeypatch.setitem(sources.DATASETS, "svamp", sources.DatasetSpec("svamp", "svamp", 2, ("train",), False))
    _fake_layout(tmp_path, n=3, chunk_lengths=chunks)
    with pytest.raises((dss_paper.MissingFileError, dss_paper.MalformedFileError), match=message):
        dss_paper.import_split(tmp_path, "svamp", "train")


def test_missing_dir_file_and_bad_line_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere is not a directory; expected the paper's datasets folder"):
        dss_paper.import_split(tmp_path / "nowhere", "svamp", "train")
    with pytest.raises(FileNotFoundError, match=r"svamp not found; expected svamp/svamp_<split>.json"):
        dss_paper.import_split(tmp_path, "svamp", "train")
    (tmp_path / "svamp").mkdir()
    (tmp_path / "svamp" / "svamp_test.json").write_text('{"input": "a", "label": "(1)"}\n{oops\n')
    with pytest.raises(
        FileNotFoundError, match=r"svamp_train.json not found; expected the 'train' split .*present: svamp_test.json"
    ):
        dss_paper.import_split(tmp_path, "svamp", "train")
    with pytest.raises(ValueError, match=r"svamp_test.json:2: not valid JSON"):
        dss_paper.import_split(tmp_path, "svamp", "test")
    with pytest.raises(ValueError, match=r"unknown dataset 'gsm8k'; known datasets: svamp, cqa, esnli, anli1"):
        dss_paper.import_split(tmp_path, "gsm8k", "test")


def test_the_output_is_checked_before_any_file_is_read(tmp_path):
    """A released file as --output is refused even with --overwrite; an earlier cache
    without it, before a file is read (here, a --dss_dir that does not exist)."""
    _fake_layout(tmp_path, n=2, chunk_lengths=(2,))
    released = [tmp_path / "svamp" / "svamp_train.json", tmp_path / "svamp" / "llm" / "train_CoT_0.json"]
    kept = {p: p.read_bytes() for p in released}

    def run(dss_dir, output, *extra):
        cmd = [sys.executable, "-m", "dss_jax.import_dss", f"--dss_dir={dss_dir}", "--dataset=svamp"]
        cmd += ["--split=train", f"--output={output}", *extra]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        return proc.stderr.strip()

    for output in released:
        line = run(tmp_path, output, "--overwrite")
        assert (
            line.startswith(f"import_dss: error: --output={output} is --dss_dir")
            and "not even with --overwrite" in line
        )
    assert {p: p.read_bytes() for p in released} == kept
    earlier = tmp_path / "cache.jsonl"
    earlier.write_text('{"id": "a", "input": "x"}\n')
    assert run(tmp_path / "nowhere", earlier) == (
        f"import_dss: error: --output={earlier} already holds a result (26 bytes): pass --overwrite to replace it, "
        "or give another path"
    )


def test_split_off_matches_hugging_face_train_test_split():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"i": list(range(97))})
    for held, seed in [(0.1, 0), (1.0 - 0.9, 3), (0.5, 1)]:
        split = ds.train_test_split(test_size=held, seed=seed)
        kept, held_out = sources.split_off(97, held, seed)
        assert list(kept) == split["train"]["i"] and list(held_out) == split["test"]["i"]
    assert list(sources.subsample(10, 1.0, 0)) == list(range(10))
    assert np.array_equal(sources.subsample(97, 0.9, 3), sources.split_off(97, 1.0 - 0.9, 3)[0])
