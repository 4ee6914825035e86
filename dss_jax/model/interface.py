"""The student-model interface: the one seam between a model family and the rest.

The trainer, decoding, checkpoints, eval, infer, annotate's student backend, aot and
the sweep only call a `StudentModel`; a family ("t5": `encoder_decoder.py`;
"decoder_only": `decoder_only/`) implements it for its config class and registers both here:

    model = build(config)                    # the family's StudentModel for a config
    config = config_from_dict(d, source)     # config.json -> config ("family"; none = t5)
    import_hf_checkpoint(hf_dir)             # any supported Hugging Face directory, by model_type
    model.init_variables(rng)                # boxed variables (logical axis names)
    model.abstract_params()                  # ShapeDtypeStructs of the params, nothing allocated
    model.logits(params, batch, enable_dropout=..., dropout_rng=...)  # [batch, target_len, vocab]
    model.token_counts(batch)                # what a step computed on (train metrics)
    model.decode_token_ids()                 # eos, pad and start ids that decoding uses
    model.text_ids(generated_row)            # the ids of a generated row that are its text
    model.start_decoding(params, inputs, segment_ids, config) -> (tokens_to_logits, cache)

A model is a frozen dataclass over its (hashable) config, so it can be a static jit
argument: one compilation per config and shape.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import os
import pathlib
from typing import Any, Callable, ClassVar, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from dss_jax.cli import UserError
from dss_jax.features import LABEL_TASK

PyTree = Any
DEFAULT_FAMILY = "t5"  # what a config.json without a "family" (written before families) holds


class StudentModel(abc.ABC):
    """A student family's model; subclasses are frozen dataclasses with a `config` field."""

    family: ClassVar[str]
    hf_model_types: ClassVar[tuple[str, ...]]  # the Hugging Face config.json model_types it imports
    # The rows its batches come in (data/row_formats.py): "encoder_decoder" (separate input
    # and target tokens) or "decoder_only" (one stream, prompt then target).
    batch_layout: ClassVar[str]
    # The top-level keys of the family's parameter tree: how a checkpoint's params are
    # found inside a larger tree (a training state) before its config is read.
    param_root_keys: ClassVar[frozenset[str]]
    config: Any

    @staticmethod
    @abc.abstractmethod
    def import_hf(hf_dir: str) -> tuple[PyTree, Any, Optional[str]]:
        """(params, config, vocabulary file or None) of a Hugging Face directory of this family."""

    @abc.abstractmethod
    def export_hf(
        self,
        params: PyTree,
        out_dir: str,
        vocab_path: Optional[str],
        overwrite: bool,
        generation: Optional[Mapping[str, Any]] = None,
        extra_files: Optional[Mapping[str, bytes]] = None,
    ) -> pathlib.Path:
        """Writes a Hugging Face directory of the model (see `export.py`); `generation`
        adds to generation_config.json, `extra_files` ({name: bytes}) are written beside."""

    @abc.abstractmethod
    def from_pretrained_call(self, hf_dir: str) -> str:
        """The line that loads an export into transformers."""

    @property
    @abc.abstractmethod
    def module(self) -> nn.Module:
        """The Flax network."""

    @abc.abstractmethod
    def init_variables(self, rng: jax.Array) -> PyTree:
        """Boxed variables ({"params": ...}, nn.Partitioned leaves with logical axis names)."""

    def abstract_variables(self) -> PyTree:
        """`init_variables`' shapes and axis names, nothing allocated."""
        return jax.eval_shape(self.init_variables, jax.random.key(0))

    def abstract_params(self) -> PyTree:
        """ShapeDtypeStructs of the parameter tree: its one source (checkpoints, conversion)."""
        return nn.meta.unbox(self.abstract_variables()["params"])

    def logical_param_specs(self) -> PyTree:
        """PartitionSpecs of logical axis names for every parameter."""
        return nn.get_partition_spec(self.abstract_variables())["params"]

    @abc.abstractmethod
    def param_shapes(self) -> dict[tuple[str, ...], tuple[tuple[int, ...], tuple[str, ...]]]:
        """{param path: (shape, the config fields behind each dimension)}, without tracing:
        what checkpoints and conversion check weights against (tests pin it to
        `abstract_params`)."""

    @abc.abstractmethod
    def depth_text(self) -> str:
        """The config fields that set the number of layers, for messages ("num_layers=2")."""

    @abc.abstractmethod
    def logits(
        self, params: PyTree, batch: Mapping[str, jax.Array], *, enable_dropout: bool, dropout_rng=None
    ) -> jax.Array:
        """float32 [batch, target_len, vocab], aligned with `decoder_target_tokens`."""

    @abc.abstractmethod
    def input_token_counts(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """{"tokens/encoder_real": real input tokens, "tokens/total": all token slots}."""

    def token_counts(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """What a step computed on: real and total tokens, rows holding any target, and
        examples (label segments: every example has exactly one)."""
        real = batch["decoder_loss_weights"] > 0
        label = real & (batch["decoder_task_ids"] == LABEL_TASK) if "decoder_task_ids" in batch else real
        # An example's label tokens are contiguous: count where a run of them starts (a
        # new segment starts a new run even right after another's label tokens).
        continues = jnp.pad(label[:, :-1], ((0, 0), (1, 0)))
        if "decoder_segment_ids" in batch:
            segments = batch["decoder_segment_ids"]
            continues &= jnp.pad(segments[:, 1:] == segments[:, :-1], ((0, 0), (1, 0)))
        examples = jnp.sum(label & ~continues)
        return {
            **self.input_token_counts(batch),
            "tokens/decoder_real": jnp.sum(real),
            "batch/rows": jnp.sum(jnp.any(real, axis=-1)),
            "batch/examples": examples,
        }

    @abc.abstractmethod
    def decode_token_ids(self) -> dict[str, int]:
        """{"eos_id", "pad_id", "decoder_start_id"} for `decoding.DecodeConfig`: the model's own."""

    @abc.abstractmethod
    def text_ids(self, row) -> list[int]:
        """The ids of one generated row [length] that are its text: those before its first EOS."""

    @abc.abstractmethod
    def start_decoding(
        self, params: PyTree, inputs: jax.Array, segment_ids: Optional[jax.Array], config: Any
    ) -> tuple[Callable, PyTree]:
        """(tokens_to_logits, initial cache) for `decoding.decode` on `inputs` [batch, len]:
        tokens_to_logits(tokens [rows, 1], cache) -> (logits [rows, vocab] float32, cache),
        rows = batch * num_beams for beam search (`config`: a decoding.DecodeConfig)."""


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    config_class: type
    model_class: type


_FAMILIES: dict[str, Family] = {}


def register(name: str, config_class: type, model_class: type) -> None:
    """Makes a family buildable and its config.json readable."""
    _FAMILIES[name] = Family(name, config_class, model_class)


@functools.cache
def _load_builtin_families() -> None:
    from dss_jax.model import decoder_only, encoder_decoder  # noqa: F401  (register "decoder_only", "t5")


def families() -> dict[str, Family]:
    _load_builtin_families()
    return dict(_FAMILIES)


def family_of_config(config: Any) -> Family:
    for family in families().values():
        if isinstance(config, family.config_class):
            return family
    raise TypeError(f"{type(config).__name__} is not the config of a registered model family ({sorted(_FAMILIES)})")


def build(config: Any) -> StudentModel:
    """The StudentModel of the family whose config class `config` is."""
    return family_of_config(config).model_class(config)


def config_from_dict(d: Mapping[str, Any], source: str = "config") -> Any:
    """The config a config.json holds; its "family" picks the class (none: t5).
    ValueError naming `source` and the field for an unknown family or field."""
    name = d.get("family", DEFAULT_FAMILY)
    known = families()
    if name not in known:
        raise ValueError(
            f"{source}: family={name!r} is not a model family dss_jax implements (known: {', '.join(sorted(known))})"
        )
    return known[name].config_class.from_dict(d, source=source)


def param_root_keys() -> list[frozenset[str]]:
    """Every family's `param_root_keys`."""
    return [family.model_class.param_root_keys for family in families().values()]


# Hugging Face model types that look close to a supported one, and what a user should know.
UNSUPPORTED_MODEL_TYPES = {
    "mistral": "Mistral is not implemented (Llama 3.x, Qwen2.5, Qwen3 and Gemma 3 are)",
    "gemma3": "this is the multimodal Gemma 3 (Gemma3ForConditionalGeneration): convert a text-only checkpoint "
    "(model_type gemma3_text, e.g. gemma-3-270m or gemma-3-1b)",
    "t5gemma": "T5Gemma (the encoder-decoder Gemma) is not implemented",
    "gemma2": "Gemma 2 is not implemented (Gemma 3 is)",
    "gemma": "Gemma 1 is not implemented (Gemma 3 is)",
}


class UnsupportedModelError(UserError, ValueError):
    """A Hugging Face directory of a model type no family implements."""


def hf_family(hf_config: Mapping[str, Any], source: str) -> Family:
    """The family that imports a Hugging Face config.json's model_type; one line naming
    model_type and what is supported otherwise."""
    model_type = hf_config.get("model_type")
    for family in families().values():
        if model_type in family.model_class.hf_model_types:
            return family
    supported = ", ".join(t for f in families().values() for t in f.model_class.hf_model_types)
    why = UNSUPPORTED_MODEL_TYPES.get(model_type, f"dss_jax imports {supported}")
    raise UnsupportedModelError(f"{source}: model_type={model_type!r} is not supported: {why}")


def import_hf_checkpoint(hf_dir: str | os.PathLike) -> tuple[PyTree, Any, Optional[str]]:
    """(params, config, vocabulary file or None) of any supported Hugging Face directory,
    by its config.json's model_type; nothing is read beyond config.json for another type."""
    from dss_jax import files

    config_path = files.path(hf_dir) / "config.json"  # local or gs://
    if not config_path.is_file():
        raise UnsupportedModelError(
            f"{config_path} is missing: a Hugging Face checkpoint directory holds config.json and the weights"
        )
    hf_config = files.read_json_object(config_path, UnsupportedModelError, "a Hugging Face config.json")
    return hf_family(hf_config, str(config_path)).model_class.import_hf(str(hf_dir))


class NotSupportedError(UserError, ValueError):
    """A request a student family cannot carry out (e.g. an export transformers cannot express)."""


def check_student(model: Any, who: str) -> None:
    """TypeError when `model` is not a StudentModel (e.g. a bare Flax network)."""
    if not isinstance(model, StudentModel):
        raise TypeError(
            f"{who} takes a StudentModel (dss_jax.model.interface.build(config)), got {type(model).__name__}"
        )
