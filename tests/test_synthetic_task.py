"""The dss_synthetic SeqIO task: caches generated on demand, paired examples, the converter, gin."""

import numpy as np
import pytest
import seqio

import gin
import tasks.synthetic  # registers dss_synthetic
from conftest import REPO_ROOT
from dss_jax.data import synthetic
from dss_jax.data import tasks as dss_tasks
from dss_jax.data.cache import read_cache
from dss_jax.data.feature_converter import DssFeatureConverter

NAME = tasks.synthetic.TASK_NAME
LENGTHS = {"label_inputs": 128, "label_targets": 40, "rationale_inputs": 128, "rationale_targets": 128}
SMALL = [
    "synthetic_config.train_size = 120",
    "synthetic_config.validation_size = 20",
    "synthetic_config.test_size = 30",
    "synthetic_config.unparsable_rate = 0.05",
]


def _vocabulary():
    return seqio.get_mixture_or_task(NAME).output_features["label_inputs"].vocabulary


@pytest.fixture
def bind(tmp_path):
    """Parses gin lines (plus a temporary cache dir) for one test; resets the task's vocabulary."""

    def apply(*lines, files=()):
        gin.clear_config()
        for f in files:
            gin.parse_config_file(str(REPO_ROOT / f))
        gin.parse_config([f"synthetic_cache_dir.directory = '{tmp_path}'", *lines])
        _vocabulary().reset()

    yield apply
    gin.clear_config()
    _vocabulary().reset()


def _examples(split, lengths=LENGTHS):
    return list(seqio.get_mixture_or_task(NAME).get_dataset(lengths, split=split, shuffle=False).as_numpy_iterator())


def test_paired_examples_from_caches_generated_on_demand(bind, tmp_path):
    bind(*SMALL, f"{NAME}/task_vocabulary.vocab_size = 600")
    assert not list(tmp_path.iterdir())
    train = _examples("train")
    config = synthetic.SyntheticConfig(train_size=120, validation_size=20, test_size=30, unparsable_rate=0.05)
    paths = synthetic.split_paths(config, tmp_path)
    records = read_cache(paths["train"])
    assert [e["id"].decode() for e in train] == [r.id for r in records]  # gold labels keep every record
    vocabulary = _vocabulary()
    assert 300 < vocabulary.vocab_size <= 600
    for e, r in zip(train, records):
        assert e["label_inputs_pretokenized"].decode() == "predict: " + r.input
        assert e["label_targets_pretokenized"].decode() == r.label
        assert e["rationale_targets_pretokenized"].decode() == (r.samples[0].rationale or "")
        assert vocabulary.decode(e["label_targets"][:-1].tolist()) == r.label and e["label_targets"][-1] == 1
    assert sum(e["rationale_targets_pretokenized"] == b"" for e in train) == 6  # the unparsable ones
    assert len(_examples("validation")) == 20 and len(_examples("test")) == 30
    # Teacher labels drop the records whose completion did not parse.
    bind(*SMALL, f"{NAME}/task_vocabulary.vocab_size = 600", f"{NAME}/task_options.label_source = 'teacher'")
    teacher = _examples("train")
    assert len(teacher) == 114
    assert {e["id"].decode(): e["label_targets_pretokenized"].decode() for e in teacher} == {
        r.id: r.samples[0].label for r in records if r.samples[0].parsed
    }


def test_other_settings_other_files(bind, tmp_path):
    bind(*SMALL, "synthetic_config.max_operations = 1")
    easy = _examples("test")
    assert all(sum(e["label_targets_pretokenized"].decode().count(f" {op} ") for op in "+-*/") == 1 for e in easy)
    bind(*SMALL, f"{NAME}/synthetic_config.min_operations = 3")  # scoped to the task works too
    hard = _examples("test")
    assert all(e["label_targets_pretokenized"].decode().count("(") == 3 for e in hard)
    assert len(list((tmp_path / "synthetic").iterdir())) == 2


def test_gin_file_lengths_fit_and_converter_packs_both_tasks(bind):
    """The shipped gin file: its lengths hold the default dataset, and packed rows carry both tasks."""
    bind(files=["gin/tasks/synthetic.gin"])
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == NAME
    lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
    assert _vocabulary().vocab_size <= 1000  # small enough for the quickstart's from-scratch model
    for split in ("train", "validation", "test"):
        unlimited = {k: 1024 for k in lengths}
        longest = {k: max(len(e[k]) for e in _examples(split, unlimited)) for k in lengths}
        assert all(longest[k] <= lengths[k] for k in lengths), (split, longest, lengths)

    converter = DssFeatureConverter()  # row lengths from the gin file
    task = seqio.get_mixture_or_task(NAME)
    ds = task.get_dataset(lengths, split="train", shuffle=True, seed=0)
    rows = list(converter(ds, lengths).take(8).as_numpy_iterator())
    assert rows[0]["encoder_input_tokens"].shape == (256,) and rows[0]["decoder_target_tokens"].shape == (192,)
    task_ids = np.stack([r["decoder_task_ids"] for r in rows])
    weights = np.stack([r["decoder_loss_weights"] for r in rows])
    assert set(np.unique(task_ids)) == {0, 1, 2}
    assert np.array_equal(weights > 0, task_ids > 0)
    assert all(r["decoder_segment_ids"].max() >= 2 for r in rows)  # several pairs per row


def test_a_cache_given_as_a_callable_is_resolved_when_read(tmp_path):
    calls = []

    def provide():
        calls.append(1)
        return tmp_path / "missing.jsonl"

    dss_tasks.register_cache_task("dss_test_callable", train_cache=provide, family="svamp")
    try:
        assert not calls  # registering reads nothing
        with pytest.raises(FileNotFoundError, match="dss_test_callable train cache not found: .*missing.jsonl"):
            seqio.get_mixture_or_task("dss_test_callable").get_dataset(LENGTHS, split="train")
        assert calls
    finally:
        seqio.TaskRegistry.remove("dss_test_callable")
        dss_tasks.REGISTERED.discard("dss_test_callable")
