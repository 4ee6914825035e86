"""`annotate --task=NAME --split=SPLIT`: a registered task's split as the examples to annotate."""

import json
import pathlib

import pytest
import seqio  # a dependency (setup.py): its absence fails these tests, it does not skip them
import tensorflow as tf

import gin
import tasks.synthetic  # noqa: F401  (registers dss_synthetic)
from dss_jax import cli
from dss_jax.data import options as dss_options
from dss_jax.data import synthetic
from dss_jax.data import tasks as dss_tasks
from dss_jax.data.cache import CacheRecord, CacheWriter, TeacherSample, read_cache
from dss_jax.teacher.examples import InputError
from dss_jax.teacher.prompts import parse_template
from dss_jax.teacher.task_input import read_task_examples

SMALL = [
    "synthetic_config.train_size = 30",
    "synthetic_config.validation_size = 5",
    "synthetic_config.test_size = 6",
    "synthetic_config.unlabeled_size = 12",
]


def write(path: pathlib.Path, records):
    with CacheWriter(path, fsync=False) as w:
        w.write_all(records)
    return path


def record(i, split, label="yes"):
    return CacheRecord(
        id=f"{split}/{i}",
        input=f"is {i} small?",
        label=label,
        dataset="toy",
        split=split,
        position=i,
        samples=(TeacherSample("because", "yes"),),
        meta={"n": i},
    )


@pytest.fixture
def cache_task(tmp_path):
    train = write(tmp_path / "train.jsonl", [record(i, "train") for i in range(20)])
    test = write(tmp_path / "test.jsonl", [record(i, "test") for i in range(4)])
    pool = write(tmp_path / "pool.jsonl", [record(i, "pool", label=None) for i in range(3)])
    dss_tasks.register_cache_task(
        "toy_annotate_input",
        train_cache=train,
        test_cache=test,
        extra_splits={"pool": pool},
        family="cqa",
        options=dss_options.TaskOptions(),
    )
    yield {"train": train, "test": test, "pool": pool}
    seqio.TaskRegistry.remove("toy_annotate_input")
    dss_tasks.REGISTERED.discard("toy_annotate_input")


def test_cache_task_splits_are_read_record_for_record(cache_task):
    test = read_task_examples("toy_annotate_input", "test")
    expected = read_cache(cache_task["test"])
    assert [(e.id, e.input, e.label, e.split, e.position, dict(e.meta)) for e in test] == [
        (r.id, r.input, r.label, r.split, r.position, r.meta) for r in expected
    ]
    pool = read_task_examples("toy_annotate_input", "pool")
    assert [e.id for e in pool] == ["pool/0", "pool/1", "pool/2"] and all(e.label is None for e in pool)
    # train and validation are what training sees: validation carved out of train.
    train = read_task_examples("toy_annotate_input", "train")
    validation = read_task_examples("toy_annotate_input", "validation")
    assert (len(train), len(validation)) == (18, 2)
    assert sorted(e.id for e in train + validation) == sorted(f"train/{i}" for i in range(20))
    with pytest.raises(InputError, match=r"no split 'dev'; its splits: train, validation, test, pool"):
        read_task_examples("toy_annotate_input", "dev")
    with pytest.raises(InputError, match=r"unknown task 'toy_nope'; registered tasks: .*toy_annotate_input"):
        read_task_examples("toy_nope", "test")
    with pytest.raises(InputError, match=r"toy_annotate_input/test\[0\]: the prompt .* uses \{\{premise\}\}"):
        read_task_examples("toy_annotate_input", "test", template=parse_template("P: {{premise}}"))


def test_synthetic_unlabeled_split(tmp_path):
    gin.clear_config()
    try:
        gin.parse_config([f"synthetic_cache_dir.directory = '{tmp_path}'", *SMALL])
        examples = read_task_examples("dss_synthetic", "unlabeled")
        config = synthetic.SyntheticConfig(train_size=30, validation_size=5, test_size=6, unlabeled_size=12)
        records = read_cache(synthetic.split_paths(config, tmp_path)["unlabeled"])
        assert [(e.id, e.input) for e in examples] == [(r.id, r.input) for r in records]
        assert [e.id for e in examples] == [f"synthetic/unlabeled/{i}" for i in range(12)]
        assert all(e.label is None and e.split == "unlabeled" for e in examples)
        assert dss_tasks.task_family("dss_synthetic") == "svamp"
        # Without a pool the split says how to get one.
        gin.parse_config(["synthetic_config.unlabeled_size = 0"])
        with pytest.raises(InputError, match="bind synthetic_config.unlabeled_size"):
            read_task_examples("dss_synthetic", "unlabeled")
    finally:
        gin.clear_config()


@pytest.fixture
def seqio_task():
    rows = {"question": ["2 + 2?", "3 + 1?", "5 - 1?"], "answer": ["4", "4", "4"]}

    def dataset_fn(split, shuffle_files=False, seed=None):
        del shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices(rows if split == "train" else {k: v[:1] for k, v in rows.items()})

    vocabulary = seqio.PassThroughVocabulary(size=10)
    seqio.TaskRegistry.add(
        "toy_plain_seqio",
        source=seqio.FunctionDataSource(dataset_fn, splits=("train", "dev")),
        output_features={"question": seqio.Feature(vocabulary)},
    )
    yield
    seqio.TaskRegistry.remove("toy_plain_seqio")


def test_other_seqio_tasks_are_read_from_their_source(seqio_task):
    examples = read_task_examples("toy_plain_seqio", "train", input_field="question", label_field="answer")
    assert [(e.id, e.input, e.label) for e in examples] == [
        ("toy_plain_seqio/train/0", "2 + 2?", "4"),
        ("toy_plain_seqio/train/1", "3 + 1?", "4"),
        ("toy_plain_seqio/train/2", "5 - 1?", "4"),
    ]
    assert examples[0].fields["input"] == "2 + 2?"  # what {{input}} becomes
    assert len(read_task_examples("toy_plain_seqio", "dev", input_field="question")) == 1
    with pytest.raises(
        InputError, match=r"no string feature 'inputs' \(features: answer, question\); .*--task_input_field"
    ):
        read_task_examples("toy_plain_seqio", "train")
    with pytest.raises(InputError, match=r"no split 'test'; its splits: train, dev"):
        read_task_examples("toy_plain_seqio", "test", input_field="question")


@pytest.fixture
def bytes_task():
    """A code-registered task whose source gives raw bytes, some of them not UTF-8."""
    rows = {"text": [b"2 + 2?", b"3 + 1?", b"5 - 1?"], "question": [b"ok", b"caf\xe9?", b"ok"],
            "answer": [b"4", b"4", b"\xff"], "blob": [b"\x89PNG", b"\x00\xfe", b"ok"]}  # fmt: skip

    def dataset_fn(split, shuffle_files=False, seed=None):
        del split, shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices(rows)

    seqio.TaskRegistry.add(
        "toy_bytes_seqio",
        source=seqio.FunctionDataSource(dataset_fn, splits=("train",)),
        output_features={"text": seqio.Feature(seqio.PassThroughVocabulary(size=10))},
    )
    yield
    seqio.TaskRegistry.remove("toy_bytes_seqio")


def test_a_feature_that_is_not_utf8_names_task_split_index_and_feature(bytes_task):
    with pytest.raises(cli.UserError) as info:  # what the binary reports as one line, exit 2
        read_task_examples("toy_bytes_seqio", "train", input_field="question")
    message = str(info.value)
    assert message == (
        "toy_bytes_seqio/train[1]: feature 'question' is not UTF-8 text (byte 0xe9 at offset 3: "
        "invalid continuation byte); make the task's source give UTF-8 text for it"
    )
    assert isinstance(info.value, InputError) and "\n" not in message
    # The label and a prompt placeholder are needed as much as the input.
    with pytest.raises(InputError, match=r"^toy_bytes_seqio/train\[2\]: feature 'answer' is not UTF-8 text"):
        read_task_examples("toy_bytes_seqio", "train", input_field="text", label_field="answer")
    with pytest.raises(InputError, match=r"^toy_bytes_seqio/train\[0\]: feature 'blob' is not UTF-8 text"):
        read_task_examples("toy_bytes_seqio", "train", input_field="text", template=parse_template("{{blob}}"))


def test_binary_features_an_example_does_not_use_are_left_out(bytes_task):
    # 'blob' and 'question' are not UTF-8 in some examples and nothing uses them: no reason to refuse.
    examples = read_task_examples("toy_bytes_seqio", "train", input_field="text", template=parse_template("{{input}}"))
    assert [e.input for e in examples] == ["2 + 2?", "3 + 1?", "5 - 1?"]
    assert ["blob" in e.fields for e in examples] == [False, False, True]
    assert examples[0].fields["question"] == "ok" and "question" not in examples[1].fields


def test_an_empty_input_or_a_label_that_is_not_a_finite_number_is_named(tmp_path):
    rows = {"question": ["2 + 2?", " ", "5 - 1?"], "answer": [4.0, 4.0, float("nan")]}

    def dataset_fn(split, shuffle_files=False, seed=None):
        del split, shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices(rows)

    seqio.TaskRegistry.add(
        "toy_empty_seqio",
        source=seqio.FunctionDataSource(dataset_fn, splits=("train",)),
        output_features={"question": seqio.Feature(seqio.PassThroughVocabulary(size=10))},
    )
    try:
        with pytest.raises(InputError, match=r"^toy_empty_seqio/train\[2\]: the label 'answer' is nan, not a finite"):
            read_task_examples("toy_empty_seqio", "train", input_field="question", label_field="answer")
        with pytest.raises(InputError, match=r"^toy_empty_seqio/train\[1\] \(id .*\): the input is empty"):
            read_task_examples("toy_empty_seqio", "train", input_field="question")
    finally:
        seqio.TaskRegistry.remove("toy_empty_seqio")
    # A cache task's record earlier still: the cache itself refuses it, with its line.
    train = write(tmp_path / "train.jsonl", [record(0, "train")])
    with open(train, "a") as f:
        f.write(json.dumps({**record(1, "train").to_json(), "input": " "}) + "\n")
    dss_tasks.register_cache_task("toy_empty_cache", train_cache=train, family="cqa")
    with pytest.raises(cli.UserError, match=r"train\.jsonl:2: field 'input' is empty"):
        read_task_examples("toy_empty_cache", "train")
