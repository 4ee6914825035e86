"""Hugging Face readers, on tiny datasets that the test saves with `save_to_disk`."""

import json

import pytest

datasets = pytest.importorskip("datasets")

from dss_jax.data import dss_paper, hf_readers, sources  # noqa: E402


def _save(tmp_path, name, splits):
    path = tmp_path / name
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(path))
    return str(path)


def test_cqa_reads_validation_as_test(tmp_path):
    row = {
        "id": "x1",
        "question": "Where do beavers live?",
        "choices": ["a", "b", "wooded area", "d", "e"],
        "answer": "wooded area",
        "abstractive_explanation": "",
        "extractive_explanation": "",
    }
    path = _save(tmp_path, "cos_e", {"train": [row, {**row, "id": "x2"}], "validation": [{**row, "id": "v1"}]})
    train = hf_readers.read_records("cqa", "train", path)
    test = hf_readers.read_records("cqa", "test", path)
    assert [r.meta["source_id"] for r in train] == ["x1", "x2"] and [r.position for r in train] == [0, 1]
    assert test[0].meta["source_id"] == "v1" and test[0].id == "cqa/test/0"
    assert test[0].input == "Where do beavers live?\nAnswer Choices:\n(a) a\n(b) b\n(c) wooded area\n(d) d\n(e) e"
    assert test[0].label == "wooded area" and test[0].samples == ()


@pytest.mark.parametrize("dataset,hf_split,split", [("anli1", "dev_r1", "valid"), ("esnli", "test", "test")])
def test_nli_joins_with_eos_and_names_labels(tmp_path, dataset, hf_split, split):
    rows = [{"premise": "P.", "hypothesis": "H.", "label": i} for i in (0, 1, 2)]
    path = _save(tmp_path, dataset, {hf_split: rows})
    records = hf_readers.read_records(dataset, split, path)
    assert [r.label for r in records] == ["entailment", "neutral", "contradiction"]
    assert records[0].input == "P.</s>H."


def test_missing_split_and_path_are_named(tmp_path):
    path = _save(tmp_path, "anli", {"train_r1": [{"premise": "p", "hypothesis": "h", "label": 0}]})
    with pytest.raises(KeyError, match=r"has the splits \['train_r1'\]; the anli1 reader needs 'test_r1'"):
        hf_readers.read_rows("anli1", "test", path)
    with pytest.raises(FileNotFoundError, match="nowhere not found"):
        hf_readers.read_rows("anli1", "train", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="not 'dev'"):
        hf_readers.read_rows("anli1", "dev", path)


@pytest.mark.shared_data
def test_svamp_from_the_hub_layout_gives_the_paper_split(tmp_path, dss_palm_dir):
    problems = json.load(open(dss_palm_dir / "svamp" / "SVAMP.json"))
    # The Hub copy splits 700/300 in its own order; the reader re-splits as the paper.
    shuffled = problems[::-1]
    path = _save(tmp_path, "svamp", {"train": shuffled[:700], "test": shuffled[700:]})
    for split in ("train", "test"):
        ours = hf_readers.read_records("svamp", split, path)
        released = dss_paper.read_rows(dss_palm_dir, "svamp", split)
        assert [r.input for r in ours] == [r["input"] for r in released]
        assert [r.label for r in ours] == [r["label"] for r in released]
    assert sources.get_spec("svamp").chunk_size == 500
