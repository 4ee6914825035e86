"""SeqIO tasks of paired examples: registration, options from gin, splits, tokenization."""

import pathlib

import numpy as np
import pytest
import seqio

import gin
import tasks.dss  # registers the paper's tasks
from conftest import REPO_ROOT, write_parity_task_files
from dss_jax.data import dss_paper, sources, vocab
from dss_jax.data import options as dss_options
from dss_jax.data import paired as dss_paired
from dss_jax.data import tasks as dss_tasks
from dss_jax.data.cache import CacheRecord, CacheWriter, TeacherSample
from dss_jax.data.feature_converter import DssFeatureConverter

LENGTHS = {"label_inputs": 256, "label_targets": 32, "rationale_inputs": 256, "rationale_targets": 128}


@pytest.fixture(scope="module")
def env(tmp_path_factory, dss_palm_dir):
    """A cache dir and a tiny vocabulary trained on svamp, shared by the module."""
    cache_dir = tmp_path_factory.mktemp("dss_cache")
    texts = [r.input for r in dss_paper.import_split(dss_palm_dir, "svamp", "train")]
    spm = vocab.train_vocabulary(
        texts + ["predict: explain:"], cache_dir / "tiny.model", vocab.VocabSettings(vocab_size=400)
    )
    return {"cache_dir": cache_dir, "spm": spm, "data_dir": dss_palm_dir}


@pytest.fixture
def bind(env):
    """Applies gin bindings (plus the module's data/cache/vocab) for one test."""

    def apply(*lines):
        gin.clear_config()
        base = [
            f"data_locations.data_dir = '{env['data_dir']}'",
            f"data_locations.cache_dir = '{env['cache_dir']}'",
            f"task_vocabulary.spm_path = '{env['spm']}'",
        ]
        gin.parse_config(base + list(lines))
        for name in tasks.dss.TASK_NAMES:
            seqio.get_mixture_or_task(name).output_features["label_inputs"].vocabulary.reset()

    apply()
    yield apply
    gin.clear_config()
    for name in tasks.dss.TASK_NAMES:  # do not leave them on this module's temporary vocabulary
        seqio.get_mixture_or_task(name).output_features["label_inputs"].vocabulary.reset()


def _examples(name, split, lengths=LENGTHS):
    return list(seqio.get_mixture_or_task(name).get_dataset(lengths, split=split, shuffle=False).as_numpy_iterator())


def test_registered_names_and_unknown_task():
    assert tasks.dss.TASK_NAMES == ("dss_svamp", "dss_cqa", "dss_esnli", "dss_anli1")
    for name in tasks.dss.TASK_NAMES:
        assert name in seqio.TaskRegistry.names()
    with pytest.raises(ValueError, match=r"unknown task 'dss_gsm8k'; registered DSS tasks: .*dss_svamp"):
        dss_tasks.get_task("dss_gsm8k")


@pytest.mark.shared_data
def test_paired_examples_are_tokenized_with_both_parts(bind, env):
    examples = _examples("dss_svamp", "test")
    assert len(examples) == 200
    ex = examples[0]
    vocabulary = vocab.from_checkpoint(env["spm"])
    assert ex["label_inputs_pretokenized"].decode().startswith("predict: ")
    assert ex["rationale_inputs_pretokenized"].decode().startswith("explain: ")
    for name in dss_paired.PAIRED_TEXT_FEATURES:
        assert ex[name].dtype == np.int32 and ex[name][-1] == 1  # EOS
        text = " ".join(ex[f"{name}_pretokenized"].decode().split())  # the vocabulary folds newlines
        assert vocabulary.decode(ex[name][:-1].tolist()) == text
    # The test split uses gold labels.
    gold = {r.id: r.label for r in dss_paper.import_split(env["data_dir"], "svamp", "test")}
    assert all(e["label_targets_pretokenized"].decode() == gold[e["id"].decode()] for e in examples)
    # Imported on first use into the cache dir.
    assert (env["cache_dir"] / "svamp_test.palm-540b.jsonl").is_file()


@pytest.mark.shared_data
def test_validation_is_carved_out_of_train_as_the_reference(bind):
    train = _examples("dss_svamp", "train")
    valid = _examples("dss_svamp", "validation")
    assert (len(train), len(valid)) == (720, 80)  # gold labels keep every record
    rest, held = sources.split_off(800, 0.1, 0)
    assert [e["id"].decode() for e in valid] == [f"svamp/train/{i}" for i in held]
    assert [e["id"].decode() for e in train] == [f"svamp/train/{i}" for i in rest]
    # Records whose completion did not parse train with an empty rationale (as the reference).
    empty = [e for e in train if e["rationale_targets_pretokenized"] == b""]
    assert 0 < len(empty) <= 13 and all(e["rationale_targets"].tolist() == [1] for e in empty)


@pytest.mark.shared_data
def test_options_from_gin_with_task_scope(bind):
    bind("dss_svamp/task_options.label_source = 'teacher'", "task_options.train_fraction = 0.5")
    train = _examples("dss_svamp", "train")
    kept = sources.subsample(800, 0.5, 0)
    rest, _ = sources.split_off(len(kept), 0.1, 0)
    ids = [f"svamp/train/{i}" for i in kept[rest]]
    records = {r.id: r for r in dss_paper.import_split(dss_options.data_locations()[0], "svamp", "train")}
    parsed_ids = [i for i in ids if records[i].samples[0].parsed]
    assert len(parsed_ids) < len(ids)
    assert [e["id"].decode() for e in train] == parsed_ids  # teacher labels: unparsed dropped
    assert all(e["label_targets_pretokenized"].decode() == records[e["id"].decode()].samples[0].label for e in train)
    # The scope only reaches svamp: cqa still trains on gold labels, at the same fraction.
    with gin.config_scope("dss_cqa"):
        cqa_options = dss_options.task_options()
    assert (cqa_options.label_source, cqa_options.train_fraction) == ("gt", 0.5)
    cqa_kept = sources.subsample(9741, 0.5, 0)
    cqa_rest, _ = sources.split_off(len(cqa_kept), 0.1, 0)
    splits = dss_tasks.CacheSplits(train=lambda: dss_tasks.paper_cache_path("cqa", "train"))
    cqa_train = splits.records("train", cqa_options)
    assert [r.position for r in cqa_train] == list(cqa_kept[cqa_rest]) and len(cqa_train) == 4383
    # Another seed, another subsample; the same seed, the same one.
    bind("task_options.train_fraction = 0.5", "task_options.seed = 1")
    other = [e["id"] for e in _examples("dss_svamp", "train")]
    assert other != [e["id"] for e in train]


def test_subsample_and_teacher_sample_choices():
    def rec(i, samples, label="L"):
        return CacheRecord(id=f"r{i}", input=f"x{i}", label=label, samples=tuple(samples))

    good, bad = TeacherSample("why", "T"), TeacherSample(None, None)
    records = [rec(0, [good, bad]), rec(1, [bad, good]), rec(2, []), rec(3, [good], label=None)]
    opts = dss_options.TaskOptions
    ex, dropped = dss_paired.training_examples(records, opts(label_source="teacher"))
    assert [e["id"] for e in ex] == ["r0", "r3"] and dropped == 2
    ex, dropped = dss_paired.training_examples(records, opts(label_source="teacher", teacher_sample="all"))
    assert [e["id"] for e in ex] == ["r0#0", "r1#1", "r3#0"] and dropped == 1
    ex, dropped = dss_paired.training_examples(records, opts(label_source="gt", teacher_sample=1))
    assert [(e["id"], e["label_targets"], e["rationale_targets"]) for e in ex] == [
        ("r0", "L", ""),
        ("r1", "L", "why"),
        ("r2", "L", ""),
    ] and dropped == 1
    ex, dropped = dss_paired.evaluation_examples(records, opts(teacher_sample="all"))
    assert [(e["id"], e["rationale_targets"]) for e in ex] == [("r0", "why"), ("r1", "why"), ("r2", "")]
    assert ex[0]["label_inputs"] == "predict: x0" and ex[0]["rationale_inputs"] == "explain: x0"
    for bad_opts in (
        dict(label_source="llm"),
        dict(teacher_sample=-1),
        dict(train_fraction=0.0),
        dict(validation_fraction=1.0),
    ):
        with pytest.raises(ValueError, match=next(iter(bad_opts))):
            opts(**bad_opts)


@pytest.mark.shared_data
def test_nli_inputs_join_premise_and_hypothesis_with_eos(bind):
    examples = _examples("dss_anli1", "sample", {**LENGTHS, "label_inputs": 2048})
    assert len(examples) == 64
    for ex in examples:
        ids = ex["label_inputs"]
        assert ids[-1] == 1 and (ids[:-1] == 1).sum() == 1  # one EOS between premise and hypothesis
        assert b"</s>" in ex["label_inputs_pretokenized"]
    with pytest.raises(Exception, match=r"anli1_train.json not found"):
        _examples("dss_anli1", "train")


def test_register_cache_task_in_a_few_lines(tmp_path):
    train, spm = write_parity_task_files(tmp_path, 20)
    task = dss_tasks.register_cache_task(
        "my_parity",
        train_cache=train,
        vocabulary=vocab.from_checkpoint(spm),
        family="cqa",
        options=dss_options.TaskOptions(),
    )
    train_ex = list(task.get_dataset(LENGTHS, split="train", shuffle=False).as_numpy_iterator())
    valid_ex = list(task.get_dataset(LENGTHS, split="validation", shuffle=False).as_numpy_iterator())
    assert (len(train_ex), len(valid_ex)) == (18, 2)
    assert {e["id"] for e in train_ex}.isdisjoint({e["id"] for e in valid_ex})
    with pytest.raises(ValueError, match="unknown split 'test'"):
        task.get_dataset(LENGTHS, split="test")
    # Through the feature converter: every example gives a label and a rationale segment.
    conv = DssFeatureConverter(pack=True)
    rows = list(seqio.get_dataset(task, LENGTHS, conv, dataset_split="train").as_numpy_iterator())
    assert conv.stats.segments == 36 and sum((r["decoder_task_ids"] == 1).sum() for r in rows) > 0
    conv0 = DssFeatureConverter(pack=True, rationale_weight=0.0)
    rows0 = list(seqio.get_dataset(task, LENGTHS, conv0, dataset_split="train").as_numpy_iterator())
    assert conv0.stats.segments == 18 and not any((r["decoder_task_ids"] == 2).any() for r in rows0)
    # A cache file that is not there is named.
    missing = dss_tasks.register_cache_task(
        "my_missing", train_cache=tmp_path / "nope.jsonl", vocabulary=vocab.from_checkpoint(spm), family="cqa"
    )
    with pytest.raises(Exception, match=r"my_missing train cache not found: .*nope.jsonl"):
        missing.get_dataset(LENGTHS, split="train")
    seqio.TaskRegistry.remove("my_parity")
    seqio.TaskRegistry.remove("my_missing")


def test_missing_data_dir_is_named(tmp_path):
    gin.clear_config()
    gin.parse_config(
        [f"data_locations.data_dir = '{tmp_path / 'no_data'}'", f"data_locations.cache_dir = '{tmp_path / 'cache'}'"]
    )
    try:
        with pytest.raises(FileNotFoundError, match=r"no_data is not a directory"):
            dss_tasks.paper_cache_path("svamp", "train")
    finally:
        gin.clear_config()


@pytest.mark.parametrize("dataset", list(sources.DATASETS))
def test_task_gin_files(dataset):

    gin.clear_config()
    try:
        path = REPO_ROOT / "gin" / "tasks" / f"{dataset}.gin"
        gin.parse_config_file(str(path))
        name = gin.query_parameter("%MIXTURE_OR_TASK_NAME")
        lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
        assert name == f"dss_{dataset}" and name in seqio.TaskRegistry.names()
        assert set(lengths) == set(DssFeatureConverter.TASK_FEATURES)
        conv = DssFeatureConverter(pack=True)  # takes the file's packed row lengths
        rows = conv.get_model_feature_lengths(lengths)
        assert rows["encoder_input_tokens"] >= max(lengths["label_inputs"], lengths["rationale_inputs"])
        assert rows["decoder_target_tokens"] >= max(lengths["label_targets"], lengths["rationale_targets"])
        assert rows["encoder_input_tokens"] == gin.query_parameter("DssFeatureConverter.pack_encoder_length")
    finally:
        gin.clear_config()


def test_a_trained_vocabulary_goes_to_the_cache_dir_not_beside_the_users_data(tmp_path, monkeypatch):
    data = tmp_path / "my_data"
    data.mkdir()
    train = data / "train.jsonl"
    with CacheWriter(train) as w:
        for i in range(60):
            w.write(
                CacheRecord(
                    id=f"t{i}",
                    input=f"Is {i} even or odd today?",
                    label=["yes", "no"][i % 2],
                    samples=(TeacherSample(f"{i} mod 2 is {i % 2}, so it is.", ["yes", "no"][i % 2]),),
                )
            )
    monkeypatch.setenv("DSS_CACHE_DIR", str(tmp_path / "cache"))
    gin.clear_config()
    v = dss_tasks.task_vocabulary(corpus_caches=[str(train)], vocab_size=400)
    assert sorted(p.name for p in data.iterdir()) == ["train.jsonl"]
    assert pathlib.Path(v.sentencepiece_model_file).parent == tmp_path / "cache" / "vocabularies"
