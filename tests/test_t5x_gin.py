"""T5X's own gin files (../shared/data/t5x_testdata/gin) configure the binaries: model files
give the student T5X builds, run files map onto the same macros, and what has no
equivalent is one line naming FILE:LINE (dss_jax/t5x_gin.py, docs/t5x.md)."""

import json
import logging

import pytest

import gin
from conftest import SMALL_SYNTHETIC_GIN, T5X_DATA, run_binary
from dss_jax import cli, configurables, gin_utils, losses, optimizers, settings, t5x_gin
from dss_jax.model.config import T5Config
from dss_jax.training import loop  # noqa: F401  (registers train, as the train binary does)

GIN = T5X_DATA / "gin"  # the folder above t5x/, as a T5X user's --gin_search_paths
MODELS = GIN / "t5x" / "examples" / "t5"
EXAMPLES = MODELS / "t5_1_1" / "examples"
T5_VOCAB = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
MT5_VOCAB = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
TINY = dict(d_model=8, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, d_kv=3, d_ff=16)

# What T5X builds from each model file (t5x/examples/t5/network.py): the published sizes
# (T5Config.preset), ('gelu', 'linear') a gated GELU with an untied head in v1.1 and mT5,
# ('relu',) with logits_via_embedding in v1.0. The tiny files include t5_1_1/base.gin,
# whichever folder they are in, so T5X builds all three as a v1.1 with 32128 ids.
EXPECTED = {
    **{f"t5_1_1/{size}.gin": T5Config.preset(size) for size in ("small", "base", "large", "xl", "xxl")},
    **{f"mt5/{size}.gin": T5Config.preset(size, vocab_size=250112) for size in ("small", "base", "large", "xl", "xxl")},
    **{
        f"t5_1_0/{name}.gin": T5Config.preset(size, "t5.1.0")
        for name, size in (("small", "small"), ("base", "base"), ("large", "large"), ("3B", "xl"), ("11B", "xxl"))
    },
    **{f"{family}/tiny.gin": T5Config.preset("tiny", **TINY) for family in ("t5_1_1", "t5_1_0", "mt5")},
}


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def parse(*gin_files, bindings=(), required=()):
    gin_utils.parse_gin([str(f) for f in gin_files], list(bindings), [str(GIN)], required)


@pytest.mark.parametrize("name", sorted(str(p.relative_to(MODELS)) for p in MODELS.glob("*/*.gin")))
def test_each_t5x_model_file_configures_the_student_t5x_builds_from_it(name):
    parse(MODELS / name, bindings=["DROPOUT_RATE = 0.0"])
    expected = EXPECTED[name].replace(dtype="bfloat16", dropout_rate=0.0)
    assert configurables.model_config() == expected
    assert losses.LossConfig() == losses.LossConfig(z_loss=1e-4, label_smoothing=0.0)
    assert optimizers.OptimizerConfig() == optimizers.OptimizerConfig(name="adafactor", adafactor_decay_rate=0.8)
    vocabulary = MT5_VOCAB if name.startswith("mt5/") and name != "mt5/tiny.gin" else T5_VOCAB
    assert gin.query_parameter("task_vocabulary.spm_path") == vocabulary  # gs:// is read through dss_jax.files


def test_t5_1_1_base_gives_what_our_own_base_model_file_gives():
    parse(MODELS / "t5_1_1" / "base.gin", bindings=["DROPOUT_RATE = 0.1"])
    t5x_config = configurables.model_config()
    gin.clear_config()
    parse("models/base.gin")
    assert t5x_config == configurables.model_config().replace(dtype="bfloat16")  # T5X computes in bfloat16


def test_t5_1_0_is_relu_with_the_tied_head_scaled_as_t5x_divides_its_logits():
    parse(MODELS / "t5_1_0" / "base.gin", bindings=["DROPOUT_RATE = 0.1"])
    config = configurables.model_config()
    assert (config.feed_forward, config.tie_word_embeddings, config.scales_decoder_output) == ("relu", True, True)
    assert (config.d_model, config.d_ff, config.num_heads, config.d_kv) == (768, 3072, 12, 64)


def test_a_checkpoints_model_takes_the_t5x_files_dropout_and_dtype_through_their_macros(tmp_path):
    # With INITIAL_CHECKPOINT_PATH the checkpoint's config.json decides the shape; the
    # run-time fields bound on T5Config apply over it, here through T5X's %DROPOUT_RATE.
    checkpoint = tmp_path / "converted"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(T5Config.preset("tiny").to_json())
    parse(MODELS / "t5_1_1" / "small.gin", bindings=["DROPOUT_RATE = 0.05"])
    config = configurables.model_config(checkpoint_path=str(checkpoint))
    assert config == T5Config.preset("tiny").replace(dropout_rate=0.05, dtype="bfloat16")


def test_macros_and_t5x_bindings_on_the_command_line_override_the_files():
    parse(
        MODELS / "mt5" / "small.gin",
        bindings=[
            "DROPOUT_RATE = 0.2",
            "Z_LOSS = 0.0",
            "network.T5Config.emb_dim = 16",
            "network.T5Config.mlp_activations = ('relu',)",
            "seqio.SentencePieceVocabulary.sentencepiece_model_file = '/vocabs/spiece.model'",
            "T5Config.num_heads = 2",  # dss_jax's own names too
        ],
    )
    config = configurables.model_config()
    assert (config.d_model, config.feed_forward, config.num_heads, config.dropout_rate) == (16, "relu", 2, 0.2)
    assert config.vocab_size == 250112 and losses.LossConfig().z_loss == 0.0
    assert gin.query_parameter("task_vocabulary.spm_path") == "/vocabs/spiece.model"


def test_a_t5x_finetuning_example_maps_its_run_macros_onto_the_train_binary():
    # base_wmt_finetune.gin: include finetune.gin and t5_1_1/base.gin, then its own macros.
    parse(
        EXAMPLES / "base_wmt_finetune.gin",
        "tasks/synthetic.gin",  # a dss_jax task after T5X's files, as a user gives it
        bindings=["MODEL_DIR = '/tmp/run'"],
        required=("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS", "BATCH_SIZE"),
    )
    values = {
        name: settings.gin_values([name])[0].get(name)
        for name in (
            "train.model_dir",
            "train.task_name",
            "train.batch_size",
            "train.eval_period",
            "train.checkpoint_period",
            "train.initial_checkpoint_path",
            "train.eval_batches_limit",
            "LossConfig.rationale_weight",  # gin/runs/train.gin came in with T5X's train.py run file
            "DecodeSettings.num_beams",
            "DecodeSettings.method",
            "make_train_eval_hook.max_examples",
        )
    }
    assert values == {
        "train.model_dir": "/tmp/run",
        "train.task_name": "dss_synthetic",
        "train.batch_size": 128,
        "train.eval_period": 100,
        "train.checkpoint_period": 5000,
        "train.initial_checkpoint_path": "gs://t5-data/pretrained_models/t5x/t5_1_1_base/checkpoint_1000000",
        "train.eval_batches_limit": 20,
        "LossConfig.rationale_weight": 1.0,
        "DecodeSettings.num_beams": 4,
        "DecodeSettings.method": "beam",
        "make_train_eval_hook.max_examples": None,  # T5X's EVALUATOR_NUM_EXAMPLES: all
    }
    assert configurables.model_config().dropout_rate == 0.1
    assert optimizers.OptimizerConfig().learning_rate == 0.001  # finetune.gin's constant 1e-3
    assert optimizers.OptimizerConfig().schedule == "constant" and optimizers.OptimizerConfig().warmup_steps == 0
    # T5X's TRAIN_STEPS counts the checkpoint's 1M steps; dss_jax's converted checkpoints keep none.
    with pytest.raises(cli.UserError, match=r"TRAIN_STEPS = 1020000 counts the steps of INITIAL_CHECKPOINT_PATH"):
        t5x_gin.t5x_train_steps()
    gin.bind_parameter("TRAIN_STEPS_RELATIVE/macro.value", 20000)
    assert t5x_gin.t5x_train_steps() == 20000


def test_a_t5x_pretraining_example_maps_its_rsqrt_schedule_and_partitions():
    parse(EXAMPLES / "base_wmt_from_scratch.gin", "tasks/synthetic.gin", bindings=["MODEL_DIR = '/tmp/run'"])
    # 'constant * rsqrt_decay', base 1.0, warmup 10k: 1/sqrt(max(step, 10k)).
    config = optimizers.OptimizerConfig()
    assert (config.schedule, config.learning_rate, config.warmup_steps) == ("rsqrt", 0.01, 10000)
    schedule = optimizers.make_schedule(config, 50000)
    assert float(schedule(0)) == pytest.approx(0.01) and float(schedule(39999)) == pytest.approx(1 / 200)
    assert t5x_gin.t5x_train_steps() == 50000  # from scratch, T5X's total is the run's
    assert gin.query_parameter("PartitionConfig.num_partitions") == 2
    assert gin.query_parameter("train.initial_checkpoint_path") is None  # pretrain.gin restores nothing


def test_a_required_macro_left_unset_names_the_t5x_file_that_requires_it():
    with pytest.raises(gin_utils.GinConfigError) as e:
        parse(MODELS / "t5_1_1" / "base.gin")
    assert str(e.value) == (
        "gin macro(s) DROPOUT_RATE not set; pass e.g. --gin.DROPOUT_RATE=... "
        f"(%gin.REQUIRED at {MODELS / 't5_1_1' / 'base.gin'}:17)"
    )


def test_an_optimizer_dss_jax_lacks_is_refused_naming_the_t5x_line():
    with pytest.raises(gin_utils.GinConfigError) as e:
        parse(EXAMPLES / "base_wmt_from_scratch_adamw.gin")
    assert str(e.value).startswith(
        f"{EXAMPLES / 'base_wmt_from_scratch_adamw.gin'}:15: OPTIMIZER = @optimizers.chain(): dss_jax has no "
        "equivalent of @t5x.optimizers.chain()"
    )


def test_infrastructure_with_no_effect_here_is_one_logged_line_each(caplog, tmp_path):
    # base_wmt19_ende_train.gin sets use_hardware_rng again over finetune.gin's: one line, the last.
    with caplog.at_level(logging.INFO):
        parse(EXAMPLES / "base_wmt19_ende_train.gin", "tasks/synthetic.gin", bindings=["MODEL_DIR = '/tmp/run'"])
    lines = [r.getMessage() for r in caplog.records if "use_hardware_rng" in r.getMessage()]
    assert lines == [
        f"{EXAMPLES / 'base_wmt19_ende_train.gin'}:46: train_script.train.use_hardware_rng = True: no effect in "
        "dss_jax (dss_jax's dropout RNG is train.dropout_rng ('threefry' or 'rbg')); ignored"
    ]
    assert gin.query_parameter("train.num_microbatches") == 2 and gin.query_parameter("train.keep_checkpoints") == 1


def test_an_unsupported_binding_stops_the_train_binary_with_one_line_naming_it(tmp_path):
    user_file = tmp_path / "my_model.gin"
    user_file.write_text(
        "from t5x import adafactor\ninclude 't5x/examples/t5/t5_1_1/tiny.gin'\n\nadafactor.Adafactor.beta1 = 0.9\n"
    )
    model_dir = tmp_path / "run"
    r = run_binary(
        "dss_jax.train",
        f"--gin_search_paths={GIN}",
        f"--gin_file={user_file}",
        "--gin_file=runs/train.gin",
        "--gin_file=tasks/synthetic.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.DROPOUT_RATE=0.0",
        DSS_CACHE_DIR=tmp_path / "cache",
    )
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        f"train: error: {user_file}:4: adafactor.Adafactor.beta1 = 0.9: dss_jax's Adafactor has no momentum; "
        "use None, or optimizers/adamw.gin"
    ], r.stderr[-3000:]
    assert not model_dir.exists() and not (tmp_path / "cache").exists()


def test_the_train_binary_trains_the_student_a_t5x_model_file_configures(tmp_path):
    mini = tmp_path / "mini.gin"
    mini.write_text(SMALL_SYNTHETIC_GIN)
    model_dir = tmp_path / "run"
    run_binary(
        "dss_jax.train",
        f"--gin_search_paths={GIN}",
        "--gin_file=t5x/examples/t5/t5_1_1/tiny.gin",
        "--gin_file=runs/train.gin",
        "--gin_file=tasks/synthetic.gin",
        f"--gin_file={mini}",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.TRAIN_STEPS=2",
        "--gin.BATCH_SIZE=4",
        "--gin.DROPOUT_RATE=0.0",
        "--gin.EVAL_PERIOD=0",
        "--gin.train.eval_hook=None",
        # The synthetic task's own vocabulary instead of T5's on gs:// (no network here).
        "--gin.seqio.SentencePieceVocabulary.sentencepiece_model_file=None",
        "--gin.network.T5Config.dtype='float32'",  # T5X's name on the command line; compiles faster on CPU
        check=True,
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
    )
    config = json.loads((model_dir / "config.json").read_text())
    shape = {k: config[k] for k in ("d_model", "num_heads", "d_kv", "d_ff", "num_encoder_layers", "feed_forward")}
    assert shape == {**{k: v for k, v in TINY.items() if k in shape}, "feed_forward": "gated-gelu"}
    assert (config["dtype"], config["vocab_size"]) == ("float32", 1024)
    assert (model_dir / "checkpoint_2").is_dir()


SCALABLE_TINY = """\
# A scalable_t5 model file as T5X's examples/scalable_t5/t5_1_1/*.gin are written
# (t5x/examples/scalable_t5/network.py): every layer owns its relative-position table.
from __gin__ import dynamic_registration
include 't5x/examples/t5/t5_1_1/base.gin'  # the vocabulary, loss and optimizer

from t5x import models
from t5x.examples.scalable_t5 import network

MODEL = @models.EncoderDecoderModel()
models.EncoderDecoderModel.module = @network.Transformer()
network.Transformer.config = @network.T5Config()
network.T5Config:
  vocab_size = 32128
  dtype = 'float32'
  emb_dim = 8
  num_heads = 4
  num_encoder_layers = 2
  num_decoder_layers = 2
  head_dim = 3
  mlp_dim = 16
  mlp_activations = ('gelu', 'linear')
  dropout_rate = %DROPOUT_RATE
  logits_via_embedding = False
  scan_layers = True
  param_scan_axis = 1
  remat_policy = 'minimal'
"""


def test_a_scalable_t5_model_file_configures_a_student_with_a_table_per_layer(tmp_path, caplog):
    model_file = tmp_path / "scalable_tiny.gin"
    model_file.write_text(SCALABLE_TINY)
    with caplog.at_level(logging.INFO):
        parse(model_file, bindings=["DROPOUT_RATE = 0.0"])
    expected = T5Config.preset("tiny", **TINY).replace(
        dropout_rate=0.0, relative_attention_per_layer=True, remat_policy="minimal"
    )
    assert configurables.model_config() == expected
    assert "scan_layers = True: no effect in dss_jax" in caplog.text  # one line, not dropped silently
    gin.clear_config()
    model_file.write_text(SCALABLE_TINY.replace("  scan_layers = True", "  scan_layers = True\n  unknown_knob = 3"))
    with pytest.raises(gin_utils.GinConfigError, match=r"scalable_tiny.gin:\d+: .*unknown_knob"):
        parse(model_file, bindings=["DROPOUT_RATE = 0.0"])
