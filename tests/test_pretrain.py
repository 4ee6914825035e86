"""T5 span-corruption pretraining (dss_jax.data.pretrain): the noise actually produced,
sentinel placement, the task's shapes, the built-in corpus."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from dss_jax.data import pretrain, vocab

TOP = 999  # the highest id of a 1000-id vocabulary: the first sentinel


def _corrupt(tokens, corruption, seed):
    inputs, targets = pretrain.corrupt(tf.constant(tokens, tf.int32), corruption, TOP, tf.constant(seed, tf.int64))
    return inputs.numpy().tolist(), targets.numpy().tolist()


def _restore(inputs, targets):
    """The chunk rebuilt from its corrupted input and target: each sentinel of the input
    replaced by what follows the same sentinel in the target."""
    spans, current = {}, None
    for t in targets:
        if t > TOP - 100:
            current = t
            spans[current] = []
        else:
            spans[current].append(t)
    out = []
    for t in inputs:
        out += spans[t] if t > TOP - 100 else [t]
    return out


def test_counts_follow_t5s_settings():
    c = pretrain.SpanCorruption(100)
    assert (c.noise_tokens, c.spans, c.inputs_length, c.targets_length) == (15, 5, 91, 21)
    fit = pretrain.SpanCorruption.fitting(128, 32)
    assert fit.inputs_length <= 128 and fit.targets_length <= 32
    assert (
        pretrain.SpanCorruption(fit.chunk_length + 1).inputs_length > 128
        or pretrain.SpanCorruption(fit.chunk_length + 1).targets_length > 32
    )
    with pytest.raises(ValueError, match="no chunk fits"):
        pretrain.SpanCorruption.fitting(2, 2)


def test_spans_are_replaced_by_descending_sentinels_and_the_target_restores_them():
    c = pretrain.SpanCorruption(100)
    tokens = list(range(1, 101))
    inputs, targets = _corrupt(tokens, c, [3, 4])
    sentinels_in = [t for t in inputs if t > TOP - 100]
    assert sentinels_in == list(range(TOP, TOP - c.spans, -1))  # one per span, from the top down
    assert targets[0] == TOP and [t for t in targets if t > TOP - 100] == sentinels_in
    assert len(inputs) == c.inputs_length - 1 and len(targets) == c.targets_length - 1  # EOS comes later
    assert _restore(inputs, targets) == tokens
    # Spans never touch: between two sentinels of the input there is at least one token.
    positions = [i for i, t in enumerate(inputs) if t > TOP - 100]
    assert all(b - a > 1 for a, b in zip(positions, positions[1:])) and positions[0] > 0


def test_noise_density_and_span_length_produced_over_many_chunks():
    c = pretrain.SpanCorruption(200)
    noise, spans, masks = 0, 0, set()
    for seed in range(200):
        mask = pretrain.noise_mask(c, tf.constant([seed, 1], tf.int64)).numpy()
        noise += mask.sum()
        spans += int((mask[1:] & ~mask[:-1]).sum())
        masks.add(mask.tobytes())
    assert noise / (200 * 200) == pytest.approx(0.15, abs=0.001)
    assert noise / spans == pytest.approx(3.0, abs=0.05)
    assert len(masks) == 200  # the seed decides the spans
    same = pretrain.noise_mask(c, tf.constant([7, 1], tf.int64)).numpy()
    np.testing.assert_array_equal(same, pretrain.noise_mask(c, tf.constant([7, 1], tf.int64)).numpy())


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrain")
    lines = [f"Ann has {i} apples and buys {i + 3} more apples at the market today." for i in range(300)]
    (tmp / "text.txt").write_text("\n".join(lines) + "\n")
    spm = vocab.train_vocabulary(lines, tmp / "v.model", vocab.VocabSettings(vocab_size=400))
    vocabulary = seqio.SentencePieceVocabulary(str(spm), extra_ids=20)
    t = pretrain.register_span_corruption_task(
        "pretrain_toy", [tmp / "text.txt"], vocabulary, inputs_length=64, targets_length=24
    )
    yield t, vocabulary
    seqio.TaskRegistry.remove("pretrain_toy")


LENGTHS = {"label_inputs": 64, "label_targets": 24, "rationale_inputs": 8, "rationale_targets": 8}


def test_the_task_yields_fitting_corrupted_chunks_with_sentinels_from_the_extra_ids(task):
    t, vocabulary = task
    examples = list(t.get_dataset(LENGTHS, split="train", shuffle=False).take(50).as_numpy_iterator())
    c = pretrain.SpanCorruption.fitting(64, 24)
    base = vocabulary.vocab_size - vocabulary.extra_ids  # the first sentinel-free id above the pieces
    for ex in examples:
        assert len(ex["label_inputs"]) == c.inputs_length and ex["label_inputs"][-1] == vocabulary.eos_id
        assert len(ex["label_targets"]) == c.targets_length and ex["label_targets"][-1] == vocabulary.eos_id
        assert ex["label_targets"][0] == vocabulary.vocab_size - 1
        assert sum(t >= base for t in ex["label_inputs"]) == c.spans
        assert len(ex["rationale_inputs"]) == len(ex["rationale_targets"]) == 0
    # Noise actually produced: the target's non-sentinel, non-EOS tokens over the chunk.
    noise = np.mean([(len(ex["label_targets"]) - c.spans - 1) / c.chunk_length for ex in examples])
    assert noise == pytest.approx(0.15, abs=0.02)
    # The text decodes back: the input without sentinels is the text, minus the spans.
    restored = []
    for ex in examples[:3]:
        ids = [int(i) for i in ex["label_inputs"][:-1] if i < base]
        restored.append(vocabulary.decode(ids))
    assert all("apples" in r or "market" in r for r in restored)
    # The shuffled stream depends on the seed, and is the same for the same seed.
    a = [
        tuple(e["label_inputs"])
        for e in t.get_dataset(LENGTHS, split="train", shuffle=True, seed=1).take(5).as_numpy_iterator()
    ]
    b = [
        tuple(e["label_inputs"])
        for e in t.get_dataset(LENGTHS, split="train", shuffle=True, seed=1).take(5).as_numpy_iterator()
    ]
    assert a == b


def test_the_causal_lm_task_cuts_the_token_stream_into_chunks_a_decoder_only_row_predicts(task, tmp_path):
    from dss_jax.data.packing import convert_numpy

    _, vocabulary = task
    lines = [f"Bo has {i} pens." for i in range(40)]
    (tmp_path / "text.txt").write_text("\n".join(lines) + "\n")
    t = pretrain.register_causal_lm_task("causal_toy", [tmp_path / "text.txt"], vocabulary, length=16)
    try:
        lengths = {"label_inputs": 1, "label_targets": 15, "rationale_inputs": 8, "rationale_targets": 8}
        ds = t.get_dataset(lengths, split="train", shuffle=False, use_cached=False)
        chunks = [np.concatenate([ex["label_inputs"], ex["label_targets"]]) for ex in ds.as_numpy_iterator()]
    finally:
        seqio.TaskRegistry.remove("causal_toy")
    stream = [i for line in lines for i in vocabulary.encode(line) + [vocabulary.eos_id]]
    assert all(len(c) == 16 for c in chunks) and len(chunks) == len(stream) // 16
    assert np.concatenate(chunks).tolist() == stream[: 16 * len(chunks)]  # nothing added, dropped or reordered
    examples = [{"label_inputs": c[:1], "label_targets": c[1:], "rationale_inputs": [], "rationale_targets": []}
                for c in chunks[:3]]  # fmt: skip
    rows = convert_numpy(examples, lengths, rationale_weight=0.0, layout="decoder_only")
    assert rows["decoder_input_tokens"].shape == (3, 15)  # one chunk per row, every token but the first predicted
    np.testing.assert_array_equal(rows["decoder_target_tokens"], np.stack(chunks[:3])[:, 1:])
    assert rows["decoder_loss_weights"].all()


def test_too_few_sentinels_is_an_error_naming_extra_ids(tmp_path):
    lines = [f"word {i} and more words here" for i in range(200)]
    (tmp_path / "t.txt").write_text("\n".join(lines) + "\n")
    spm = vocab.train_vocabulary(lines, tmp_path / "v.model", vocab.VocabSettings(vocab_size=400))
    t = pretrain.register_span_corruption_task(
        "pretrain_few",
        [tmp_path / "t.txt"],
        seqio.SentencePieceVocabulary(str(spm), extra_ids=2),
        inputs_length=64,
        targets_length=24,
    )
    try:
        with pytest.raises(ValueError, match="extra ids"):
            next(t.get_dataset(LENGTHS, split="train", shuffle=False).as_numpy_iterator())
    finally:
        seqio.TaskRegistry.remove("pretrain_few")


def test_the_built_in_corpus_leaves_out_the_evaluated_problems_and_has_no_answers(tmp_path):
    from dss_jax.data import synthetic

    config = synthetic.SyntheticConfig(train_size=50, validation_size=20, test_size=30, max_operations=2, max_number=20)
    evaluated = synthetic.generate_problems(config)
    test_texts = [p.text for p in evaluated["test"] + evaluated["validation"]]
    docs = pretrain.corpus_documents(2000, seed=1, exclude=test_texts)
    problems = docs[:2000]
    assert len(set(problems)) == len(problems) > 1900
    assert not {t.replace("\n", " ") for t in test_texts} & set(problems)
    assert not any("answer" in d.lower() for d in problems)
    assert len(docs) > len(problems)  # the documentation's prose comes after
    import gin

    with gin.unlock_config():
        gin.bind_parameter("synthetic_corpus_config.problems", 1500)
    try:
        path, description = pretrain.write_synthetic_corpus(tmp_path, exclude_config=config)
    finally:
        gin.clear_config()
    lines = path.read_text().splitlines()
    assert path.parent == tmp_path / "pretrain" and description["documents"] == len(lines) > 1500
    assert description["words"] == len(" ".join(lines).split()) and description["problems"] == 1500


def test_pretrain_then_distill_step_by_step_from_its_checkpoint(tmp_path):
    """runs/pretrain.gin trains the built-in span-corruption task with the train binary;
    a DSS run on dss_synthetic then starts from its checkpoint and tokenizes with the
    pretrained vocabulary (the checkpoint's spiece.model)."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "DSS_CACHE_DIR": str(tmp_path / "cache"),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
    }
    small = [
        "--gin.synthetic_config.train_size=200",
        "--gin.synthetic_config.validation_size=20",
        "--gin.synthetic_config.test_size=20",
        "--gin.synthetic_config.max_operations=2",
        *[
            f"--gin.T5Config.{field}={value}"
            for field, value in dict(
                vocab_size=640, d_model=32, d_ff=64, num_heads=2, d_kv=16, num_encoder_layers=1, num_decoder_layers=1
            ).items()
        ],
        "--gin.BATCH_SIZE=4",
        "--gin.train.log_period=1",
    ]

    def train(*args):
        r = subprocess.run(
            [sys.executable, "-m", "dss_jax.train", *args, *small],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-3000:]

    pre = tmp_path / "pretrained"
    train(
        "--gin_file=runs/pretrain.gin",
        "--gin_file=tasks/synthetic_pretrain.gin",
        "--gin_file=models/tiny.gin",
        f"--gin.MODEL_DIR='{pre}'",
        "--gin.TRAIN_STEPS=1",
        "--gin.synthetic_corpus_config.problems=400",
        "--gin.pretrain_vocabulary.vocab_size=600",
        "--gin.pretrain_vocabulary.extra_ids=40",
    )
    record = json.loads((pre / "train" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["label/tokens"] > 0 and record.get("rationale/tokens", 0) == 0
    run = tmp_path / "dss"
    train(
        "--gin_file=runs/train.gin",
        "--gin_file=tasks/synthetic.gin",
        "--gin_file=models/tiny.gin",
        f"--gin.MODEL_DIR='{run}'",
        "--gin.TRAIN_STEPS=1",
        "--gin.EVAL_PERIOD=0",
        f"--gin.INITIAL_CHECKPOINT_PATH='{pre}'",  # a run's MODEL_DIR: its latest checkpoint
        "--gin.TASK_FEATURE_LENGTHS={'label_inputs': 128, 'label_targets': 40, 'rationale_inputs': 128, "
        "'rationale_targets': 128}",
    )
    assert (run / "spiece.model").read_bytes() == (pre / "spiece.model").read_bytes()
    record = json.loads((run / "train" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["label/tokens"] > 0 and record["rationale/tokens"] > 0
