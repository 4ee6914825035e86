"""The gin command line shared by the binaries: shorthand, search path, clear errors."""

import logging

import gin
import pytest

from dss_jax import gin_utils


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_shorthand_becomes_a_binding():
    assert gin_utils.rewrite_gin_args(["prog", "--gin.TRAIN_STEPS=5", "--x=1"]) == [
        "prog", "--gin_bindings=TRAIN_STEPS = 5", "--x=1"]
    with pytest.raises(SystemExit, match="needs a value"):
        gin_utils.rewrite_gin_args(["prog", "--gin.TRAIN_STEPS"])


def test_includes_found_on_the_search_path_log_no_errors(caplog):
    # gin probes every search folder and logs "Path not found" as an ERROR for each miss;
    # a user reading the quickstart's output must not see errors for a config that parses.
    from dss_jax import configurables  # noqa: F401  (model_config in quickstart.gin)

    with caplog.at_level(logging.INFO):
        gin_utils.parse_gin(["quickstart.gin"], [], ["."])
    assert gin.query_parameter("TRAIN_STEPS/macro.value") > 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_missing_include_names_the_file(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("include 'nope/missing.gin'\n")
    with pytest.raises(SystemExit, match="nope/missing.gin"):
        gin_utils.parse_gin([str(bad)], [], [str(tmp_path)])


def test_unset_macro_is_named_with_its_flag(tmp_path):
    cfg = tmp_path / "run.gin"
    cfg.write_text("import dss_jax.losses\nLossConfig.rationale_weight = %WEIGHT\n")
    with pytest.raises(SystemExit, match=r"WEIGHT.*--gin\.WEIGHT="):
        gin_utils.parse_gin([str(cfg)], [], [])
