"""Decode-based evaluation: scores that can be recomputed from predictions.jsonl, batch-size
independence, SVAMP judged by value, checkpoint selection, and the train-loop hook."""

import json

import _eval_toy as toy
import numpy as np
import pytest

import gin
from dss_jax import checkpoints, scoring
from dss_jax.prediction import DecodeSettings
from dss_jax.scoring import decode_and_score, load_examples, score, write_outputs


@pytest.fixture(scope="module")
def env(tmp_path_factory, cpu_devices):
    return toy.toy_env(tmp_path_factory, cpu_devices)


@pytest.fixture(scope="module")
def examples(env):
    return load_examples(toy.TASK, "test", toy.LENGTHS)


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_examples_of_the_split_in_order(examples):
    assert examples.ids == [f"test/{i}" for i in range(11)]
    assert examples.family == "cqa"
    assert examples.inputs[0] == "what about a red apple?"  # without the "predict: " prefix
    assert examples.targets[3] == "maybe" and examples.targets[0] == "yes" and examples.targets[1] == "no"
    # Teacher labels come from the cache; records without a parsed sample have none.
    assert examples.teacher_labels[0] == "yes" and examples.teacher_labels[1] == "yes"  # wrong teacher
    assert examples.teacher_labels[4] is None
    assert examples.label_tokens.shape == (11, toy.LENGTHS["label_inputs"])


def test_metrics_equal_a_recomputation_from_predictions(env, examples, tmp_path):
    params = env.trained.params_by_step[60]
    result = decode_and_score(env.trained.model, params, examples, batch_size=4, output_rationale=True)
    write_outputs(result, str(tmp_path), step=60, info={"task": toy.TASK})
    rows = _read_jsonl(tmp_path / "predictions.jsonl")
    metrics = json.loads((tmp_path / "metrics.json").read_text())

    assert [r["id"] for r in rows] == examples.ids
    assert all(set(r) >= {"id", "input", "target", "prediction", "rationale", "correct"} for r in rows)
    # Independent recomputation: CQA labels are judged by exact text.
    accuracy = np.mean([r["prediction"] == r["target"] for r in rows])
    with_teacher = [r for r in rows if "teacher_label" in r]
    agreement = np.mean([r["prediction"] == r["teacher_label"] for r in with_teacher])
    assert [r["correct"] for r in rows] == [r["prediction"] == r["target"] for r in rows]
    assert metrics["accuracy"] == pytest.approx(accuracy) and metrics["num_examples"] == 11
    assert metrics["teacher_agreement"] == pytest.approx(agreement)
    assert metrics["num_teacher_labels"] == len(with_teacher) == 9
    assert metrics["step"] == 60 and metrics["task"] == toy.TASK
    # The student learned something, and the unseen "maybe" labels keep it below 1.
    assert 0.5 <= accuracy < 1.0
    assert all(isinstance(r["rationale"], str) for r in rows) and any(r["rationale"] for r in rows)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_batch_size_does_not_change_predictions(env, examples, method):
    params = env.trained.params_by_step[15]  # less sure of itself than the final step
    decode = DecodeSettings(method=method, num_beams=3)
    one = decode_and_score(env.trained.model, params, examples, batch_size=1, decode=decode)
    seven = decode_and_score(env.trained.model, params, examples, batch_size=7, decode=decode)  # last batch: 4 of 7
    assert one.records == seven.records
    drop = lambda m: {k: v for k, v in m.items() if k != "examples_per_second"}
    assert drop(one.metrics) == drop(seven.metrics)


def test_svamp_equations_are_judged_by_value_with_the_safe_evaluator():
    predictions = ["(3 + 4)", "( 2 * 3 )", "__import__('os').system('echo pwned')", "7", "", "(3 + 4"]
    targets = ["( 7.0 )"] * 6
    correct, metrics = score("svamp", predictions, targets, ["(10 - 3)", None, None, "(1 + 1)", None, None])
    assert correct == [True, False, False, True, False, False]
    assert metrics["accuracy"] == pytest.approx(2 / 6)
    # Teacher agreement over the two examples with a teacher label: (3+4)=(10-3), 7!=(1+1).
    assert metrics["teacher_agreement"] == 0.5 and metrics["teacher_accuracy"] == 0.5
    correct, metrics = score("cqa", ["bank", "Bank"], ["bank", "bank"])
    assert correct == [True, False] and "teacher_agreement" not in metrics


def test_select_checkpoints(env):
    run = str(env.trained.run_dir)
    steps = lambda s: [step for step, _ in checkpoints.select_checkpoints(run, s)]
    assert steps("latest") == [60] and steps("all") == [15, 60] and steps([15]) == [15] and steps(15) == [15]
    with pytest.raises(ValueError, match=r"no checkpoint for step\(s\) \[16\]; it has steps \[15, 60\]"):
        steps([16])
    with pytest.raises(ValueError, match="steps must be 'latest', 'all', 'best'"):
        steps("newest")
    assert checkpoints.select_checkpoints(f"{run}/checkpoint_15") == [(15, f"{run}/checkpoint_15")]
    assert checkpoints.select_checkpoints(str(env.params_dir)) == [(None, str(env.params_dir))]
    with pytest.raises(ValueError, match="needs a model dir"):
        checkpoints.select_checkpoints(str(env.params_dir), [1])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoints.select_checkpoints(f"{run}/nope")


def test_both_checkpoint_kinds_load_the_trained_params(env):
    import jax

    want = env.trained.params_by_step[15]
    for path in (f"{env.trained.run_dir}/checkpoint_15",):
        model, params, vocab_path = checkpoints.load_checkpoint(path)
        assert model.config == env.trained.config and vocab_path == str(env.trained.run_dir / "spiece.model")
        jax.tree_util.tree_map(np.testing.assert_array_equal, params, want)
    model, params, vocab_path = checkpoints.load_checkpoint(str(env.params_dir), dtype="bfloat16")
    assert model.config.dtype == "bfloat16" and vocab_path == str(env.params_dir / "spiece.model")
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, env.trained.params_by_step[60])


def test_hugging_face_dirs_load_and_run_dirs_without_config_json_do_not(env, tmp_path):
    import shutil

    import jax

    from dss_jax.model import hf_convert

    want = env.trained.params_by_step[15]
    hf_dir = hf_convert.export_hf_checkpoint(want, env.trained.config, tmp_path / "hf", vocab_path=env.spm)
    model, params, vocab_path = checkpoints.load_checkpoint(str(hf_dir))
    assert model.config.vocab_size == toy.MODEL_VOCAB and vocab_path == str(hf_dir / "spiece.model")
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, want)
    # A run checkpoint whose model dir lost config.json: refused, not guessed.
    bare = tmp_path / "bare_run" / "checkpoint_15"
    shutil.copytree(env.trained.run_dir / "checkpoint_15", bare)
    with pytest.raises(checkpoints.CheckpointNotFoundError, match="no config.json in"):
        checkpoints.load_checkpoint(str(bare))


def test_train_eval_hook_uses_the_same_code(env, examples, tmp_path):
    gin.clear_config()
    try:
        gin.parse_config(
            [
                f"make_train_eval_hook.task_name = '{toy.TASK}'",
                f"make_train_eval_hook.feature_lengths = {json.dumps(toy.LENGTHS)}",
                "make_train_eval_hook.batch_size = 4",
                "make_train_eval_hook.split = 'test'",
                f"make_train_eval_hook.output_dir = '{tmp_path}'",
            ]
        )
        hook = scoring.make_train_eval_hook(env.trained.model)
    finally:
        gin.clear_config()
    params = env.trained.params_by_step[60]
    out = hook(params=params, step=60)
    direct = decode_and_score(env.trained.model, params, examples, batch_size=4).metrics
    assert {k: v for k, v in out.items() if k != "decode/examples_per_second"} == {
        "decode/" + k: v for k, v in direct.items() if k != "examples_per_second"
    }
    assert len(_read_jsonl(tmp_path / "step_60" / "predictions.jsonl")) == 11


def test_vocabulary_larger_than_the_model_is_refused(env, examples):
    from dss_jax.model.encoder_decoder import EncoderDecoderModel

    small = EncoderDecoderModel(env.trained.config.replace(vocab_size=32))
    with pytest.raises(ValueError, match="the model only 32 embeddings"):
        decode_and_score(small, env.trained.params_by_step[60], examples)


def test_evaluate_shows_a_progress_bar_of_examples_only_when_asked(env, examples, capsys):
    params = env.trained.params_by_step[max(env.trained.params_by_step)]
    decode_and_score(env.trained.model, params, examples, batch_size=4)
    assert capsys.readouterr().err == ""
    decode_and_score(env.trained.model, params, examples, batch_size=4, output_rationale=True, progress=True)
    err = capsys.readouterr().err
    for part in ("labels", "rationales"):
        assert f"{toy.TASK} {part}: 100%" in err and "11/11" in err and "ex/s" in err, err


# -- TASK_FEATURE_LENGTHS that cut: counted where they cut, refused below the run's ----


def test_every_place_that_cuts_counts_what_it_cuts(env, caplog):
    """Shorter lengths used to cut inputs and targets silently: the train and validation
    pipelines and eval's examples now log how many examples they cut, per feature."""
    import logging

    from dss_jax import input_pipeline
    from dss_jax.data import lengths as dss_lengths

    caplog.set_level(logging.INFO)
    dss_lengths._REPORTED.clear()  # counted once per process and lengths
    short = {**toy.LENGTHS, "label_inputs": 8, "rationale_targets": 4}
    load_examples(toy.TASK, "test", short)
    assert (
        "toy_eval_yesno/test: 11 of 11 examples are longer than TASK_FEATURE_LENGTHS and are cut "
        "(label_inputs > 8: 11, rationale_targets > 4: " in caplog.text
    )
    train = dss_lengths.truncation(toy.TASK, "train", short)
    assert train.per_feature["label_inputs"] == train.examples > 0 and 0 < train.per_feature["rationale_targets"]
    caplog.clear()
    args = dict(batch_size=4, seed=0, shard_index=0, num_shards=1, start_position=0)
    next(input_pipeline.train_batches(task_name=toy.TASK, feature_lengths=short, rationale_weight=1.0, **args))
    assert train.message() in caplog.text and any(r.levelno == logging.WARNING for r in caplog.records)
    caplog.clear()  # λ = 0 trains no rationale: only the label features count
    label_only = {**toy.LENGTHS, "rationale_targets": 4}
    next(input_pipeline.train_batches(task_name=toy.TASK, feature_lengths=label_only, rationale_weight=0.0, **args))
    assert "toy_eval_yesno/train: no example is longer than TASK_FEATURE_LENGTHS" in caplog.text
    caplog.clear()
    dss_lengths._REPORTED.clear()  # the validation loss reads the split once per evaluation
    list(
        input_pipeline.eval_batches(
            task_name=toy.TASK, feature_lengths=short, batch_size=4, split="test", shard_index=0, num_shards=1
        )
    )
    list(
        input_pipeline.eval_batches(
            task_name=toy.TASK, feature_lengths=short, batch_size=4, split="test", shard_index=0, num_shards=1
        )
    )
    assert caplog.text.count("toy_eval_yesno/test: 11 of 11 examples") == 1  # once, not per evaluation


def test_lengths_shorter_than_the_run_trained_with_are_refused_unless_told(env, tmp_path, caplog):
    import logging
    import shutil

    from dss_jax import cli
    from dss_jax.data import lengths as dss_lengths
    from dss_jax.eval import evaluate_checkpoints

    run = tmp_path / "run"
    shutil.copytree(env.trained.run_dir, run)
    # As the train binary writes it (older checkpoints' metadata does not record the lengths).
    (run / "config.gin").write_text(
        "TASK_FEATURE_LENGTHS = \\\n    {'label_inputs': 24,\n     'label_targets': 6,\n"
        "     'rationale_inputs': 24,\n     'rationale_targets': 12}\nTRAIN_STEPS = 60\n"
    )
    short = {**toy.LENGTHS, "label_inputs": 8}
    out = tmp_path / "eval"
    args = dict(checkpoint_path=str(run), output_dir=str(out), task_name=toy.TASK, split="test", batch_size=4)
    with pytest.raises(cli.UserError) as e:
        evaluate_checkpoints(feature_lengths=short, **args)
    message = str(e.value)
    assert message.startswith(f"TASK_FEATURE_LENGTHS is shorter than CHECKPOINT_PATH={run} was trained with (")
    assert "label_inputs 8 < 24" in message and "--gin.evaluate_checkpoints.allow_shorter_lengths=True" in message
    assert "--gin.TASK_FEATURE_LENGTHS=\"{'label_inputs': 24, 'label_targets': 6, " in message
    assert not out.exists()
    # The rationale lengths do not matter to an evaluation that decodes no rationale.
    evaluate_checkpoints(feature_lengths={**toy.LENGTHS, "rationale_targets": 4}, **args)
    caplog.set_level(logging.INFO)
    dss_lengths._REPORTED.clear()
    told = evaluate_checkpoints(feature_lengths=short, allow_shorter_lengths=True, overwrite=True, **args)
    assert told[60]["num_examples"] == 11
    assert (
        "toy_eval_yesno/test: 11 of 11 examples are longer than TASK_FEATURE_LENGTHS and are cut (label_inputs > 8: 11)"
        in caplog.text
    )


def test_the_lengths_a_run_trained_with_are_read_from_its_checkpoint(tmp_path):
    from dss_jax.data import lengths as dss_lengths

    step = tmp_path / "run" / "checkpoint_4"
    (step / "metadata").mkdir(parents=True)
    recorded = {"settings": {"task_feature_lengths": {"label_inputs": 64, "label_targets": 8}}}
    (step / "metadata" / "metadata").write_text(json.dumps({"step": 4, **recorded}))
    (tmp_path / "run" / "config.gin").write_text("TASK_FEATURE_LENGTHS = {'label_inputs': 1}\n")
    assert dss_lengths.trained_feature_lengths(step) == (
        str(step / "metadata" / "metadata"),
        {"label_inputs": 64, "label_targets": 8},
    )
    (step / "metadata" / "metadata").write_text(json.dumps({"step": 4}))  # before settings were recorded
    assert dss_lengths.trained_feature_lengths(step) == (str(tmp_path / "run" / "config.gin"), {"label_inputs": 1})
    assert dss_lengths.trained_feature_lengths(tmp_path / "elsewhere") is None
