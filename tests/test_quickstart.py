"""`make quickstart`: the pretrained student it starts from, and the measured results it
quotes next to its own run."""

import json
import pathlib
import re

import jax
import pytest

import gin
from conftest import REPO_ROOT, run_binary
from dss_jax import checkpoints, configurables, gin_utils, quickstart, sweep


@pytest.fixture(autouse=True)
def _in_the_repository(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # where `make quickstart` runs
    yield
    gin.clear_config()


def test_the_committed_pretrained_student_is_the_quickstart_model_and_small():
    import sentencepiece as spm

    student = REPO_ROOT / quickstart.PRETRAINED_STUDENT
    size = sum(f.stat().st_size for f in student.rglob("*") if f.is_file())
    assert size < 2 * 2**20  # committed only because it is small
    params, config, vocab = checkpoints.load_params(student)
    gin_utils.parse_gin([quickstart.QUICKSTART_GIN], [], ["."])
    assert config == configurables.model_config()  # models/tiny_cpu.gin, which quickstart.gin includes
    assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == 427_008
    # Its vocabulary (900 pieces and 100 sentinels above them) fits its embeddings.
    assert spm.SentencePieceProcessor(model_file=vocab).get_piece_size() == 900 and config.vocab_size >= 1000


def test_the_quickstart_starts_from_the_pretrained_student_unless_told_otherwise():
    assert quickstart._settings([]) == (800, "pretrained")
    gin.clear_config()
    assert quickstart._settings(["INITIAL_CHECKPOINT_PATH=None"]) == (800, "scratch")
    gin.clear_config()
    assert quickstart._settings(["INITIAL_CHECKPOINT_PATH='/my/ckpt'"]) == (800, None)  # not measured


def test_the_quoted_results_are_the_committed_grids_and_the_readmes():
    readme = (REPO_ROOT / "README.md").read_text()
    for start in ("pretrained", "scratch"):
        quoted = quickstart._measured(start)
        assert set(quoted) == {"dss_teacher", "distill"}
        for method, value in quoted.items():
            assert re.fullmatch(r"\d+\.\d ± \d+\.\d%", value), value
            assert value.rstrip("%") in readme, (start, method, value)  # the README quotes the same


def test_the_quoted_results_were_measured_with_todays_quickstart_settings():
    """Each committed run's config.gin is what its sweep command gives today: a change to
    quickstart.gin, or to anything it includes, that changes a setting fails here until
    gin/sweeps/quickstart.gin is run again and its results committed."""
    results = REPO_ROOT / "docs" / "results" / "quickstart"
    gin_utils.parse_gin(["sweeps/quickstart.gin"], [f"SWEEP_DIR = {str(results)!r}"], ["."])
    cfg = sweep.sweep_config()
    gin.clear_config()
    runs = sweep.plan(cfg)
    assert len(runs) == 12
    for run in runs:
        _, gin_files, bindings = sweep.run_commands(run, cfg)[0]
        gin_utils.parse_gin(gin_files, bindings, ["."])
        now = gin.config_str()
        gin.clear_config()
        measured = (pathlib.Path(sweep.run_path(run, cfg)) / "model" / "config.gin").read_text()
        assert _settings_of(now) == _settings_of(measured), (
            f"{run.name} was measured with other settings than the quickstart's today: run "
            "gin/sweeps/quickstart.gin again (and commit its results) before quoting them"
        )


def _settings_of(config_gin: str) -> str:
    """A run's config.gin without where it wrote (MODEL_DIR) and the vocabulary path the
    train binary binds from its INITIAL_CHECKPOINT_PATH at run time."""
    text = re.sub(r"MODEL_DIR = \\?\s*'[^']*'\n", "", config_gin)
    return re.sub(r"# Parameters for task_vocabulary:\n# =+\ntask_vocabulary\.spm_path = \\?\s*'[^']*'\n\n", "", text)


def test_running_the_quickstart_again_evaluates_again_in_place(tmp_path):
    """Its second run skips the finished training and replaces the evaluation (eval refuses
    to write over an earlier result unless told to), one metrics record per step."""
    out = tmp_path / "qs"
    for _ in range(2):
        run_binary("dss_jax.quickstart", f"--output_dir={out}", "--train_steps=2", timeout=600, check=True)
    assert [json.loads(line)["step"] for line in (out / "eval" / "metrics.jsonl").read_text().splitlines()] == [2]
    assert json.loads((out / "eval" / "step_2" / "metrics.json").read_text())["num_examples"] == 300
