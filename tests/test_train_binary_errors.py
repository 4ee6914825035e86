"""The train binary's one-line errors: a bad setting or a held run directory stops it
with `train: error: ...` (exit 2) before anything is written. Uses the built-in synthetic
task's gin file, which registers the task without generating any data."""

import os
import socket

import pytest

import gin
from conftest import run_binary
from dss_jax import checkpoints, gin_utils, settings
from dss_jax.training import checks

TASK_GIN = ["--gin_file=runs/train.gin", "--gin_file=models/tiny.gin", "--gin_file=tasks/synthetic.gin"]


def run_train(model_dir, *bindings, **env):
    return run_binary(
        "dss_jax.train",
        *TASK_GIN,
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.TRAIN_STEPS=2",
        *bindings,
        DSS_CACHE_DIR=str(model_dir) + ".no_cache",  # nothing may be generated before the checks
        **env,
    )


def assert_one_line_error(r, *words):
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("train: error:") and "Traceback" not in r.stderr, r.stderr[-3000:]
    for word in words:
        assert word in last, last
    return last


def test_a_bad_setting_stops_the_binary_before_anything_is_written(tmp_path):
    model_dir = tmp_path / "run"
    r = run_train(model_dir, "--gin.BATCH_SIZE=-8")
    assert_one_line_error(r, "BATCH_SIZE", "-8", "--gin.BATCH_SIZE=")
    assert not model_dir.exists() and not (tmp_path / "run.no_cache").exists()


def test_a_model_setting_that_cannot_train_stops_the_binary_before_anything_is_written(tmp_path):
    # An integer compute dtype used to train nothing (the loss fixed at ln(vocab)) and save checkpoints.
    model_dir = tmp_path / "run"
    r = run_train(model_dir, "--gin.BATCH_SIZE=8", "--gin.T5Config.dtype='int8'")
    assert_one_line_error(r, "T5Config.dtype='int8' is not a floating-point dtype", "'bfloat16'")
    assert not model_dir.exists()


def test_t5x_feature_lengths_stop_the_binary_before_anything_is_written(tmp_path):
    # They used to fail in the input pipeline after config.gin, task.json and spiece.model were written.
    model_dir = tmp_path / "run"
    r = run_train(model_dir, "--gin.BATCH_SIZE=8", "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 40}")
    assert_one_line_error(r, "TASK_FEATURE_LENGTHS (train.task_feature_lengths)", "'label_inputs'", "'inputs'")
    assert not model_dir.exists()


def test_a_mesh_that_does_not_divide_the_devices_names_the_macro_users_set(tmp_path):
    model_dir = tmp_path / "run"
    r = run_train(
        model_dir,
        "--gin.BATCH_SIZE=8",
        "--gin_file=partitioning/tp.gin",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
    )
    assert_one_line_error(
        r,
        "NUM_PARTITIONS (PartitionConfig.num_partitions) = 2 must divide the number of devices (1)",
        "--gin.NUM_PARTITIONS=",
    )
    assert not model_dir.exists()


def test_a_second_trainer_is_refused_in_one_line(tmp_path):
    model_dir = tmp_path / "run"
    holder = checkpoints.RunLock(str(model_dir)).acquire()  # the first trainer
    try:
        r = run_train(model_dir, "--gin.BATCH_SIZE=8")
        assert_one_line_error(r, "in use by another trainer", f"pid {os.getpid()}", socket.gethostname(), "since")
        assert os.listdir(model_dir) == [checkpoints.LOCK_NAME]
    finally:
        holder.release()


@pytest.fixture
def parsed():
    """Parses the train binary's gin files with extra bindings, as the binary does."""
    from dss_jax import configurables, partitioning  # noqa: F401  (register configurables)

    def parse(*bindings):
        gin.clear_config()
        gin_utils.parse_gin(
            [f.split("=", 1)[1] for f in TASK_GIN],
            ["MODEL_DIR = '/tmp/unused'", *bindings],
            required_macros=("MODEL_DIR",),
        )

    yield parse
    gin.clear_config()


@pytest.mark.parametrize(
    "binding, named",
    [
        ("TRAIN_STEPS = 'ten'", "TRAIN_STEPS (train.train_steps) must be a positive integer, got 'ten'"),
        ("BATCH_SIZE = 8.5", "BATCH_SIZE (train.batch_size)"),
        (
            "OptimizerConfig.learning_rate = '1e-3'",
            "OptimizerConfig.learning_rate must be a finite number (or None), got '1e-3'",
        ),
        ("RATIONALE_WEIGHT = -1", "RATIONALE_WEIGHT (LossConfig.rationale_weight) must be >= 0, got -1"),
        ("LossConfig.label_smoothing = 1.0", "LossConfig.label_smoothing"),
        ("EVAL_PERIOD = None", "EVAL_PERIOD (train.eval_period)"),
        ("train.checkpoint_period = 0", "train.checkpoint_period must be a positive integer, got 0"),
        ("DssFeatureConverter.pack_encoder_length = -128", "DssFeatureConverter.pack_encoder_length"),
        ("TASK_FEATURE_LENGTHS = {'label_inputs': 'long'}", "TASK_FEATURE_LENGTHS"),
        ("PartitionConfig.rules = 'dpp'", "PartitionConfig.rules"),
        ("make_train_eval_hook.max_examples = -1", "make_train_eval_hook.max_examples must be a positive integer"),
        ("make_train_eval_hook.batch_size = 0", "make_train_eval_hook.batch_size must be a positive integer"),
        ("DecodeSettings.num_beams = 0", "DecodeSettings.num_beams must be a positive integer"),
        # TaskOptions refused these from inside gin, a traceback.
        (
            "LABEL_SOURCE = 'teachr'",
            "LABEL_SOURCE (task_options.label_source) must be one of 'gt', 'teacher', 'gt_else_teacher', "
            "got 'teachr'; set it with --gin.LABEL_SOURCE=...",
        ),
        ("task_options.train_fraction = 0", "task_options.train_fraction must be > 0, got 0"),
        ("task_options.teacher_sample = 'first'", "task_options.teacher_sample must be a sample index"),
        (
            "TASK_FEATURE_LENGTHS = {'inputs': 512, 'targets': 128}",
            "TASK_FEATURE_LENGTHS (train.task_feature_lengths) must give the DSS features' lengths (lacks "
            "'label_inputs', 'label_targets', 'rationale_inputs', 'rationale_targets'; has 'inputs', 'targets'",
        ),
        (
            "TASK_FEATURE_LENGTHS = {'label_inputs': 128, 'label_targets': 40, 'rationale_inputs': 128}",
            "(lacks 'rationale_targets')",
        ),
    ],
)
def test_every_gin_setting_is_checked_before_anything_is_built(parsed, binding, named):
    parsed(binding)
    with pytest.raises(settings.SettingError) as e:
        checks.check_gin_settings()
    assert named in str(e.value) and "\n" not in str(e.value)


def test_the_shipped_defaults_pass_the_checks(parsed):
    parsed()
    checks.check_gin_settings()


@pytest.mark.parametrize(
    "binding, said",
    [
        ("T5Config.d_modle = 64", "doesn't have a parameter named 'd_modle'; did you mean d_model?"),
        # Bindings of the earlier model idiom say what replaced them.
        ("model_config.overrides = {'d_model': 64}", "is now T5Config.dtype = 'bfloat16'"),
        ("model_config.size = 'base'", "spelled out as T5Config.<field> bindings (gin/models/*.gin)"),
    ],
)
def test_a_misspelt_or_replaced_model_binding_says_what_to_write(parsed, binding, said):
    with pytest.raises(gin_utils.GinConfigError) as e:
        parsed(binding)
    assert said in str(e.value) and "\n" not in str(e.value)


def test_the_model_files_spell_out_the_presets(parsed):
    """gin/models/<size>.gin make exactly T5 v1.1's shapes (T5Config.preset, which the HF
    parity tests pin), and a binding on top changes only its field."""
    from dss_jax import configurables
    from dss_jax.model.config import T5Config

    for size in ("tiny", "small", "base", "large", "xl", "xxl"):
        gin.clear_config()
        gin_utils.parse_gin([f"models/{size}.gin"], [])
        runtime = dict(dtype="bfloat16", remat_policy="full") if size in ("xl", "xxl") else {}
        assert configurables.model_config() == T5Config.preset(size, **runtime), size
    parsed("T5Config.d_model = 48")
    assert configurables.model_config() == T5Config.preset("tiny", d_model=48)
    with pytest.raises(configurables.ModelConfigError, match=r"^T5Config: T5Config.remat_policy='fulll'; choose"):
        parsed("T5Config.remat_policy = 'fulll'")
        configurables.model_config()


def test_an_initial_checkpoint_decides_the_shape_and_gin_only_the_run_time_fields(tmp_path):
    from dss_jax import configurables
    from dss_jax.model.config import T5Config

    trained = T5Config.preset("tiny", d_model=48, dropout_rate=0.0, remat_policy="dots")
    (tmp_path / "config.json").write_text(trained.to_json())
    gin.clear_config()
    try:
        # A model file of another shape: the checkpoint's config.json wins over it.
        gin_utils.parse_gin(["models/base.gin"], ["T5Config.dtype = 'bfloat16'", "T5Config.dropout_rate = 0.1"])
        got = configurables.model_config(checkpoint_path=str(tmp_path))
    finally:
        gin.clear_config()
    # dtype and dropout_rate as bound; remat_policy, unbound, as trained.
    assert got == trained.replace(dtype="bfloat16", dropout_rate=0.1)
