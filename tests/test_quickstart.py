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


@pytest.mark.parametrize("family,num_params", [("t5", 427_008), ("decoder_only", 435_008)])
def test_the_committed_pretrained_student_is_the_quickstart_model_and_small(family, num_params):
    import sentencepiece as spm

    quick = quickstart.QUICKSTARTS[family]
    student = REPO_ROOT / quick.pretrained
    size = sum(f.stat().st_size for f in student.rglob("*") if f.is_file())
    assert size < 2 * 2**20  # committed only because it is small
    params, config, vocab = checkpoints.load_params(student)
    gin_utils.parse_gin([quick.gin_file], [], ["."])
    assert config == configurables.model_config()  # the model file its quickstart gin includes
    assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == num_params
    # Its vocabulary (900 pieces and 100 sentinels above them) fits its embeddings.
    assert spm.SentencePieceProcessor(model_file=vocab).get_piece_size() == 900 and config.vocab_size >= 1000


@pytest.mark.parametrize("family", sorted(quickstart.QUICKSTARTS))
def test_the_quickstart_starts_from_the_pretrained_student_unless_told_otherwise(family):
    quick = quickstart.QUICKSTARTS[family]
    assert quickstart._settings([], quick) == (800, "pretrained")
    gin.clear_config()
    assert quickstart._settings(["INITIAL_CHECKPOINT_PATH=None"], quick) == (800, "scratch")
    gin.clear_config()
    assert quickstart._settings(["INITIAL_CHECKPOINT_PATH='/my/ckpt'"], quick) == (800, None)  # not measured


@pytest.mark.parametrize("family", ["t5", "decoder_only"])
def test_the_quoted_results_are_the_committed_grids_and_the_readmes(family):
    """The quickstart quotes, for each method, its 3-seed results at this run's examples,
    at the token budget nearest this run's compute and at convergence, from its family's
    committed converged grid; the README quotes the same figures."""
    readme = (REPO_ROOT / "README.md").read_text()
    quoted = quickstart._measured(800 * 16, 1.9e6, quickstart.QUICKSTARTS[family].measured_dir)
    assert set(quoted) == {"dss_teacher", "distill"}
    for method, readings in quoted.items():
        assert [r.split(" (")[0] for r, _ in readings] == [
            "at this run's 12,800 examples",
            "at 2M real tokens",
            "trained to convergence",
        ], readings
        for _, value in readings:
            assert re.fullmatch(r"\d+\.\d ± \d+\.\d% \((n=3|best step \d+)\)", value), value
            assert value.split("%")[0] in readme, (method, value)  # the README quotes the same


@pytest.mark.parametrize("family,num_runs", [("t5", 12), ("decoder_only", 6)])
def test_the_quoted_results_were_measured_with_todays_quickstart_settings(family, num_runs):
    """Each committed run's config.gin is what its sweep command gives today: a change to
    the family's quickstart gin file, or to anything it includes, that changes a setting
    fails here until its gin/sweeps/ file is run again and its results committed."""
    import importlib

    results = REPO_ROOT / quickstart.QUICKSTARTS[family].measured_dir
    sweep_file = f"sweeps/{results.name}.gin"
    gin_utils.parse_gin([sweep_file], [f"SWEEP_DIR = {str(results)!r}"], ["."])
    cfg = sweep.sweep_config()
    gin.clear_config()
    runs = sweep.plan(cfg)
    assert len(runs) == num_runs
    importlib.import_module(sweep.TRAIN)  # registers its configurables
    for run in runs:
        _, gin_files, bindings = sweep.run_commands(run, cfg)[0]
        gin_utils.parse_gin(gin_files, bindings, ["."])
        now = gin.config_str()
        gin.clear_config()
        measured = (pathlib.Path(sweep.run_path(run, cfg)) / "model" / "config.gin").read_text()
        assert sweep.settings_of(now, cfg["sweep_dir"]) == sweep.settings_of(measured), (
            f"{run.name} was measured with other settings than the quickstart's today: run "
            f"gin/{sweep_file} again (and commit its results) before quoting them"
        )


def test_running_the_quickstart_again_evaluates_again_in_place(tmp_path):
    """Its second run skips the finished training and replaces the evaluation (eval refuses
    to write over an earlier result unless told to), one metrics record per step."""
    out = tmp_path / "qs"
    for _ in range(2):
        run_binary("dss_jax.quickstart", f"--output_dir={out}", "--train_steps=2", timeout=600, check=True)
    assert [json.loads(line)["step"] for line in (out / "eval" / "metrics.jsonl").read_text().splitlines()] == [2]
    assert json.loads((out / "eval" / "step_2" / "metrics.json").read_text())["num_examples"] == 300
