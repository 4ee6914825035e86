"""The training loop under faults, in-process on a tiny model: nothing lost, nothing
silently wrong. A non-finite loss right after a checkpoint, a second trainer on the same
MODEL_DIR, a checkpoint that cannot be written, a resumed run's metrics, bad settings."""

import dataclasses
import errno
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from test_trainer import VOCAB, packed_batch

from dss_jax import checkpoints, cli, losses, metrics_writer, optimizers, settings
from dss_jax.model.config import T5Config
from dss_jax.model.encoder_decoder import EncoderDecoderModel
from dss_jax.training import loop

TASK = "train_faults_toy"
LENGTHS = {"label_inputs": 16, "label_targets": 12, "rationale_inputs": 16, "rationale_targets": 12}
POISON = VOCAB - 1  # an encoder token in the (always padding) last column: the model's loss turns NaN


@dataclasses.dataclass(frozen=True)
class PoisonableT5(EncoderDecoderModel):
    """T5 tiny whose logits are NaN for a batch carrying the POISON token."""

    def logits(self, params, batch, **kwargs):
        logits = super().logits(params, batch, **kwargs)
        return jnp.where(jnp.any(batch["encoder_input_tokens"][:, -1] == POISON), jnp.nan, logits)


def model():
    return PoisonableT5(T5Config.preset("tiny", "t5.1.1", vocab_size=VOCAB, dropout_rate=0.0))


def batches(poisoned=()):
    """Deterministic batches by input position, like the real pipeline (resumes match)."""

    def batches_fn(*, start_position, batch_size, **_):
        position = start_position
        while True:
            b = packed_batch(np.random.default_rng(position), batch=batch_size)
            if position in poisoned:
                b["encoder_input_tokens"][0, -1] = POISON
            yield b
            position += 1

    return batches_fn


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Every run builds its own Trainer; the step it compiles is the same program each time."""
    import jax

    before = {
        k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    }
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield
    for k, v in before.items():
        jax.config.update(k, v)


@pytest.fixture(scope="module", autouse=True)
def toy_task(tmp_path_factory):
    import seqio

    from dss_jax.data import tasks as dss_tasks

    dss_tasks.register_cache_task(
        TASK,
        train_cache=tmp_path_factory.mktemp("cache") / "unused.jsonl",
        vocabulary=seqio.PassThroughVocabulary(size=VOCAB),
        family="cqa",
    )


def _args(model_dir, steps, poisoned=()):
    return dict(
        model_dir=str(model_dir),
        task_name=TASK,
        task_feature_lengths=LENGTHS,
        train_steps=steps,
        batch_size=8,
        checkpoint_period=2,
        log_period=1,
        eval_period=0,
        batches_fn=batches(poisoned),
    )


def train(model_dir, steps, poisoned=(), student=None, **kw):
    return loop.train(student or model(), **{**_args(model_dir, steps, poisoned), **kw})


def metric_steps(model_dir):
    with open(os.path.join(model_dir, "train", "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


def one_line_report(capsys, fn):
    """What the binary prints for what `fn` raises: (exit code, stderr)."""
    with pytest.raises(SystemExit) as e:
        cli.guard(fn, "train")()
    err = capsys.readouterr().err
    return e.value.code, err


# -- item 7: a non-finite loss right after a checkpoint ------------------------------


def test_nonfinite_loss_right_after_a_checkpoint_names_the_step(tmp_path, capsys):
    # Step 3 (input position 2) is non-finite; step 2 was just checkpointed.
    code, err = one_line_report(capsys, lambda: train(tmp_path / "run", 4, poisoned={2}))
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("train: error: non-finite loss or gradients at step 3"), err[-2000:]
    assert "checkpoint_2" in last
    assert checkpoints.checkpoint_steps(str(tmp_path / "run")) == [2]
    assert not (tmp_path / "run" / checkpoints.LOCK_NAME).exists()  # released on the error path


# -- issue 30 item 7: a damaged checkpoint is not resumed from ------------------------


def test_a_resume_refuses_a_damaged_checkpoint_and_resumes_from_the_one_before_once_it_is_moved_aside(tmp_path, capsys):
    from test_checkpoint_faults import _flip_a_bit_of_a_parameter

    run = tmp_path / "run"
    train(run, 4)  # checkpoints at steps 2 and 4
    damaged = run / "checkpoint_4"
    _flip_a_bit_of_a_parameter(damaged)
    metrics = (run / "train" / "metrics.jsonl").read_text()
    code, err = one_line_report(capsys, lambda: train(run, 6))
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert re.fullmatch(
        rf"train: error: {damaged} is damaged: the checksum of the parameter params/encoder/layers_0/mlp/wo/kernel "
        rf"differs from the one recorded when it was saved \({damaged}/metadata/metadata\): resuming would train on "
        rf"from damaged weights; move it aside \(mv {damaged} {damaged}\.damaged\) and rerun to resume from "
        r"checkpoint_2, the step before it",
        err.strip().splitlines()[-1],
    ), err[-2000:]
    assert checkpoints.checkpoint_steps(str(run)) == [2, 4] and (run / "train" / "metrics.jsonl").read_text() == metrics
    damaged.rename(run / "checkpoint_4.damaged")  # as the message says
    train(run, 6)
    assert checkpoints.checkpoint_steps(str(run)) == [2, 4, 6] and metric_steps(run) == [1, 2, 3, 4, 5, 6]
    assert (run / "checkpoint_4.damaged" / "state").is_dir()  # kept for a look


# -- item 8: one trainer per run directory -------------------------------------------


def test_a_second_trainer_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    holder = checkpoints.RunLock(str(run)).acquire()
    try:
        with pytest.raises(checkpoints.RunLockedError) as e:
            train(run, 2)
        message = cli.error_line("train", e.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()} since " in message and "\n" not in message
        assert os.listdir(run) == [checkpoints.LOCK_NAME]  # nothing of the second trainer
    finally:
        holder.release()
    assert not run.exists()  # the lock made the folder; released, nothing is left
    checkpoints.RunLock(str(run)).acquire().release()  # free again


def test_a_dead_trainers_lock_on_this_host_is_taken_over_with_a_warning(tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock_file = tmp_path / checkpoints.LOCK_NAME
    for pid, host, taken in ((gone.pid, socket.gethostname(), True), (os.getpid(), "another-host", False)):
        lock_file.write_text(json.dumps({"pid": pid, "host": host, "since": "2026-01-01T00:00:00+00:00"}))
        if taken:
            lock = checkpoints.RunLock(str(tmp_path)).acquire()
            assert json.loads(lock_file.read_text())["pid"] == os.getpid()
            assert any("took over" in r.getMessage() and str(pid) in r.getMessage() for r in caplog.records)
            lock.release()
        else:  # another host's process cannot be checked from here: refused, with the file to delete
            with pytest.raises(checkpoints.RunLockedError, match=f"another-host.*delete {lock_file}"):
                checkpoints.RunLock(str(tmp_path)).acquire()
    assert lock_file.exists()  # the other host's lock is left alone


# -- item 9: a checkpoint that cannot be written ---------------------------------------


def test_full_disk_during_a_save_ends_in_one_line_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_save = checkpoints.run.ocp.CheckpointManager.save

    def save_until_the_disk_is_full(self, step, *args, **kwargs):
        if step == 4:  # the last save of the run below
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run / "checkpoint_4"))
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(checkpoints.run.ocp.CheckpointManager, "save", save_until_the_disk_is_full)
    code, err = one_line_report(capsys, lambda: train(run, 4))
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("train: error: could not write the checkpoint"), err[-2000:]
    assert str(run / "checkpoint_4") in last and "No space left on device" in last
    assert "checkpoint_2" in last and "resume from step 2" in last
    monkeypatch.undo()  # space freed
    train(run, 4)
    assert checkpoints.checkpoint_steps(str(run)) == [2, 4]
    assert metric_steps(run) == [1, 2, 3, 4]


def test_a_failed_background_write_is_one_error_without_orbax_tracebacks(tmp_path, capfd):
    """A real failed write (the file size limit stands in for a full disk) in orbax's
    asynchronous save: one CheckpointWriteError at wait(), the earlier checkpoint intact."""
    ckpt = checkpoints.RunCheckpointer(str(tmp_path), asynchronous=True)
    ckpt.save(1, {"w": np.ones(4, np.float32)}, {"step": 1})
    ckpt.wait()
    big = {"w": np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)}  # 4 MB, incompressible
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, limits[1]))
    try:
        with pytest.raises(checkpoints.CheckpointWriteError) as e:
            ckpt.save(2, big, {"step": 2})
            ckpt.wait()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    ckpt.close()
    message = str(e.value)
    assert "checkpoint_2" in message and "File too large" in message and "checkpoint_1" in message
    assert "\n" not in message
    assert "Traceback" not in capfd.readouterr().err
    restored, meta = checkpoints.RunCheckpointer(str(tmp_path)).restore(1, None)
    assert meta["step"] == 1


def test_a_failed_background_write_is_reported_as_its_own_step(tmp_path):
    """The asynchronous save of checkpoint_3 fails; orbax raises it from the next save, and
    it used to be reported as a failure to write checkpoint_6."""
    ckpt = checkpoints.RunCheckpointer(str(tmp_path), asynchronous=True)
    ckpt.save(1, {"w": np.ones(4, np.float32)}, {"step": 1})
    ckpt.wait()
    big = {"w": np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)}  # 4 MB, incompressible
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, limits[1]))
    try:
        ckpt.save(3, big, {"step": 3})
        with pytest.raises(checkpoints.CheckpointWriteError) as e:
            ckpt.save(6, {"w": np.ones(4, np.float32)}, {"step": 6})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    ckpt.close()
    assert str(e.value).startswith(f"could not write the checkpoint {tmp_path / 'checkpoint_3'} (File too large")
    assert "checkpoint_6" not in str(e.value)


def test_a_checkpoint_its_run_deleted_is_not_called_damaged(tmp_path, monkeypatch):
    """A run keeps only its latest checkpoints: one chosen (eval STEPS='all') and then
    deleted by the run still training used to be reported as incomplete or damaged."""
    import shutil

    run = tmp_path / "run"
    train(run, 4)  # checkpoint_2, checkpoint_4
    real = checkpoints.params.ocp.PyTreeCheckpointer.metadata

    def pruned_while_read(self, directory, *args, **kwargs):
        shutil.rmtree(run / "checkpoint_2")  # the run's save of a later step removes it
        return real(self, directory, *args, **kwargs)

    monkeypatch.setattr(checkpoints.params.ocp.PyTreeCheckpointer, "metadata", pruned_while_read)
    with pytest.raises(checkpoints.CheckpointNotFoundError) as e:
        checkpoints.load_params(run / "checkpoint_2")
    assert str(e.value).startswith(f"{run / 'checkpoint_2'} was deleted while it was being read: its run keeps")
    assert "damaged" not in str(e.value) and "[4]" in str(e.value)
    monkeypatch.undo()
    with pytest.raises(checkpoints.CheckpointNotFoundError, match=r"checkpoint_2 does not exist \(any more: "):
        checkpoints.load_params(run / "checkpoint_2")
    with pytest.raises(checkpoints.CheckpointNotFoundError, match=r"checkpoint_7 does not exist$"):
        checkpoints.load_params(run / "checkpoint_7")  # no later step: a step it never had


# -- item 10: one value per step after a resume ----------------------------------------


def test_a_resumed_run_has_one_metrics_record_and_one_tensorboard_value_per_step(tmp_path):
    import shutil

    from tensorboard.backend.event_processing import event_accumulator

    run = tmp_path / "run"
    train(run, 3)  # checkpoints 2 and 3, metrics of steps 1-3
    shutil.rmtree(run / "checkpoint_3")  # as if killed after logging step 3, before saving it
    with open(run / "train" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 1.')  # and a torn line from the kill
    train(run, 4)
    assert metric_steps(run) == [1, 2, 3, 4]
    tb = event_accumulator.EventAccumulator(str(run / "train"), purge_orphaned_data=True)
    tb.Reload()
    assert [e.step for e in tb.Scalars("loss")] == [1, 2, 3, 4]
    with open(run / "train" / "metrics.jsonl") as f:
        logged = {r["step"]: r["loss"] for r in map(json.loads, f)}
    assert [e.value for e in tb.Scalars("loss")] == pytest.approx([logged[s] for s in (1, 2, 3, 4)])


def test_superseded_metrics_are_dropped_by_replacing_the_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    original = "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6))
    path.write_text(original)

    def crash(*_):
        raise OSError(errno.EIO, "crash while renaming")

    monkeypatch.setattr(metrics_writer.os, "replace", crash)
    with pytest.raises(OSError):
        metrics_writer.drop_records_after(str(path), 3)
    assert path.read_text() == original and os.listdir(tmp_path) == ["metrics.jsonl"]
    monkeypatch.undo()
    assert metrics_writer.drop_records_after(str(path), 3) == 2
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


# -- item 12: every setting checked before anything is written ----------------------------


@pytest.mark.parametrize(
    "setting, value, named",
    [
        ("batch_size", -8, "train.batch_size"),
        ("train_steps", "ten", "train.train_steps"),
        ("train_steps", True, "train.train_steps"),
        ("checkpoint_period", 0, "train.checkpoint_period"),
        ("log_period", 2.5, "train.log_period"),
        ("eval_period", -1, "train.eval_period"),
        ("keep_checkpoints", 0, "train.keep_checkpoints"),
        ("num_microbatches", 3, "num_microbatches"),
        ("task_feature_lengths", {"label_inputs": -1}, "train.task_feature_lengths"),
        ("dropout_rng", "philox", "train.dropout_rng"),
        ("task_name", "no_such_task", "MIXTURE_OR_TASK_NAME"),
    ],
)
def test_a_bad_setting_is_named_before_anything_is_written(tmp_path, setting, value, named):
    with pytest.raises(cli.UserError) as e:
        train(tmp_path / "run", 2, **{setting: value})
    line = cli.error_line("train", e.value)
    assert named in line and "\n" not in line
    assert not (tmp_path / "run").exists()


def test_bad_paths_are_named_before_anything_is_written(tmp_path):
    (tmp_path / "file").write_text("mine")
    for model_dir in (tmp_path / "file", tmp_path / "file" / "run"):
        with pytest.raises(cli.UserError, match="MODEL_DIR"):
            train(model_dir, 2)
    with pytest.raises(cli.UserError, match="INITIAL_CHECKPOINT_PATH .*nope"):
        train(tmp_path / "run", 2, initial_checkpoint_path=str(tmp_path / "nope"))
    assert sorted(os.listdir(tmp_path)) == ["file"] and (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize(
    "field, value",
    [
        ("learning_rate", "1e-3"),
        ("learning_rate", -1.0),
        ("warmup_steps", -5),
        ("b2", 1.0),
        ("name", "sgd"),
        ("decay_steps", 0.5),
    ],
)
def test_optimizer_settings_are_checked(field, value):
    with pytest.raises(settings.SettingError, match=f"OptimizerConfig.{field}"):
        optimizers.OptimizerConfig(**{field: value})


# -- #17: progress on time, the run's task options, the initial checkpoint's vocabulary -


def test_progress_is_shown_on_time_between_log_periods(tmp_path, capsys, caplog):
    import logging

    caplog.set_level(logging.INFO)
    train(tmp_path / "quiet", 3, log_period=100)
    assert [line.split(" |")[0] for line in capsys.readouterr().err.splitlines() if line.startswith("step ")] == [
        "step 3/3"
    ]  # the end only: log_period 100, and these steps take less than 30 s
    train(tmp_path / "timed", 3, log_period=100, progress_seconds=0)
    assert [line.split(" |")[0] for line in capsys.readouterr().err.splitlines() if line.startswith("step ")] == [
        "step 1/3",
        "step 2/3",
        "step 3/3",
    ]
    assert f"step 2: checkpoint -> {tmp_path / 'timed' / 'checkpoint_2'}" in caplog.text
    assert f"in {tmp_path / 'timed'}" in caplog.text  # where the run's outputs go


def test_a_run_records_its_task_options_and_refuses_a_resume_with_others(tmp_path):
    import gin

    run = tmp_path / "run"
    train(run, 2)
    recorded = json.loads((run / "task.json").read_text())
    assert recorded["task"] == TASK and recorded["options"]["label_target"] == "label"
    gin.parse_config(f"{TASK}/task_options.label_target = 'rationale_then_label'")
    try:
        with pytest.raises(
            settings.SettingError, match=r"label_target='label'.*now .*label_target='rationale_then_label'"
        ):
            train(run, 3)
    finally:
        gin.clear_config()
    assert checkpoints.checkpoint_steps(str(run)) == [2]
    assert json.loads((run / "task.json").read_text()) == recorded


@pytest.mark.parametrize(
    "binding, named",
    [
        (f"{TASK}/task_options.train_fraction = 0.0", "task_options.train_fraction must be in (0, 1], got 0.0"),
        (f"{TASK}/task_options.label_source = 'teachers'", "task_options.label_source must be one of"),
    ],
)
def test_a_task_option_it_cannot_take_is_named_before_anything_is_written(tmp_path, binding, named):
    import gin

    gin.parse_config(binding)  # scoped to the task: what the binary's own check does not read
    try:
        with pytest.raises(settings.SettingError) as e:
            train(tmp_path / "run", 2)
    finally:
        gin.clear_config()
    assert named in str(e.value) and f"--gin.{TASK}/task_options." in str(e.value)
    assert not (tmp_path / "run").exists()


def _cache_task(tmp_path, name, records):
    """A task over a train cache of `records` (the validation split carved out of it)."""
    import seqio

    from dss_jax.data import tasks as dss_tasks
    from dss_jax.data.cache import CacheWriter

    path = tmp_path / f"{name}.jsonl"
    with CacheWriter(path, fsync=False) as w:
        w.write_all(records)
    dss_tasks.register_cache_task(
        name, train_cache=path, vocabulary=seqio.PassThroughVocabulary(size=VOCAB), family="cqa"
    )
    return name


def test_dss_without_any_rationale_is_refused_before_anything_is_written(tmp_path):
    """Records with no usable teacher sample (annotate --keep=correct against a wrong
    teacher) used to train the explain: task on empty targets, silently; with
    LABEL_SOURCE='teacher' the empty task was a traceback from inside tf.data."""

    import _eval_toy as toy

    import gin
    from dss_jax import input_pipeline

    records = [dataclasses.replace(toy._record(i, "train"), samples=()) for i in range(30)]
    task = _cache_task(tmp_path, "no_rationales_toy", records)
    real = dict(task_name=task, batches_fn=input_pipeline.train_batches)
    with pytest.raises(settings.SettingError) as e:
        train(tmp_path / "run", 2, **real)
    assert re.match(
        r"RATIONALE_WEIGHT \(LossConfig.rationale_weight\) is 1.0, but none of the 27 training examples of "
        r"'no_rationales_toy' has a teacher rationale .*--gin.RATIONALE_WEIGHT=0",
        str(e.value),
    ), e.value
    gin.parse_config(f"{task}/task_options.label_source = 'teacher'")
    try:
        with pytest.raises(settings.SettingError) as e:
            train(tmp_path / "run", 2, **real, loss_config=losses.LossConfig(rationale_weight=0.0))
    finally:
        gin.clear_config()
    assert str(e.value).startswith(
        "MIXTURE_OR_TASK_NAME 'no_rationales_toy' has no training examples: none of its 27 train records has a "
        "parsed teacher sample"
    ) and "--gin.LABEL_SOURCE=" in str(e.value)
    assert not (tmp_path / "run").exists()


def test_the_training_examples_with_a_rationale_are_counted_at_the_start(tmp_path, caplog):
    import logging

    import _eval_toy as toy

    from dss_jax.data import tasks as dss_tasks
    from dss_jax.training import checks

    caplog.set_level(logging.INFO)
    some = _cache_task(tmp_path, "some_rationales_toy", [toy._record(i, "train") for i in range(30)])
    checks.check_training_examples(some, 1.0)
    # 27 train records after the validation carve-out; every 5th has no teacher sample.
    (info,) = [r.getMessage() for r in caplog.records if "training examples from" in r.getMessage()]
    with_rationale = sum(bool(r.samples) for r in dss_tasks.split_records(some, "train"))
    assert 0 < with_rationale < 27
    assert info == (
        "some_rationales_toy/train: 27 training examples from 27 records (0 left out: no usable label or teacher "
        f"sample), {with_rationale} of them with a teacher rationale (LABEL_SOURCE='gt')"
    )
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"some_rationales_toy/train: {27 - with_rationale} of 27 training examples have no")
    caplog.clear()
    none = [dataclasses.replace(toy._record(i, "train"), samples=()) for i in range(30)]
    checks.check_training_examples(_cache_task(tmp_path, "none_needed_toy", none), 0.0)  # λ = 0: fine
    assert any("0 of them with a teacher rationale" in r.getMessage() for r in caplog.records)


def test_a_failed_start_leaves_nothing_that_refuses_its_corrected_rerun(tmp_path):

    from dss_jax.data import options as dss_options

    run = tmp_path / "run"

    def unreadable(**_):
        raise settings.SettingError("the input pipeline cannot read the task")

    # The input pipeline is built before the run's files: it used to fail after task.json was written.
    with pytest.raises(settings.SettingError, match="cannot read the task"):
        train(run, 2, batches_fn=unreadable)
    assert not run.exists() or os.listdir(run) == []
    # A task.json from a start that never reached a checkpoint (an earlier version, a crash)
    # does not refuse a rerun with other options: nothing was trained with it.
    other = dataclasses.asdict(dss_options.TaskOptions(train_fraction=0.5))
    run.mkdir(exist_ok=True)
    checkpoints.write_run_task(str(run), TASK, other)
    train(run, 2)
    assert json.loads((run / "task.json").read_text())["options"]["train_fraction"] == 1.0
    assert checkpoints.checkpoint_steps(str(run)) == [2]


def test_a_resume_with_another_model_is_refused_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    train(run, 2)
    trained = (run / "config.json").read_text()
    wider = PoisonableT5(T5Config.preset("tiny", "t5.1.1", vocab_size=VOCAB, dropout_rate=0.0, d_ff=128))
    code, err = one_line_report(capsys, lambda: loop.train(wider, **_args(run, 3)))
    assert code != 0 and "another model" in err and "d_ff=" in err and "Traceback" not in err
    assert (run / "config.json").read_text() == trained and checkpoints.checkpoint_steps(str(run)) == [2]
    # The run-time fields may change on a resume.
    train(run, 3, student=PoisonableT5(model().config.replace(dropout_rate=0.1)))
    assert checkpoints.checkpoint_steps(str(run))[-1] == 3


def test_a_resume_that_would_tokenize_with_another_vocabulary_is_refused(tmp_path, monkeypatch):
    # e.g. a MODEL_DIR trained from scratch (its vocabulary learnt on the task), resumed from
    # a pretrained student's: its checkpoints would be trained on, and decoded with, ids
    # that mean other pieces, and its spiece.model replaced.
    import _eval_toy as toy

    from dss_jax.data import vocab

    caches = toy.write_caches(tmp_path / "caches")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = toy.train_vocab(caches, tmp_path / "a")
    texts = vocab.cache_texts([caches["train"]]) + ["an other text altogether"]
    other = vocab.train_vocabulary(
        texts, tmp_path / "b" / "spiece.model", vocab.VocabSettings(vocab_size=70, byte_fallback=False)
    )
    run = tmp_path / "run"
    monkeypatch.setattr(loop, "task_vocabulary_file", lambda task: str(first))
    train(run, 2)
    trained_with = (run / "spiece.model").read_bytes()
    monkeypatch.setattr(loop, "task_vocabulary_file", lambda task: str(other))
    with pytest.raises(settings.SettingError, match=r"trained with the vocabulary .*spiece.model.*new MODEL_DIR"):
        train(run, 3)
    assert (run / "spiece.model").read_bytes() == trained_with and checkpoints.checkpoint_steps(str(run)) == [2]
    monkeypatch.setattr(loop, "task_vocabulary_file", lambda task: str(first))
    train(run, 3)  # the same vocabulary resumes
    assert checkpoints.checkpoint_steps(str(run))[-1] == 3


def test_training_from_a_checkpoint_uses_its_vocabulary(tmp_path):
    import shutil

    import _eval_toy as toy

    import gin
    import tasks.dss  # noqa: F401  (registers dss_svamp, whose vocabulary gin chooses)

    ckpt = tmp_path / "ckpts" / "converted"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    (tmp_path / "vocab").mkdir()
    spm = toy.train_vocab(toy.write_caches(tmp_path / "caches"), tmp_path / "vocab")
    gin.clear_config()
    try:
        with pytest.raises(settings.SettingError, match=r"has no spiece.model.*task_vocabulary.spm_path"):
            loop.train(
                model(),
                model_dir=str(tmp_path / "run"),
                task_name="dss_svamp",
                task_feature_lengths=LENGTHS,
                train_steps=1,
                batch_size=8,
                initial_checkpoint_path=str(ckpt),
            )
        assert not (tmp_path / "run").exists()
        shutil.copy(spm, ckpt / "spiece.model")
        loop._use_initial_vocabulary("dss_svamp", str(ckpt))
        assert loop.task_vocabulary_file("dss_svamp") == str(ckpt / "spiece.model")
    finally:
        gin.clear_config()
        from dss_jax.data import tasks as dss_tasks

        dss_tasks.get_task("dss_svamp").output_features["label_targets"].vocabulary.reset()


# -- issue 30 item 10: a resume with other settings ----------------------------------


@pytest.mark.parametrize(
    "change, named",
    [
        ({"batch_size": 16}, "batch_size=8; now batch_size=16"),
        ({"loss_config": losses.LossConfig(rationale_weight=0.5)}, "loss.rationale_weight=1.0; now"),
        (
            {"optimizer_config": optimizers.OptimizerConfig(name="adamw", learning_rate=1e-3)},
            "optimizer.learning_rate=None",
        ),
        ({"seed": 3}, "seed=0; now seed=3"),
    ],
)
def test_a_resume_with_settings_that_change_the_result_is_refused(tmp_path, change, named):
    run = tmp_path / "run"
    train(run, 2)
    before = sorted(p.name for p in run.iterdir()), (run / "config.gin").read_text()
    with pytest.raises(settings.SettingError, match=re.escape(named)):
        train(run, 4, **change)
    assert (sorted(p.name for p in run.iterdir()), (run / "config.gin").read_text()) == before
    assert checkpoints.checkpoint_steps(str(run)) == [2]


def test_a_resume_told_to_take_other_settings_trains_on_and_keeps_the_earlier_config(tmp_path, caplog):
    import gin

    run = tmp_path / "run"
    with gin.unlock_config():
        gin.bind_parameter("train.progress_seconds", 30.0)  # config.gin records gin's settings
    try:
        train(run, 2)
        with gin.unlock_config():
            gin.bind_parameter("train.progress_seconds", 31.0)
        train(run, 4, batch_size=16, resume_with_other_settings=True)
    finally:
        gin.clear_config()
    assert checkpoints.checkpoint_steps(str(run)) == [2, 4]
    assert "train.progress_seconds = 30.0" in (run / "config.to_step_2.gin").read_text()
    assert "train.progress_seconds = 31.0" in (run / "config.gin").read_text()
    assert "with other settings (was batch_size=8; now batch_size=16)" in caplog.text


def test_a_longer_run_with_a_schedule_that_does_not_depend_on_its_length_resumes(tmp_path):
    constant = optimizers.OptimizerConfig(name="adamw", learning_rate=1e-3, schedule="constant")
    train(tmp_path / "run", 2, optimizer_config=constant)
    train(tmp_path / "run", 4, optimizer_config=constant)
    assert checkpoints.checkpoint_steps(str(tmp_path / "run")) == [2, 4]
    cosine = optimizers.OptimizerConfig(name="adamw", learning_rate=1e-3, schedule="cosine")
    train(tmp_path / "other", 2, optimizer_config=cosine)
    with pytest.raises(settings.SettingError, match="train_steps=2; now train_steps=4"):
        train(tmp_path / "other", 4, optimizer_config=cosine)  # its decay would have ended at 2


def test_a_resume_with_nothing_left_to_train_says_so(tmp_path, caplog):
    run = tmp_path / "run"
    train(run, 4)
    caplog.set_level("INFO")
    train(run, 2)
    assert "nothing left to train" in caplog.text and "step 4 and TRAIN_STEPS = 2" in caplog.text
    assert metric_steps(run) == [1, 2, 3, 4]


def test_a_timed_out_checkpoint_write_is_not_called_a_full_disk(tmp_path, monkeypatch):
    """A save stopped for 47 minutes (SIGSTOP) timed out in orbax when resumed; the error
    said to free space. A TimeoutError is an OSError to Python, not a full disk."""
    ckpt = checkpoints.RunCheckpointer(str(tmp_path), asynchronous=False)
    ckpt.save(1, {"w": np.ones(4, np.float32)}, {"step": 1})

    def times_out(self, step, *args, **kwargs):
        raise TimeoutError("ChainedFuture completed 3/4 futures but timed out after 2813.94 seconds.")

    monkeypatch.setattr(checkpoints.run.ocp.CheckpointManager, "save", times_out)
    with pytest.raises(checkpoints.CheckpointWriteError) as e:
        ckpt.save(2, {"w": np.ones(4, np.float32)}, {"step": 2})
    message = str(e.value)
    assert "timed out" in message and "free space" not in message, message
    assert message.endswith("rerun the same command to resume from step 1") and "\n" not in message
    no_space = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert checkpoints.run.write_error_advice(no_space).startswith("free space")
    read_only = RuntimeError("Failed writing: /ckpt/x: Read-only file system [os_error_code=30]")
    assert checkpoints.run.write_error_advice(read_only).startswith("make the directory writable")
