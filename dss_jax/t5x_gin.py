"""A T5X user's gin files configure dss_jax's binaries, translated as they are read.

    python -m dss_jax.train --gin_search_paths=/path/to/t5x_checkout \
      --gin_file=t5x/examples/t5/t5_1_1/base.gin --gin_file=runs/train.gin \
      --gin_file=tasks/synthetic.gin --gin.DROPOUT_RATE=0.1 --gin.MODEL_DIR="'/tmp/run'"

`gin_utils.parse_gin` hands each file that `is_t5x_file` (it imports t5x, `__main__` or
`__gin__`, or includes `t5x/...`) to `parse_file`, which reads it and its includes
statement by statement and binds the dss_jax equivalent of each T5X binding (`TABLE`:
`network.T5Config.emb_dim` -> `T5Config.d_model`, `models.EncoderDecoderModel.z_loss` ->
`LossConfig.z_loss`, ...). T5X's macros keep their names, so `--gin.DROPOUT_RATE=0.0`
overrides a file as with our own files; `--gin.network.T5Config.emb_dim=16` is translated
too. A T5X run file that configures `train` brings in gin/runs/train.gin first. A binding
that would change what is trained and has no equivalent is refused with one line naming
FILE:LINE (`GinConfigError`); infrastructure with no effect here (loggers, caches, the
hardware RNG) is one logged line each. docs/t5x.md lists every binding and what it becomes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Callable, Optional

import gin
from dss_jax import files, gin_utils
from dss_jax.cli import UserError
from gin import config_parser

GinConfigError = gin_utils.GinConfigError

# Modules T5X files import that are not installed here; nothing of theirs is imported.
_T5X_MODULES = ("t5x", "__main__", "__gin__", "seqio", "optax", "t5", "flax", "jax")
# The dss_jax modules whose configurables the translation binds.
_IMPORTS = (
    "dss_jax.configurables",
    "dss_jax.losses",
    "dss_jax.optimizers",
    "dss_jax.partitioning",
    "dss_jax.prediction",
    "dss_jax.data.tasks",
    "dss_jax.t5x_gin",
)
# T5X's binaries (`import __main__ as train_script`): the dss_jax run file that stands in.
_RUN_FILES = {"train": "runs/train.gin"}


# --- values as T5X files write them --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ref:
    """`@scope/name()` (evaluate) or `@scope/name` in a value, with `name` as written."""

    name: str
    evaluate: bool

    def __repr__(self) -> str:
        return f"@{self.name}{'()' if self.evaluate else ''}"


@dataclasses.dataclass(frozen=True)
class Macro:
    name: str

    def __repr__(self) -> str:
        return f"%{self.name}"


class _Capture(config_parser.ParserDelegate):
    def configurable_reference(self, scoped_name, evaluate):
        return Ref(scoped_name, evaluate)

    def macro(self, name):
        return Macro(name)


@dataclasses.dataclass
class Binding:
    """One T5X binding: `where` (FILE:LINE or the command line), its text, and its parts
    with the configurable's module spelled out (`t5x.examples.t5.network.T5Config`)."""

    where: str
    text: str
    scope: str
    configurable: str  # full name; the macro's name for a macro
    param: str  # '' for a macro
    value: Any


@dataclasses.dataclass
class Deferred:
    """A value dss_jax has built in, checked once every file and binding is read (a macro
    may be set again later): `check` says what differs, or None; refused if `error`,
    else logged at `level`."""

    binding: Binding
    check: Callable[[Any], Optional[str]]
    error: bool
    level: int = logging.WARNING


# --- what each T5X binding becomes ----------------------------------------------------


class Session:
    """What one parse_gin call has read of T5X files: the module aliases (gin's imports hold
    for the files read after them and for command-line bindings), whether a dss_jax run file
    was brought in, the checks left for `finish`, and the macros T5X's bindings read."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.run_included = False
        self.imported = False
        # The last check of each T5X setting: a later file or binding replaces an earlier one.
        self.deferred: dict[tuple[str, str, str], Deferred] = {}
        self.macros_read: set[str] = set()  # macros T5X's bindings read, whatever they became

    def defer(self, b: Binding, check: Callable[[Any], Optional[str]], error: bool, level: int = logging.WARNING):
        self.deferred[(b.scope, b.configurable, b.param)] = Deferred(b, check, error, level)

    def bind(self, text: str, binding: Binding) -> None:
        """Parses dss_jax gin `text` for `binding`, naming the T5X binding if gin refuses it."""
        try:
            with gin_utils._one_line_errors(binding=text):
                gin.parse_config(text)
        except GinConfigError as e:
            raise GinConfigError(f"{binding.where}: {binding.text}: {e}") from e

    def note(self, binding: Binding, what: str, level: int = logging.WARNING) -> None:
        logging.log(level, "%s: %s: %s", binding.where, binding.text, what)


def refuse(binding: Binding, what: str) -> GinConfigError:
    return GinConfigError(f"{binding.where}: {binding.text}: {what}")


def _to(target: str) -> Callable[[Binding, Session], None]:
    """The value as it is, bound on a dss_jax setting."""

    def handle(b: Binding, session: Session) -> None:
        session.bind(f"{target} = {_render(b, session)}", b)

    return handle


def _structure(*expected: str, what: str) -> Callable[[Binding, Session], None]:
    """A binding that wires T5X's objects together as dss_jax's are wired already: honoured
    when its value is the usual one, refused otherwise."""

    def handle(b: Binding, session: Session) -> None:
        if _canonical(b.value, session) not in expected:
            raise refuse(b, f"dss_jax wires this as T5X's default ({' or '.join(expected)}) only; {what}")

    return handle


def _scalable_config(b: Binding, session: Session) -> None:
    """scalable_t5's Transformer: dss_jax's T5 with a relative-position table in every layer."""
    _structure(f"@{SCALABLE}.T5Config()", what="the model is configured by T5Config")(b, session)
    session.bind("T5Config.relative_attention_per_layer = True", b)


def _honoured_if(accept: Callable[[Any], bool], what: str, error: bool) -> Callable[[Binding, Session], None]:
    """A value dss_jax has built in: nothing to bind when it is that value (a macro's is
    checked once every file and binding is read); otherwise refused (`error`) or logged."""

    def check(value: Any) -> Optional[str]:
        return None if accept(value) else what

    def handle(b: Binding, session: Session) -> None:
        session.defer(b, check, error)

    return handle


def _ignored(what: str) -> Callable[[Binding, Session], None]:
    def handle(b: Binding, session: Session) -> None:
        session.defer(b, lambda value: f"no effect in dss_jax ({what}); ignored", error=False, level=logging.INFO)

    return handle


def _mlp_activations(b: Binding, session: Session) -> None:
    """T5X's MlpBlock multiplies one dense projection per activation: ('gelu', 'linear')
    is the gated GELU of T5 v1.1 (flax's gelu is the tanh approximation, as ours)."""
    value = b.value
    if isinstance(value, list):
        value = tuple(value)
    names = {"gelu": "gelu_new", "relu": "relu", "silu": "silu", "swish": "swish"}
    if isinstance(value, tuple) and len(value) == 1 and value[0] in names:
        feed_forward = names[value[0]]
    elif isinstance(value, tuple) and len(value) == 2 and value[0] in names and value[1] == "linear":
        feed_forward = "gated-" + ("gelu" if value[0] == "gelu" else names[value[0]])
    else:
        raise refuse(
            b,
            "dss_jax's feed-forward is one activation, ('ACT',), or a gated one, ('ACT', 'linear'), with ACT "
            f"one of {', '.join(names)}; use one of those (or bind T5Config.feed_forward)",
        )
    session.bind(f"T5Config.feed_forward = {feed_forward!r}", b)


def _num_decodes(b: Binding, session: Session) -> None:
    """T5X's EncoderDecoderModel decodes with beam search; num_decodes is the beam size."""
    if isinstance(b.value, bool) or not isinstance(b.value, int) or b.value < 1:
        raise refuse(b, "give the beam size as a positive integer")
    method = "'beam'" if b.value > 1 else "'greedy'"
    session.bind(f"DecodeSettings.method = {method}", b)
    session.bind(f"DecodeSettings.num_beams = {b.value}", b)
    session.defer(b, _beam_note, error=False)


def _beam_note(value: Any) -> Optional[str]:
    if value == 1:
        return None
    return (
        "beam search with DecodeSettings.length_penalty (score / length ** penalty, default 1.0), not T5X's "
        "brevity penalty (alpha 0.6); set --gin.DecodeSettings.length_penalty to change it"
    )


def _learning_rate(param: str) -> Callable[[Binding, Session], None]:
    def handle(b: Binding, session: Session) -> None:
        if param == "factors" and isinstance(b.value, str):
            try:
                t5x_schedule(b.value, 1.0, 1)  # refuses what has no equivalent here, naming the line
            except UserError as e:
                raise refuse(b, str(e)) from None
        session.bind(f"t5x_learning_rate.{param} = {_render(b, session)}", b)
        for field in ("schedule", "learning_rate", "warmup_steps"):
            session.bind(f"{field}/t5x_learning_rate.output = {field!r}", b)
            session.bind(f"OptimizerConfig.{field} = @{field}/t5x_learning_rate()", b)

    return handle


def _train_steps(param: str) -> Callable[[Binding, Session], None]:
    def handle(b: Binding, session: Session) -> None:
        session.bind(f"t5x_train_steps.{param} = {_render(b, session)}", b)
        session.bind("t5x_train_steps.initial_checkpoint_path = %INITIAL_CHECKPOINT_PATH", b)
        session.bind("train.train_steps = @t5x_train_steps()", b)

    return handle


def _loss_normalizing_factor(b: Binding, session: Session) -> None:
    session.bind(f"t5x_loss_normalization.factor = {_render(b, session)}", b)
    session.bind("LossConfig.normalization = @t5x_loss_normalization()", b)
    session.defer(b, _normalization_note, error=False)


# T5X's other binaries (`import __main__ as eval_script`): what dss_jax has instead.
_OTHER_BINARIES = {
    "evaluate": (
        "eval.py",
        "python -m dss_jax.eval with gin/runs/eval.gin, whose macros have the same names (the model and its "
        "vocabulary come from the checkpoint)",
    ),
    "infer": (
        "infer.py",
        "python -m dss_jax.infer with gin/runs/infer.gin (the model and its vocabulary come from the checkpoint)",
    ),
    "precompile": ("train.py's precompile", "python -m dss_jax.aot, which compiles a train step ahead of time"),
}


def _main(b: Binding, session: Session) -> None:
    function = b.configurable.split(".")[1]
    script, instead = _OTHER_BINARIES.get(function, (f"{function}", "a T5X train run file (finetune.gin)"))
    raise refuse(b, f"T5X's {script} run files are not translated; use {instead}")


def _eval_dataset(b: Binding, session: Session) -> None:
    """T5X's train evaluates teacher-forced on train_eval_dataset_cfg and by decoding on
    infer_eval_dataset_cfg, either None for none; dss_jax's train.eval_hook decodes."""
    scope = "infer_eval" if b.param.startswith("infer_eval") else "train_eval"
    value = _canonical(b.value, session)
    if value == f"@{scope}/{DATASET}()":
        return
    if value != "None":
        raise refuse(b, f"dss_jax evaluates the task that is trained; use @{scope}/utils.DatasetConfig() or None")
    if scope == "infer_eval":
        session.bind("train.eval_hook = None", b)
    else:
        session.defer(
            b,
            lambda v: "dss_jax evaluates teacher-forced every EVAL_PERIOD steps; EVAL_PERIOD = 0 turns it off",
            error=False,
        )


def _random_seed(b: Binding, session: Session) -> None:
    session.bind(f"t5x_seed.random_seed = {_render(b, session)}", b)
    session.bind("train.seed = @t5x_seed()", b)
    session.defer(b, _seed_note, error=False)


def _seed_note(value: Any) -> Optional[str]:
    if value is not None:
        return None
    return "T5X draws a new seed each run; dss_jax trains with seed 0 so that a run repeats: set RANDOM_SEED to choose"


def _restore(b: Binding, session: Session) -> None:
    """T5X restores INITIAL_CHECKPOINT_PATH (finetune.gin) or nothing (pretrain.gin: [],
    or CheckpointConfig.restore = None)."""
    value = _canonical(b.value, session)
    if value in ("[]", "None"):
        session.bind("train.initial_checkpoint_path = None", b)
    elif value not in ("%INITIAL_CHECKPOINT_PATH", "@t5x.utils.RestoreCheckpointConfig()"):
        raise refuse(b, "dss_jax starts from INITIAL_CHECKPOINT_PATH; set that macro instead")


NET = "t5x.examples.t5.network"
SCALABLE = "t5x.examples.scalable_t5.network"  # its every layer owns a relative-position table
MODELS = "t5x.models.EncoderDecoderModel"
ADAFACTOR = "t5x.adafactor.Adafactor"
DATASET = "t5x.utils.DatasetConfig"
SCHEDULER = "t5x.utils.create_learning_rate_scheduler"
TRAIN = "__main__.train"


def _is(*values: Any) -> Callable[[Any], bool]:
    return lambda v: any(v == x and type(v) is type(x) for x in values)


# (scope, configurable, parameter) -> what it becomes; scope '*' matches any scope, and
# parameter '*' any parameter the table does not name. Macros are bound as they are.
TABLE: dict[tuple[str, str, str], Callable[[Binding, Session], None]] = {
    # The model file: network.T5Config (t5x/examples/t5/network.py).
    ("", f"{NET}.T5Config", "vocab_size"): _to("T5Config.vocab_size"),
    ("", f"{NET}.T5Config", "dtype"): _to("T5Config.dtype"),
    ("", f"{NET}.T5Config", "emb_dim"): _to("T5Config.d_model"),
    ("", f"{NET}.T5Config", "num_heads"): _to("T5Config.num_heads"),
    ("", f"{NET}.T5Config", "num_encoder_layers"): _to("T5Config.num_encoder_layers"),
    ("", f"{NET}.T5Config", "num_decoder_layers"): _to("T5Config.num_decoder_layers"),
    ("", f"{NET}.T5Config", "head_dim"): _to("T5Config.d_kv"),
    ("", f"{NET}.T5Config", "mlp_dim"): _to("T5Config.d_ff"),
    ("", f"{NET}.T5Config", "mlp_activations"): _mlp_activations,
    ("", f"{NET}.T5Config", "dropout_rate"): _to("T5Config.dropout_rate"),
    # T5X's tied head divides the logits by sqrt(emb_dim); dss_jax's scales the decoder
    # output by the same factor whenever the embedding is tied.
    ("", f"{NET}.T5Config", "logits_via_embedding"): _to("T5Config.tie_word_embeddings"),
    ("", f"{NET}.T5Config", "float32_attention_logits"): _honoured_if(
        _is(True), "dss_jax computes attention logits in float32 whatever the dtype", error=False
    ),
    ("", f"{NET}.Transformer", "config"): _structure(f"@{NET}.T5Config()", what="the model is configured by T5Config"),
    ("", f"{SCALABLE}.Transformer", "config"): _scalable_config,
    ("", MODELS, "module"): _structure(
        f"@{NET}.Transformer()", f"@{SCALABLE}.Transformer()", what="the student is dss_jax's T5"
    ),
    ("", MODELS, "input_vocabulary"): _structure("%VOCABULARY", what="inputs and targets share the task's vocabulary"),
    ("", MODELS, "output_vocabulary"): _structure("%VOCABULARY", what="inputs and targets share the task's vocabulary"),
    ("", MODELS, "optimizer_def"): _structure("%OPTIMIZER", what="the optimizer is OptimizerConfig"),
    ("", MODELS, "z_loss"): _to("LossConfig.z_loss"),
    ("", MODELS, "label_smoothing"): _to("LossConfig.label_smoothing"),
    ("", MODELS, "loss_normalizing_factor"): _loss_normalizing_factor,
    ("", f"{MODELS}.predict_batch_with_aux", "num_decodes"): _num_decodes,
    ("", "seqio.SentencePieceVocabulary", "sentencepiece_model_file"): _to("task_vocabulary.spm_path"),
    # The optimizer: T5X's Adafactor as dss_jax's (optimizers.py) has it built in.
    ("", ADAFACTOR, "decay_rate"): _to("OptimizerConfig.adafactor_decay_rate"),
    ("", ADAFACTOR, "clipping_threshold"): _to("OptimizerConfig.adafactor_clipping_threshold"),
    ("", ADAFACTOR, "weight_decay_rate"): _to("OptimizerConfig.weight_decay"),
    ("", ADAFACTOR, "step_offset"): _honoured_if(_is(0), "dss_jax's Adafactor has no step offset; use 0", error=True),
    ("", ADAFACTOR, "multiply_by_parameter_scale"): _honoured_if(
        _is(True), "dss_jax's Adafactor always scales by the parameter's scale; use True", error=True
    ),
    ("", ADAFACTOR, "beta1"): _honoured_if(
        _is(None), "dss_jax's Adafactor has no momentum; use None, or optimizers/adamw.gin", error=True
    ),
    ("", ADAFACTOR, "factored"): _honoured_if(_is(True), "dss_jax's Adafactor always factors; use True", error=True),
    ("", ADAFACTOR, "epsilon1"): _honoured_if(_is(1e-30), "dss_jax's Adafactor has epsilon1 1e-30", error=True),
    ("", ADAFACTOR, "epsilon2"): _honoured_if(_is(1e-3), "dss_jax's Adafactor has epsilon2 1e-3", error=True),
    ("", ADAFACTOR, "min_dim_size_to_factor"): _honoured_if(
        _is(128), "dss_jax's Adafactor factors dimensions of 128 or more", error=True
    ),
    ("", ADAFACTOR, "logical_factor_rules"): _structure(
        "@t5x.adafactor.standard_logical_factor_rules()",
        what="dss_jax factors attention kernels as [embed, heads*kv] matrices, as these rules do",
    ),
    # The learning rate (t5x/utils.py create_learning_rate_scheduler), via t5x_learning_rate.
    ("", SCHEDULER, "factors"): _learning_rate("factors"),
    ("", SCHEDULER, "base_learning_rate"): _learning_rate("base_learning_rate"),
    ("", SCHEDULER, "warmup_steps"): _learning_rate("warmup_steps"),
    ("", SCHEDULER, "step_offset"): _honoured_if(_is(0), "dss_jax's schedules have no step offset; use 0", error=True),
    ("", SCHEDULER, "min_learning_rate"): _ignored("dss_jax's supported schedules never fall below it"),
    ("", "t5x.trainer.Trainer", "num_microbatches"): _to("train.num_microbatches"),
    ("", "t5x.trainer.Trainer", "learning_rate_fn"): _structure(
        f"@{SCHEDULER}()", what="the learning rate is OptimizerConfig's schedule"
    ),
    # The run file: configs/runs/{finetune,pretrain}.gin's train_script.train.
    ("", TRAIN, "model"): _structure("%MODEL", what="the model is model_config's (T5Config)"),
    ("", TRAIN, "model_dir"): _to("train.model_dir"),
    ("", TRAIN, "total_steps"): _train_steps("total_steps"),
    ("", TRAIN, "relative_steps"): _train_steps("relative_steps"),
    ("", TRAIN, "eval_period"): _to("train.eval_period"),
    ("", TRAIN, "eval_steps"): _to("train.eval_batches_limit"),
    ("", TRAIN, "stats_period"): _to("train.log_period"),
    ("", TRAIN, "random_seed"): _random_seed,
    ("", TRAIN, "use_hardware_rng"): _ignored("dss_jax's dropout RNG is train.dropout_rng ('threefry' or 'rbg')"),
    ("", TRAIN, "summarize_config_fn"): _ignored("dss_jax writes MODEL_DIR/config.gin itself"),
    ("", TRAIN, "inference_evaluator_cls"): _structure(
        "@seqio.Evaluator", what="decoding evaluations are train.eval_hook's"
    ),
    ("", TRAIN, "partitioner"): _structure("@t5x.partitioning.PjitPartitioner()", what="see PartitionConfig"),
    ("", TRAIN, "trainer_cls"): _structure("@t5x.trainer.Trainer", what="dss_jax's train step"),
    ("", TRAIN, "checkpoint_cfg"): _structure("@t5x.utils.CheckpointConfig()", what="see train.checkpoint_period"),
    ("", TRAIN, "train_dataset_cfg"): _structure(f"@train/{DATASET}()", what="the task is MIXTURE_OR_TASK_NAME"),
    ("", TRAIN, "train_eval_dataset_cfg"): _eval_dataset,
    ("", TRAIN, "infer_eval_dataset_cfg"): _eval_dataset,
    ("", TRAIN, "run_eval_before_training"): _ignored("dss_jax evaluates every EVAL_PERIOD steps"),
    ("", TRAIN, "actions"): _ignored("dss_jax stops on a non-finite loss itself"),
    ("", "t5x.trainer.TerminateOnNanAction", "*"): _ignored("dss_jax stops on a non-finite loss itself"),
    ("train", DATASET, "mixture_or_task_name"): _to("train.task_name"),
    ("train", DATASET, "task_feature_lengths"): _to("train.task_feature_lengths"),
    ("train", DATASET, "batch_size"): _to("train.batch_size"),
    ("train", DATASET, "split"): _honoured_if(_is("train"), "dss_jax trains on the 'train' split", error=True),
    ("train", DATASET, "shuffle"): _honoured_if(
        _is(True), "dss_jax always shuffles its training examples", error=False
    ),
    ("train_eval", DATASET, "split"): _to("train.eval_split"),
    ("infer_eval", DATASET, "split"): _to("make_train_eval_hook.split"),
    ("infer_eval", DATASET, "batch_size"): _to("make_train_eval_hook.batch_size"),
    ("*", DATASET, "mixture_or_task_name"): _structure(
        "%MIXTURE_OR_TASK_NAME", what="evaluations use the task that is trained"
    ),
    ("*", DATASET, "task_feature_lengths"): _structure(
        "%TASK_FEATURE_LENGTHS", "None", what="evaluations use TASK_FEATURE_LENGTHS"
    ),
    ("*", DATASET, "module"): _honoured_if(
        _is(None), "dss_jax imports no task module by name: add `import MODULE` to a gin file", error=False
    ),
    ("*", DATASET, "*"): _ignored("SeqIO dataset caching, packing and seeds are dss_jax's own"),
    ("", "t5x.utils.CheckpointConfig", "restore"): _restore,
    ("", "t5x.utils.CheckpointConfig", "save"): _structure(
        "@t5x.utils.SaveCheckpointConfig()", what="see train.checkpoint_period"
    ),
    ("", "t5x.utils.RestoreCheckpointConfig", "path"): _restore,
    ("", "t5x.utils.RestoreCheckpointConfig", "mode"): _honoured_if(
        _is("specific"), "INITIAL_CHECKPOINT_PATH is one checkpoint", error=True
    ),
    ("", "t5x.utils.RestoreCheckpointConfig", "dtype"): _honoured_if(
        _is("float32"), "dss_jax restores parameters as T5Config.param_dtype", error=False
    ),
    ("", "t5x.utils.SaveCheckpointConfig", "period"): _to("train.checkpoint_period"),
    ("", "t5x.utils.SaveCheckpointConfig", "keep"): _to("train.keep_checkpoints"),
    ("", "t5x.utils.SaveCheckpointConfig", "dtype"): _honoured_if(
        _is("float32"), "dss_jax saves parameters as T5Config.param_dtype", error=False
    ),
    ("", "t5x.utils.SaveCheckpointConfig", "save_dataset"): _ignored(
        "dss_jax's checkpoints always hold the input position"
    ),
    ("", "t5x.partitioning.PjitPartitioner", "num_partitions"): _to("PartitionConfig.num_partitions"),
    ("", "t5x.partitioning.PjitPartitioner", "logical_axis_rules"): _structure(
        "@t5x.partitioning.standard_logical_axis_rules()", what="the rules are PartitionConfig.rules"
    ),
    ("", "t5x.partitioning.PjitPartitioner", "model_parallel_submesh"): _honoured_if(
        _is(None), "dss_jax lays the model axis over PartitionConfig.num_partitions devices", error=False
    ),
    ("", "seqio.Evaluator", "num_examples"): _to("make_train_eval_hook.max_examples"),
    ("", "seqio.Evaluator", "*"): _ignored("SeqIO's evaluation loggers and caches"),
    ("", "seqio.JSONLogger", "*"): _ignored("dss_jax's evaluations write predictions.jsonl"),
}

# scalable_t5's T5Config: examples/t5's fields, plus how its layers are laid out and rematerialised.
TABLE.update(
    {("", f"{SCALABLE}.T5Config", param): handle for (_, c, param), handle in TABLE.items() if c == f"{NET}.T5Config"}
)
TABLE[("", f"{SCALABLE}.T5Config", "remat_policy")] = _to("T5Config.remat_policy")
TABLE[("", f"{SCALABLE}.T5Config", "scan_layers")] = _ignored(
    "dss_jax runs the layers one after another (the same model; checkpoints of either import)"
)
TABLE[("", f"{SCALABLE}.T5Config", "param_scan_axis")] = _ignored("where scanned checkpoints keep their layers axis")

# Configurables whose unknown parameters change what is trained: refused, not logged.
_TRAINED = (
    "t5x.examples.",  # every T5X network (scalable_t5, decoder_only, ...), not only t5's
    "t5x.models.",
    "t5x.adafactor.",
    "t5x.optimizers.",
    "t5x.losses.",
    "t5x.trainer.Trainer",
    "optax.",
    SCHEDULER,
    "seqio.SentencePieceVocabulary",
)


# --- macros ---------------------------------------------------------------------------


def _macro(b: Binding, session: Session) -> None:
    """`NAME = VALUE`: bound as it is, unless VALUE is one of T5X's objects."""
    value = _canonical(b.value, session)
    if isinstance(b.value, Ref):
        if value == "@seqio.SentencePieceVocabulary()":
            return  # VOCABULARY: seqio.SentencePieceVocabulary's file is task_vocabulary.spm_path
        if value == f"@{MODELS}()":
            return  # MODEL: dss_jax's T5 (model_config), configured by T5Config
        if value == f"@{ADAFACTOR}()":
            session.bind("OptimizerConfig.name = 'adafactor'", b)
            return
        if value.startswith("@t5x.") or value.startswith("@optax.") or value.startswith("@seqio."):
            raise refuse(
                b,
                f"dss_jax has no equivalent of {value}: its optimizers are Adafactor (T5X's) and AdamW "
                "(--gin_file=optimizers/adamw.gin), configured by OptimizerConfig",
            )
    session.bind(f"{b.configurable} = {_render(b, session)}", b)


# --- reading a T5X file ---------------------------------------------------------------


def is_t5x_file(path: str) -> bool:
    """Whether a gin file is T5X's: it imports t5x/__main__/__gin__, or includes one that does."""
    return _is_t5x(path, set())


def _is_t5x(path: str, seen: set) -> bool:
    if path in seen:
        return False
    seen.add(path)
    for s in _statements(path, names_only=True):
        if isinstance(s, config_parser.ImportStatement) and s.module.split(".")[0] in ("t5x", "__main__", "__gin__"):
            return True
        if isinstance(s, config_parser.IncludeStatement):
            if s.filename.startswith("t5x/"):
                return True
            included = gin_utils._find_include(s.filename)
            if included and _is_t5x(included, seen):
                return True
    return False


def add_search_path(path: str) -> None:
    """T5X files include each other as 't5x/...': the folder above a file's `t5x/` is
    searched too, as T5X finds its own files."""
    folder = os.path.dirname(files.absolute(path))
    while os.path.basename(folder) and os.path.basename(folder) != "t5x":
        folder = os.path.dirname(folder)
    root = os.path.dirname(folder)
    if os.path.basename(folder) == "t5x" and root not in gin.config._LOCATION_PREFIXES:
        gin.add_config_file_search_path(root)


def _statements(path: str, names_only: bool = False) -> list:
    with gin_utils._one_line_errors(path=path), gin_utils._open_text(path) as f:
        return list(config_parser.ConfigParser(f, gin_utils._NamesOnly() if names_only else _Capture()))


def parse_file(path: str, session: Session) -> None:
    """Binds what a T5X file (and what it includes) says, in dss_jax's terms."""
    add_search_path(path)
    statements = _statements(path)
    where = gin_utils._display(path)
    aliases = session.aliases  # gin's imports hold for the files read after them, includers too
    if not session.imported:
        session.imported = True
        for module in _IMPORTS:
            gin.parse_config(f"import {module}")
    for s in statements:
        line = f"{where}:{s.location.line_num}"
        if isinstance(s, config_parser.ImportStatement):
            _import(s, line, aliases, statements, session)
        elif isinstance(s, config_parser.IncludeStatement):
            included = gin_utils._find_include(s.filename)
            if included is None:
                raise GinConfigError(
                    f"{line}: include {s.filename!r}: not found; add the folder that holds it (for T5X's files, "
                    "the one above t5x/) with --gin_search_paths"
                )
            if is_t5x_file(included):
                parse_file(included, session)
            else:
                with gin_utils._one_line_errors(path=included):
                    gin.parse_config_file(included)
        elif isinstance(s, config_parser.BindingStatement):
            translate(_binding(s, line, aliases), session)


def _import(s, line: str, aliases: dict, statements: list, session: Session) -> None:
    top = s.module.split(".")[0]
    if top not in _T5X_MODULES:
        gin.parse_config(s.format())  # a module of the user's (or dss_jax's) own, e.g. their tasks
        return
    aliases[s.bound_name()] = s.module if s.is_from or s.alias else top
    if top == "t5":
        logging.warning(
            "%s: %s: T5's SeqIO tasks are not installed here (not imported); name a dss_jax task in "
            "MIXTURE_OR_TASK_NAME (gin/tasks/*.gin)",
            line,
            s.format(),
        )
    if s.module == "__main__" and not session.run_included:
        binaries = {
            _full(st.selector, aliases).split(".")[1]
            for st in statements
            if isinstance(st, config_parser.BindingStatement) and _full(st.selector, aliases).startswith("__main__.")
        }
        for binary in binaries & set(_RUN_FILES):
            session.run_included = True
            # dss_jax's run file first: its defaults, then the T5X file's settings over them.
            with gin_utils._one_line_errors(path=_RUN_FILES[binary]):
                gin.parse_config_file(_RUN_FILES[binary])
            logging.info(
                "%s: %s: T5X's %s.py; dss_jax reads gin/%s first", line, s.format(), binary, _RUN_FILES[binary]
            )


def _full(selector: str, aliases: dict) -> str:
    head, _, rest = selector.partition(".")
    if head in aliases:
        return f"{aliases[head]}.{rest}" if rest else aliases[head]
    return selector


def _binding(s, where: str, aliases: dict) -> Binding:
    """A parsed statement as a Binding; its text as written, the value in gin's syntax."""
    name = f"{s.scope + '/' if s.scope else ''}{s.selector}{'.' + s.arg_name if s.arg_name else ''}"
    return Binding(where, f"{name} = {s.value!r}", s.scope or "", _full(s.selector, aliases), s.arg_name, s.value)


def is_t5x_binding(binding: str, session: Optional[Session]) -> bool:
    """Whether a command-line binding names one of T5X's configurables (through the module
    aliases of the T5X files read), e.g. network.T5Config.emb_dim = 16."""
    if session is None or not session.aliases:
        return False
    try:
        statements = list(config_parser.ConfigParser(binding, _Capture()))
    except (SyntaxError, ValueError):
        return False  # gin_utils reports it
    return any(
        isinstance(s, config_parser.BindingStatement)
        and s.arg_name
        and s.selector.split(".")[0] in session.aliases
        and gin.config._REGISTRY.get_match(s.selector) is None  # dss_jax's own, e.g. optimizers.OptimizerConfig
        for s in statements
    )


def parse_binding(binding: str, session: Session) -> None:
    """A command-line binding on T5X's names, translated as if it ended the last T5X file."""
    where = "the command line"
    for s in config_parser.ConfigParser(binding, _Capture()):
        if isinstance(s, config_parser.BindingStatement):
            translate(_binding(s, where, session.aliases), session)


def translate(b: Binding, session: Session) -> None:
    """Binds the dss_jax equivalent of one T5X binding, or refuses it, or logs it."""
    session.macros_read.update(_macros_in(b.value))
    if not b.param:
        _macro(b, session)
        return
    if b.configurable.split(".")[0] not in _T5X_MODULES:
        session.bind(f"{(b.scope + '/') if b.scope else ''}{b.configurable}.{b.param} = {_render(b, session)}", b)
        return
    handler = next(
        (
            TABLE[key]
            for key in (
                (b.scope, b.configurable, b.param),
                ("*", b.configurable, b.param),
                (b.scope, b.configurable, "*"),
                ("*", b.configurable, "*"),
            )
            if key in TABLE
        ),
        None,
    )
    if handler is None and b.configurable.startswith("__main__.") and b.configurable != TRAIN:
        handler = _main  # T5X's eval.py, infer.py, precompile ...
    if handler is not None:
        handler(b, session)
    elif b.configurable.startswith(_TRAINED):
        raise refuse(
            b,
            "dss_jax has no equivalent of this T5X setting, which would change what is trained; remove it "
            "(docs/t5x.md lists what maps)",
        )
    else:
        session.defer(b, lambda value: "no equivalent in dss_jax; ignored (docs/t5x.md lists what maps)", error=False)


def _macros_in(value: Any) -> list[str]:
    if isinstance(value, Macro):
        return [value.name]
    if isinstance(value, (list, tuple)):
        return [m for v in value for m in _macros_in(v)]
    if isinstance(value, dict):
        return [m for v in value.values() for m in _macros_in(v)]
    return []


def _render(b: Binding, session: Session) -> str:
    """The value as dss_jax gin text; a T5X object in it (not in the TABLE) is refused."""

    def walk(v):
        head = v.name.rsplit("/", 1)[-1].split(".")[0] if isinstance(v, Ref) else None
        if head in session.aliases or head in _T5X_MODULES:
            yield v
        elif isinstance(v, (list, tuple)):
            for x in v:
                yield from walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                yield from walk(x)

    for ref in walk(b.value):
        raise refuse(b, f"{ref!r} is one of T5X's objects, which dss_jax has no equivalent of here")
    return repr(b.value)


def _canonical(value: Any, session: Session) -> str:
    """A value as text with T5X's modules spelled out, for comparing with the usual ones."""
    if isinstance(value, Ref):
        scope, _, name = value.name.rpartition("/")
        return repr(Ref(f"{scope + '/' if scope else ''}{_full(name, session.aliases)}", value.evaluate))
    return repr(value)


# --- after every file and binding is read ---------------------------------------------


def finish(session: Session) -> None:
    """Checks the values dss_jax has built in against what the files and the command line
    finally set (a macro's last value), refusing or logging what differs."""
    for deferred in session.deferred.values():
        b = deferred.binding
        value = _resolve(b.value)
        problem = deferred.check(value)
        if problem is None:
            continue
        shown = f" ({b.value!r} is {value!r})" if isinstance(b.value, Macro) and "ignored" not in problem else ""
        if deferred.error:
            raise refuse(b, f"{problem}{shown}")
        session.note(b, f"{problem}{shown}", deferred.level)


def _resolve(value: Any) -> Any:
    for _ in range(100):
        if not isinstance(value, Macro):
            return value
        try:
            value = gin.query_parameter(f"{value.name}/macro.value")
        except ValueError:
            return None
        if isinstance(value, gin.config.ConfigurableReference) and value.configurable.name == "macro":
            value = Macro(value.scoped_selector.split("/")[0])
        elif isinstance(value, gin.config.ConfigurableReference) and value.scoped_selector.startswith("gin.REQUIRED"):
            return gin.REQUIRED
    return value


def _normalization_note(value: Any) -> Optional[str]:
    if isinstance(value, str) and value.upper() in _NORMALIZATIONS:
        return None
    return (
        "T5X sums the token losses (None) or divides the sum by a constant; dss_jax takes the mean of each "
        "task's loss over its real target tokens (LossConfig.normalization = 'token'), the same up to a scale "
        "that Adafactor's and AdamW's updates do not see; set it to 'NUM_REAL_TARGET_TOKENS' or "
        "'AVERAGE_PER_SEQUENCE' to say which"
    )


# --- what the translated bindings call ------------------------------------------------

_NORMALIZATIONS = {"NUM_REAL_TARGET_TOKENS": "token", "AVERAGE_PER_SEQUENCE": "sequence"}


@gin.configurable
def t5x_loss_normalization(factor: Any = None) -> str:
    """LossConfig.normalization for T5X's loss_normalizing_factor (other values: 'token')."""
    name = getattr(factor, "name", factor)  # SpecialLossNormalizingFactor.X or its name
    return _NORMALIZATIONS.get(name.upper(), "token") if isinstance(name, str) else "token"


@gin.configurable
def t5x_learning_rate(
    output: str = gin.REQUIRED,
    factors: str = "constant * linear_warmup * rsqrt_decay",
    base_learning_rate: float = 0.5,
    warmup_steps: int = 1000,
) -> Any:
    """One of OptimizerConfig's (schedule, learning_rate, warmup_steps) for T5X's
    create_learning_rate_scheduler (its defaults as T5X's), chosen by `output`."""
    schedule, peak, warmup = t5x_schedule(factors, base_learning_rate, warmup_steps)
    return {"schedule": schedule, "learning_rate": peak, "warmup_steps": warmup}[output]


def t5x_schedule(factors: str, base_learning_rate: float, warmup_steps: int) -> tuple:
    """(schedule, peak learning rate, warmup steps) of dss_jax's optimizers.make_schedule
    that give T5X's schedule: 'constant' (warmup unused), 'constant * linear_warmup',
    'constant * rsqrt_decay' (base / sqrt(max(step, warmup))) and 'constant *
    rsqrt_normalized_decay'."""
    names = tuple(sorted(n.strip() for n in factors.split("*")))
    if names == ("constant",):
        return "constant", base_learning_rate, 0
    if names == ("constant", "linear_warmup"):
        return "constant", base_learning_rate, warmup_steps
    if names == ("constant", "rsqrt_decay"):
        return "rsqrt", base_learning_rate / math.sqrt(max(warmup_steps, 1)), warmup_steps
    if names == ("constant", "rsqrt_normalized_decay"):
        return "rsqrt", base_learning_rate, warmup_steps
    raise UserError(
        f"T5X's learning-rate factors {factors!r} have no equivalent in dss_jax "
        "(it has 'constant', 'constant * linear_warmup', 'constant * rsqrt_decay' and 'constant * "
        "rsqrt_normalized_decay'); use one of those, or bind OptimizerConfig.schedule "
        "('linear', 'cosine', ...) and OptimizerConfig.learning_rate"
    )


@gin.configurable
def t5x_train_steps(
    total_steps: Optional[int] = None,
    relative_steps: Optional[int] = None,
    initial_checkpoint_path: Optional[str] = None,
) -> int:
    """train.train_steps for T5X's TRAIN_STEPS (total, counting the initial checkpoint's
    steps) and TRAIN_STEPS_RELATIVE (steps of this run). dss_jax's converted checkpoints
    keep no step, so from a checkpoint only the relative count is meaningful."""
    if relative_steps is not None:
        return relative_steps
    if initial_checkpoint_path:
        raise UserError(
            f"TRAIN_STEPS = {total_steps} counts the steps of INITIAL_CHECKPOINT_PATH too in T5X, and dss_jax's "
            "checkpoints keep no step to subtract: set --gin.TRAIN_STEPS_RELATIVE to the steps to train "
            "(TRAIN_STEPS minus the checkpoint's step)"
        )
    if total_steps is None:
        raise UserError("TRAIN_STEPS is not set; pass e.g. --gin.TRAIN_STEPS=1000")
    return total_steps


@gin.configurable
def t5x_seed(random_seed: Optional[int] = None) -> int:
    """train.seed for T5X's RANDOM_SEED; None (T5X: a new seed each run) keeps dss_jax's 0."""
    return 0 if random_seed is None else random_seed
