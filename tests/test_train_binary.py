"""The train binary end to end: gin errors, exact resume after SIGKILL, two processes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO_ROOT, SHARED_DATA

# The binaries train on SVAMP from the paper's files.
pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not (SHARED_DATA / "svamp").is_dir(), reason=f"no paper data at {SHARED_DATA}"),
]

STEPS = 10


def gin_args(model_dir, steps=STEPS, extra=()):
    return [
        "--gin_file=runs/train.gin",
        "--gin_file=models/tiny.gin",
        "--gin_file=tasks/svamp.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.TRAIN_STEPS={steps}",
        "--gin.BATCH_SIZE=8",
        "--gin.TASK_FEATURE_LENGTHS={'label_inputs': 64, 'label_targets': 16, "
        "'rationale_inputs': 64, 'rationale_targets': 48}",
        "--gin.DssFeatureConverter.pack_encoder_length=128",
        "--gin.DssFeatureConverter.pack_decoder_length=64",
        "--gin.task_vocabulary.vocab_size=500",
        "--gin.T5Config.vocab_size=512",
        "--gin.T5Config.dropout_rate=0.1",
        "--gin.train.log_period=1",
        "--gin.train.checkpoint_period=2",
        "--gin.EVAL_PERIOD=0",
        "--gin.train_batches.num_input_shards=2",
        *extra,
    ]


def env(devices=8):
    e = dict(os.environ)
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    e["JAX_PLATFORMS"] = "cpu"
    e["PYTHONPATH"] = str(REPO_ROOT)
    e["DSS_PALM_DIR"] = str(SHARED_DATA)
    e["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return e


def run_train(args, timeout=600, **kw):
    return subprocess.run(
        [sys.executable, "-m", "dss_jax.train", *args],
        cwd=REPO_ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def metrics(model_dir):
    with open(os.path.join(model_dir, "train", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def final_params(model_dir, step):
    from dss_jax import checkpoints

    params, _, _ = checkpoints.load_params(os.path.join(model_dir, f"checkpoint_{step}"))
    return params


def test_missing_macro_and_typo_fail_before_any_work(tmp_path):
    r = run_train(["--gin_file=runs/train.gin", "--gin_file=models/tiny.gin", "--gin_file=tasks/svamp.gin"])
    assert r.returncode != 0
    assert "MODEL_DIR" in r.stderr and "--gin.MODEL_DIR=" in r.stderr
    r = run_train(gin_args(tmp_path / "m", extra=["--gin.trian.log_period=3"]))
    assert r.returncode != 0 and "trian" in r.stderr
    r = run_train(gin_args(tmp_path / "m", extra=["--gin_file=models/nope.gin"]))
    assert r.returncode != 0 and "models/nope.gin" in r.stderr
    assert not (tmp_path / "m").exists()


def decode_eval_args(model_dir):
    """Decode-based evaluation of 8 validation examples every 5 steps (and at the end),
    predictions written under model_dir/decode/step_<N>/."""
    return [
        "--gin.EVAL_PERIOD=5",
        "--gin.train.eval_batches_limit=1",
        "--gin.make_train_eval_hook.max_examples=8",
        "--gin.make_train_eval_hook.batch_size=4",
        f"--gin.make_train_eval_hook.output_dir='{model_dir}/decode'",
    ]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("uninterrupted")
    r = run_train(gin_args(model_dir, extra=decode_eval_args(model_dir)))
    assert r.returncode == 0, r.stderr[-3000:]
    return model_dir


def test_run_writes_metrics_checkpoints_and_learns(uninterrupted):
    m = metrics(uninterrupted)
    assert [x["step"] for x in m] == list(range(1, STEPS + 1))
    assert m[-1]["loss"] < m[0]["loss"]
    for key in (
        "label/loss",
        "rationale/loss",
        "label/accuracy",
        "learning_rate",
        "real_tokens_per_second",
        "padding_efficiency",
    ):
        assert key in m[-1]
    assert 0.3 < m[-1]["padding_efficiency"] <= 1.0
    for name in ("config.json", "config.gin", "spiece.model", "task.json"):
        assert (uninterrupted / name).exists()
    # The model config is stored once, in config.json: each step keeps where it was, what it
    # trained on so far, the settings that change what is trained, and the checksums of its state.
    for step_dir in uninterrupted.glob("checkpoint_*"):
        metadata = json.loads((step_dir / "metadata" / "metadata").read_text())
        assert set(metadata) == {"step", "input_position", "examples_seen", "real_tokens_seen", "settings", "checksums"}
        assert metadata["step"] == int(step_dir.name.split("_")[1]) == metadata["input_position"]
        assert metadata["examples_seen"] > 0 and metadata["real_tokens_seen"] > 0
        assert "d_model" not in json.dumps(metadata["settings"])
        assert metadata["checksums"]["items"]["state"].keys() >= {"step", "params/encoder/encoder_norm/scale"}
    assert any(p.startswith("events.out.tfevents") for p in os.listdir(uninterrupted / "train"))


def test_sigkill_then_restart_matches_uninterrupted_run(uninterrupted, tmp_path):
    model_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dss_jax.train", *gin_args(model_dir)],
        cwd=REPO_ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    # Kill as soon as the first checkpoint is final (orbax renames it into place).
    while not (model_dir / "checkpoint_4").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (model_dir / f"checkpoint_{STEPS}").exists(), "killed too late to test anything"
    r = run_train(gin_args(model_dir))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = final_params(uninterrupted, STEPS), final_params(model_dir, STEPS)
    import jax

    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_two_processes_match_one(uninterrupted, tmp_path):
    """2 processes x 4 CPU devices over loopback vs 1 process x 8: the same global batches
    (num_input_shards=2), the same mesh shape, so the same losses; and the decode-based
    evaluation, run by both processes on the global params, decodes what one process does."""
    model_dir = tmp_path / "multi"
    steps = 5
    r = subprocess.run(
        [
            sys.executable,
            "launch/local.py",
            "--num_processes=2",
            "--devices_per_process=4",
            f"--log_dir={tmp_path / 'logs'}",
            "--timeout=500",
            "--",
            "-m",
            "dss_jax.train",
            *gin_args(model_dir, steps=steps, extra=decode_eval_args(model_dir)),
        ],
        cwd=REPO_ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    logs = "".join((tmp_path / "logs" / f).read_text()[-2000:] for f in sorted(os.listdir(tmp_path / "logs")))
    assert r.returncode == 0, logs
    multi = [x["loss"] for x in metrics(model_dir)]
    single = [x["loss"] for x in metrics(uninterrupted)][:steps]
    np.testing.assert_allclose(multi, single, rtol=1e-5)
    with open(model_dir / "validation" / "metrics.jsonl") as f:
        assert json.loads(f.readline())["decode/num_examples"] == 8
    predictions = [(d / "decode" / "step_5" / "predictions.jsonl").read_text() for d in (model_dir, uninterrupted)]
    assert len(predictions[0].splitlines()) == 8
    assert predictions[0] == predictions[1]


def test_sigterm_saves_a_checkpoint_then_exits(tmp_path):
    """Preemption: SIGTERM ends the run at the end of the step, with that step saved."""
    model_dir = tmp_path / "preempted"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dss_jax.train",
            *gin_args(model_dir, steps=500, extra=["--gin.train.checkpoint_period=1000"]),
        ],
        cwd=REPO_ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = model_dir / "train" / "metrics.jsonl"
    deadline = time.time() + 600
    while not (log.exists() and len(log.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143
    steps = sorted(int(p.name.split("_")[1]) for p in model_dir.glob("checkpoint_*"))
    assert len(steps) == 1 and 2 <= steps[0] < 500
    assert steps[0] == metrics(model_dir)[-1]["step"]  # nothing trained is lost


def test_tensorboard_serves_the_runs_label_and_rationale_scalars(uninterrupted):
    """`make install` brings tensorboard (the quickstart tells users to run it); it starts on
    loopback and serves the scalars the run wrote."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    board = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            f"--logdir={uninterrupted}",
            "--host=127.0.0.1",
            f"--port={port}",
            "--load_fast=false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env(),
    )
    try:
        deadline, tags = time.time() + 120, {}
        while time.time() < deadline and not any("label/loss" in t for t in tags.values()):
            assert board.poll() is None, board.stderr.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as r:
                    tags = json.load(r)
            except OSError:
                pass
            time.sleep(1)
        train_tags = tags.get("train", {})
        assert {"label/loss", "rationale/loss", "label/accuracy"} <= set(train_tags), tags
    finally:
        board.terminate()
        board.wait(timeout=30)
