"""The train binary with MODEL_DIR, INITIAL_CHECKPOINT_PATH and a gin file on gs:// (a GCS
emulator, tests/conftest.py): a run writes its files and checkpoints there, resumes there,
is refused while another trainer holds the lock object, and starts from a gs:// checkpoint.
Uses the built-in synthetic task, small, on one CPU device."""

import json
import os
import socket

import pytest

from conftest import REPO_ROOT, SMALL_SYNTHETIC_GIN, run_binary
from dss_jax import checkpoints, files
from dss_jax.metrics_writer import read_records

# A gin file the first run reads from gs:// (gin_utils' reader), with the task made small.
MINI = SMALL_SYNTHETIC_GIN


def train(model_dir, steps, mini, cache, *bindings):
    return run_binary(
        "dss_jax.train",
        "--gin_file=runs/train.gin",
        "--gin_file=models/tiny.gin",
        "--gin_file=tasks/synthetic.gin",
        f"--gin_file={mini}",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.TRAIN_STEPS={steps}",
        "--gin.BATCH_SIZE=4",
        "--gin.train.log_period=1",
        "--gin.train.checkpoint_period=2",
        "--gin.EVAL_PERIOD=2",  # teacher-forced validation only: validation/ on gs:// too
        "--gin.train.eval_hook=None",
        "--gin.train.eval_batches_limit=1",
        "--gin.train.validation_metric='label/loss'",
        "--gin.train.validation_mode='min'",
        *bindings,
        DSS_CACHE_DIR=cache,
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
    )


def fresh():
    """Drops what this process's gcsfs client (epath's) cached of listings: a binary wrote
    since (gcsfs would give a file's old size, and read it cut short)."""
    import fsspec

    fsspec.filesystem("gcs", finalize_on_close=True).invalidate_cache()


def names(url):
    """The entries under a gs:// prefix."""
    fresh()
    d = files.path(url)
    return sorted(e.name for e in d.iterdir()) if d.is_dir() else []


def records(url):
    fresh()
    return read_records(url)


def saved(url):
    fresh()
    return checkpoints.checkpoint_steps(url)


def steps_of(url):
    return [r["step"] for r in records(f"{url}/train/metrics.jsonl")]


def test_a_run_on_gs_writes_there_resumes_is_locked_and_starts_from_a_gs_checkpoint(gcs, tmp_path):
    cache = tmp_path / "cache"  # the synthetic data, generated once for the four runs
    mini = f"{gcs}/gin/mini.gin"
    files.path(mini).write_text(MINI)
    run = f"{gcs}/run"

    r = train(run, 4, mini, cache)
    assert r.returncode == 0, r.stderr[-4000:]
    assert {"config.gin", "config.json", "spiece.model", "task.json", "train", "validation"} <= set(names(run))
    assert saved(run) == [2, 4]
    assert checkpoints.LOCK_NAME not in names(run)  # released
    assert json.loads(files.path(f"{run}/task.json").read_text())["task"] == "dss_synthetic"
    assert "synthetic_config.train_size = 200" in files.path(f"{run}/config.gin").read_text()
    assert steps_of(run) == [1, 2, 3, 4]
    assert [r["step"] for r in records(f"{run}/validation/metrics.jsonl")] == [2, 4]
    assert any(n.startswith("events.out.tfevents") for n in names(f"{run}/train"))
    assert not (REPO_ROOT / "gs:").exists()  # nothing went to a local directory named after the scheme

    # A second invocation with more steps continues from the last checkpoint.
    r = train(run, 6, mini, cache)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "resuming at step 4" in r.stderr
    assert saved(run) == [2, 4, 6] and steps_of(run) == [1, 2, 3, 4, 5, 6]
    metadata = json.loads(files.path(f"{checkpoints.step_dir(run, 6)}/metadata/metadata").read_text())
    assert metadata["step"] == 6 and metadata["input_position"] == 6

    # While another trainer holds the lock (a live process: this one), a second is refused in one line.
    locked = f"{gcs}/locked"
    lock = f"{locked}/{checkpoints.LOCK_NAME}"
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": "2026-01-01T00:00:00+00:00"}
    files.path(lock).write_text(json.dumps(holder))
    r = train(locked, 2, mini, cache)
    assert r.returncode == 2, r.stderr[-4000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("train: error:") and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"{locked} is in use by another trainer (pid {os.getpid()} on host {socket.gethostname()}" in last
    assert names(locked) == [checkpoints.LOCK_NAME]  # nothing of the second trainer, the lock left as it was
    assert json.loads(files.path(lock).read_text()) == holder

    # A run that starts from the first run's checkpoint on gs://: its weights and its spiece.model.
    finetuned = f"{gcs}/finetuned"
    r = train(finetuned, 2, mini, cache, f"--gin.INITIAL_CHECKPOINT_PATH='{run}'")
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"from {checkpoints.step_dir(run, 6)}" in r.stderr
    assert saved(finetuned) == [2]
    metadata = json.loads(files.path(f"{checkpoints.step_dir(finetuned, 2)}/metadata/metadata").read_text())
    assert metadata["settings"]["initial_checkpoint_path"] == run
    assert files.path(f"{finetuned}/spiece.model").read_bytes() == files.path(f"{run}/spiece.model").read_bytes()
    # The finetuned run starts from the trained weights, not from scratch.
    first_loss = records(f"{finetuned}/train/metrics.jsonl")[0]["loss"]
    assert first_loss < records(f"{run}/train/metrics.jsonl")[0]["loss"]


@pytest.mark.parametrize("holder_alive", [True, False])
def test_the_lock_object_on_gs(gcs, holder_alive):
    """RunLock on an object store: a live holder refuses with the local message; a dead
    process of this host is taken over; release deletes only this process's lock."""
    import subprocess
    import sys

    lock_url = f"{gcs}/{checkpoints.LOCK_NAME}"
    if holder_alive:
        first = checkpoints.RunLock(gcs).acquire()
        assert json.loads(files.path(lock_url).read_text())["pid"] == os.getpid()
        with pytest.raises(checkpoints.RunLockedError, match=r"is in use by another trainer \(pid \d+ on host"):
            checkpoints.RunLock(gcs).acquire()
        first.release()
        assert not files.path(lock_url).exists()
        checkpoints.RunLock(gcs).acquire().release()  # free again
        return
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    files.path(lock_url).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "since": "x"}))
    lock = checkpoints.RunLock(gcs).acquire()
    assert json.loads(files.path(lock_url).read_text())["pid"] == os.getpid()
    lock.release()
    files.path(lock_url).write_text(json.dumps({"pid": os.getpid(), "host": "another-host", "since": "x"}))
    with pytest.raises(checkpoints.RunLockedError, match=f"another-host.*delete {lock_url}"):
        checkpoints.RunLock(gcs).acquire()
    assert files.path(lock_url).exists()  # another host's lock is left alone


def test_metrics_and_events_on_gs_are_superseded_on_a_resume_and_replaced(gcs, tmp_path):
    """metrics.jsonl and the TensorBoard events file of a gs:// LOG_DIR, which objects cannot
    grow in place: each flush uploads them whole; a resume drops the later records and purges
    their events; a replaced record rewrites the events file whole."""
    from tensorboard.backend.event_processing import event_file_loader

    from dss_jax.metrics_writer import MetricsWriter

    log_dir = f"{gcs}/train"
    writer = MetricsWriter(log_dir, resume_step=0)
    for step in (1, 2, 3):
        writer.write(step, {"loss": float(step)})
        assert [r["step"] for r in read_records(f"{log_dir}/metrics.jsonl")] == list(range(1, step + 1))  # flushed
    writer.write(2, {"loss": 9.0}, replace=True)
    writer.close()
    writer = MetricsWriter(log_dir, resume_step=2)  # a resume at step 2: step 3 is recomputed
    writer.write(3, {"loss": 7.0})
    writer.close()
    assert [(r["step"], r["loss"]) for r in read_records(f"{log_dir}/metrics.jsonl")] == [(1, 1.0), (2, 9.0), (3, 7.0)]

    def events(path):
        local = tmp_path / path.name
        local.write_bytes(path.read_bytes())
        return [
            (e.step, e.session_log.status, {v.tag: v.simple_value for v in e.summary.value})
            for e in event_file_loader.LegacyEventFileLoader(str(local)).Load()  # the events as written
        ]

    by_writer = sorted(files.path(log_dir).glob("events.out.tfevents.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    first, second = by_writer
    START = 1  # SessionLog.START: TensorBoard drops the earlier files' events from its step on
    assert [(s, status, v) for s, status, v in events(first) if v or status] == [
        (0, START, {}),  # the rewrite for the replaced step 2 purges every earlier value
        (1, 0, {"loss": 1.0}),
        (3, 0, {"loss": 3.0}),
        (2, 0, {"loss": 9.0}),
    ]
    assert [(s, status, v) for s, status, v in events(second) if v or status] == [(3, START, {}), (3, 0, {"loss": 7.0})]
