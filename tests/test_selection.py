"""Checkpoint selection on validation: early stopping with a patience, the checkpoints that
were the best when evaluated kept, the examples and real tokens trained on recorded with
every evaluation, a resume that keeps all of it, and STEPS='best' in eval."""

import json
import os

import numpy as np
import pytest
from test_train_faults import _args, compilation_cache, model, toy_task  # noqa: F401 (fixtures)
from test_trainer import packed_batch

from dss_jax import checkpoints, settings
from dss_jax.training import loop, selection

# Validation accuracy the scripted hook reports at each evaluated step.
SCRIPT = {2: 0.1, 4: 0.3, 6: 0.2, 8: 0.3, 10: 0.25, 12: 0.9, 14: 0.95}


class ScriptedHook:
    """A decode eval hook whose accuracy is SCRIPT[step]; counts its calls per step."""

    model = "own"  # not None: the loop does not hand it a model

    def __init__(self, script=SCRIPT):
        self.script, self.calls = script, []

    def __call__(self, *, params, step):
        self.calls.append(step)
        return {"decode/accuracy": self.script[step]}


def eval_batches(**_):
    yield packed_batch(np.random.default_rng(0), batch=8)


def train(model_dir, steps, hook=None, **kw):
    args = {**_args(model_dir, steps), "checkpoint_period": 100, "keep_checkpoints": 1, "eval_period": 2}
    return loop.train(model(), **{**args, "eval_hook": hook or ScriptedHook(), "eval_batches_fn": eval_batches, **kw})


def validation_records(model_dir):
    with open(os.path.join(model_dir, "validation", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_early_stopping_stops_after_patience_and_keeps_the_best_checkpoints(tmp_path, caplog):
    run = tmp_path / "run"
    train(run, 14, keep_best_checkpoints=True, early_stopping_patience=3)
    # Best at step 4 (0.3); 6, 8 (a tie is no better) and 10 bring nothing new: stop at 10.
    assert [r["step"] for r in validation_records(run)] == [2, 4, 6, 8, 10]
    assert checkpoints.checkpoint_steps(str(run)) == [2, 4, 10]  # the two bests so far and the latest
    assert json.loads((run / "train" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 10
    records = validation_records(run)
    examples = [r[selection.SEEN_EXAMPLES] for r in records]
    tokens = [r[selection.SEEN_TOKENS] for r in records]
    assert examples == sorted(examples) and examples[0] > 0 and tokens == sorted(tokens) and tokens[0] > 0
    assert checkpoints.select_checkpoints(str(run), "best") == [(4, checkpoints.step_dir(str(run), 4))]

    # Run again as it was: nothing is trained and nothing evaluated again.
    caplog.set_level("INFO")
    again = ScriptedHook()
    train(run, 14, hook=again, keep_best_checkpoints=True, early_stopping_patience=3)
    assert again.calls == [] and "nothing left to train" in caplog.text
    assert [r["step"] for r in validation_records(run)] == [2, 4, 6, 8, 10]

    # A longer patience trains on from step 10; the counts continue where they were.
    train(run, 14, keep_best_checkpoints=True, early_stopping_patience=5)
    records = validation_records(run)
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10, 12, 14]
    assert records[5][selection.SEEN_EXAMPLES] > records[4][selection.SEEN_EXAMPLES]
    assert checkpoints.checkpoint_steps(str(run)) == [2, 4, 12, 14]
    assert checkpoints.select_checkpoints(str(run), "best")[0][0] == 14


def test_the_best_within_a_budget_of_steps_examples_or_tokens():
    evals = [selection.Evaluation(s, v, 16.0 * s, 100.0 * s) for s, v in sorted(SCRIPT.items())]
    assert selection.best_evaluation(evals).step == 14
    assert selection.best_evaluation(evals, max_steps=11).step == 4  # the tie at 8 does not replace 4
    assert selection.best_evaluation(evals, max_examples=16 * 12).step == 12
    assert selection.best_evaluation(evals, max_real_tokens=399).step == 2
    assert selection.best_evaluation(evals, max_real_tokens=100) is None
    assert selection.best_evaluation(evals, "min").step == 2
    nan_first = [selection.Evaluation(2, float("nan"), 1, 1), *evals[1:]]
    assert selection.best_evaluation(nan_first, max_steps=4).step == 4


def test_a_run_stopped_between_a_save_and_its_evaluation_evaluates_that_step_on_resume(tmp_path):
    run = tmp_path / "run"
    train(run, 6, keep_best_checkpoints=True)
    lines = (run / "validation" / "metrics.jsonl").read_text().splitlines()
    (run / "validation" / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # step 6's evaluation lost
    hook = ScriptedHook()
    train(run, 8, hook=hook, keep_best_checkpoints=True)
    assert hook.calls == [6, 8]
    assert [r["step"] for r in validation_records(run)] == [2, 4, 6, 8]


@pytest.mark.parametrize(
    "kw, named",
    [
        ({"eval_period": 0, "early_stopping_patience": 2}, "EVAL_PERIOD"),
        ({"eval_period": 0, "keep_best_checkpoints": True}, "EVAL_PERIOD"),
        ({"eval_hook": None, "keep_best_checkpoints": True}, "train.eval_hook"),
        ({"early_stopping_patience": 0}, "train.early_stopping_patience"),
        ({"validation_mode": "highest", "keep_best_checkpoints": True}, "train.validation_mode"),
    ],
)
def test_a_selection_that_cannot_work_is_named_before_anything_is_written(tmp_path, kw, named):
    run = tmp_path / "run"
    args = {**_args(run, 4), "eval_period": 2, "eval_hook": ScriptedHook(), "eval_batches_fn": eval_batches, **kw}
    with pytest.raises(settings.SettingError, match=named):
        loop.train(model(), **args)
    assert not run.exists()


def test_a_metric_the_evaluation_does_not_give_is_named(tmp_path):
    with pytest.raises(settings.SettingError, match="decode/acc.*decode/accuracy"):
        train(tmp_path / "run", 4, keep_best_checkpoints=True, validation_metric="decode/acc")


def test_a_resume_selecting_on_another_metric_is_refused(tmp_path):
    run = tmp_path / "run"
    train(run, 2, keep_best_checkpoints=True)
    with pytest.raises(settings.SettingError, match="selects checkpoints on max decode/accuracy"):
        train(run, 4, keep_best_checkpoints=True, validation_metric="label/loss", validation_mode="min")


def test_best_names_a_checkpoint_that_was_not_kept(tmp_path):
    run = tmp_path / "run"
    train(run, 6)  # evaluations at 2, 4, 6; only the latest checkpoint kept
    with pytest.raises(checkpoints.CheckpointError, match="is step 4, which was not kept"):
        checkpoints.select_checkpoints(str(run), "best")
