"""docs/bootstrap.md's three commands, through the real binaries at tiny sizes: round 1
trains, the round-1 student annotates the unlabeled pool, round 2 trains on the union; with
a T5 student and with a decoder-only one."""

import pytest

from conftest import run_binary
from dss_jax.data.cache import read_cache

SIZES = [
    "--gin.synthetic_config.train_size=60",
    "--gin.synthetic_config.validation_size=8",
    "--gin.synthetic_config.test_size=8",
    "--gin.synthetic_config.unlabeled_size=10",
]
SHORT = ["--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4", "--gin.train.checkpoint_period=2", "--gin.train.log_period=1"]


def run(args, env):
    return run_binary(*args, check=True, **env)


@pytest.mark.parametrize("model", [[], ["--gin_file=models/decoder_only_tiny_cpu.gin"]], ids=["t5", "decoder_only"])
def test_two_rounds_through_the_binaries(tmp_path, model):
    env = dict(DSS_CACHE_DIR=tmp_path / "cache", XLA_FLAGS=None)  # one device is plenty
    round1, round2, student = tmp_path / "round1", tmp_path / "round2", tmp_path / "student.jsonl"

    run(
        ["dss_jax.train", "--gin_file=recipes/bootstrap_round1.gin", *model, f"--gin.MODEL_DIR='{round1}'"]
        + [*SIZES, *SHORT],
        env,
    )
    family = "decoder_only" if model else "t5"
    assert f'"family": "{family}"' in (round1 / "config.json").read_text()
    assert (round1 / "checkpoint_2").is_dir() and (round1 / "spiece.model").is_file()

    annotate = run(
        [
            "dss_jax.annotate",
            "--backend=student",
            f"--checkpoint={round1}",
            "--task=dss_synthetic",
            "--split=unlabeled",
            "--gin_file=recipes/bootstrap_data.gin",
            *SIZES,
            f"--output={student}",
            "--student_input_length=128",
            "--student_label_length=40",
            "--max_tokens=32",
            "--student_batch_size=16",
            "--noprogress",
        ],
        env,
    )
    assert "done: every input example is in the cache" in annotate.stderr
    records = read_cache(student)
    assert sorted(r.id for r in records) == sorted(f"synthetic/unlabeled/{i}" for i in range(10))
    assert all(r.label is None and len(r.samples) == 1 for r in records)
    assert {s.teacher for r in records for s in r.samples} == {f"student:{round1 / 'checkpoint_2'}"}

    run(
        [
            "dss_jax.train",
            "--gin_file=recipes/bootstrap_round2.gin",
            *model,
            f"--gin.MODEL_DIR='{round2}'",
            f"--gin.ROUND1_MODEL_DIR='{round1}'",
            f"--gin.STUDENT_CACHE='{student}'",
            *SIZES,
            *SHORT,
        ],
        env,
    )
    assert (round2 / "checkpoint_2").is_dir()
    assert f'"family": "{family}"' in (round2 / "config.json").read_text()
    assert (round2 / "spiece.model").read_bytes() == (round1 / "spiece.model").read_bytes()
    config = (round2 / "config.gin").read_text()
    assert "dss_synthetic_bootstrap" in config and "gt_else_teacher" in config and str(student) in config
