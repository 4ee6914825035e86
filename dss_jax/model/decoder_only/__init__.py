"""The decoder-only family (Llama 3.x, Qwen2.5, Qwen3, Gemma 3) behind the student
interface (`dss_jax.model.interface`), as T5X's DecoderOnlyModel.

    config.py    DecoderOnlyConfig: the architecture, field by field
    network.py   the Flax network (logical axis names, remat)
    hf.py        Hugging Face configs and weights, both ways

A batch is one stream per row (data/row_formats.DecoderOnlyRows): the prompt, then the
target, loss on the target only, segments apart by segment id, RoPE positions restarting
in each; `decoder_causal_attention` marks the prompt for prefix-LM students
(`prompt_attention="bidirectional"`).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import jax
import jax.numpy as jnp

from dss_jax import files
from dss_jax.model import interface
from dss_jax.model.decoder_only import hf
from dss_jax.model.decoder_only.config import DecoderOnlyConfig
from dss_jax.model.decoder_only.network import DecoderOnly


@dataclasses.dataclass(frozen=True)
class DecoderOnlyModel(interface.StudentModel):
    config: DecoderOnlyConfig

    family = DecoderOnlyConfig.family
    hf_model_types = hf.SUPPORTED
    batch_layout = "decoder_only"
    param_root_keys = frozenset({"token_embedder", "layers_0", "final_norm"})

    @staticmethod
    def import_hf(hf_dir: str):
        # Their tokenizers ship as tokenizer.json (or a SentencePiece tokenizer.model whose
        # special tokens differ from T5's), not spiece.model: convert keeps those files
        # (checkpoints.TOKENIZER_FILES) beside the params.
        params, config = hf.import_hf_checkpoint(hf_dir)
        return params, config, None

    def export_hf(self, params, out_dir, vocab_path, overwrite, generation=None, extra_files=None):
        extra_files = dict(extra_files or {})
        if vocab_path is not None:
            vocab_path = files.path(vocab_path)  # local or gs://
            if vocab_path.name != "tokenizer.json":
                # A SentencePiece vocabulary (the task's, or the quickstart's): written as the
                # tokenizer.json transformers reads, giving the same ids.
                from dss_jax.data import vocab

                try:
                    extra_files.update(vocab.sentencepiece_as_tokenizer_json(vocab_path))
                except ValueError as e:
                    raise interface.NotSupportedError(
                        f"{e} (a decoder-only export carries a tokenizer.json: pass --vocab=PATH to one that "
                        "tokenizes as the student was trained)"
                    ) from None
            else:
                from dss_jax.checkpoints import TOKENIZER_FILES

                for name in TOKENIZER_FILES:  # the tokenizer.json with its config, as convert kept them
                    if name not in extra_files and (vocab_path.parent / name).is_file():
                        extra_files[name] = (vocab_path.parent / name).read_bytes()
        return hf.export_hf_checkpoint(
            params, self.config, out_dir, overwrite=overwrite, generation=generation, extra_files=extra_files
        )

    def from_pretrained_call(self, hf_dir) -> str:
        return hf.from_pretrained_call(self.config, hf_dir)

    @property
    def module(self) -> DecoderOnly:
        return DecoderOnly(self.config)

    def init_variables(self, rng: jax.Array):
        tokens = jnp.ones((1, 1), jnp.int32)
        return self.module.init({"params": rng, "dropout": rng}, tokens)

    def param_shapes(self):
        return hf.param_shapes(self.config)

    def depth_text(self) -> str:
        return f"num_layers={self.config.num_layers}"

    def logits(self, params, batch: Mapping[str, jax.Array], *, enable_dropout: bool, dropout_rng=None) -> jax.Array:
        return self.module.apply(
            {"params": params},
            batch["decoder_input_tokens"],
            segment_ids=batch.get("decoder_segment_ids"),
            positions=batch.get("decoder_positions"),
            prompt_mask=batch.get("decoder_causal_attention"),
            enable_dropout=enable_dropout,
            rngs=None if dropout_rng is None else {"dropout": dropout_rng},
        )

    def input_token_counts(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """The prompt tokens of a row are its real tokens that carry no loss."""
        tokens = batch["decoder_input_tokens"]
        real = batch["decoder_segment_ids"] > 0 if "decoder_segment_ids" in batch else tokens != 0
        return {
            "tokens/encoder_real": jnp.sum(real & (batch["decoder_loss_weights"] == 0)),
            "tokens/total": jnp.asarray(tokens.size),
        }

    def decode_token_ids(self) -> dict[str, int]:
        # The first step's token is each row's last prompt token (see start_decoding), so
        # the start id is never fed to the model.
        return dict(eos_id=self.config.eos_token_id, pad_id=self.config.pad_token_id, decoder_start_id=0)

    def text_ids(self, row) -> list[int]:
        # Decoding pads after EOS; before it every id is text (pad_token_id may be a real
        # token of these vocabularies, e.g. Llama 3's id 0).
        ids = [int(i) for i in row]
        eos = self.config.eos_token_id
        return ids[: ids.index(eos)] if eos in ids else ids

    def start_decoding(self, params, inputs: jax.Array, segment_ids: Optional[jax.Array], config):
        """Prompts `inputs` [batch, len], right-padded; `segment_ids` (1 real, 0 padding)
        say where each ends. Without them a row's prompt runs through its last EOS (DSS
        prompts end in one), or in a row without EOS through its last token that is not
        pad_token_id. The prompt fills the cache (prefix-LM students: attending over the
        whole prompt); the decoding loop's first step then feeds each row's last prompt
        token at its own position, in place of the start token, so every row continues its
        own prompt whatever the lengths."""
        module = self.module
        batch, length = inputs.shape
        index = jnp.arange(length)[None, :]
        if segment_ids is not None:
            real = segment_ids > 0
        else:

            def through_last(mask):  # [batch, len]: up to and with each row's last True
                return index <= jnp.max(jnp.where(mask, index, -1), axis=1, keepdims=True)

            eos = inputs == self.config.eos_token_id
            real = jnp.where(
                jnp.any(eos, axis=1, keepdims=True), through_last(eos), through_last(inputs != self.config.pad_token_id)
            )
        prompt_lengths = jnp.sum(real, axis=1).astype(jnp.int32)  # [batch]
        last = jnp.maximum(prompt_lengths - 1, 0)
        _, state = module.apply(
            {"params": params},
            inputs,
            prompt_mask=real.astype(jnp.int32),
            decode=True,
            cache_length=length + config.max_decode_length,
            mutable=["cache"],
        )
        cache = {
            "layers": state["cache"],
            "position": last,  # [batch] where each row's next token goes
            "prompt_end": last,
            "first_token": jnp.take_along_axis(inputs, last[:, None], axis=1)[:, 0],
        }

        def tokens_to_logits(tokens, cache):
            position = cache["position"]
            token = jnp.where(position == cache["prompt_end"], cache["first_token"], tokens[:, 0])
            logits, mutated = module.apply(
                {"params": params, "cache": cache["layers"]},
                token[:, None],
                positions=position[:, None],
                decode=True,
                mutable=["cache"],
            )  # [rows, 1, vocab]
            new = {**cache, "layers": mutated["cache"], "position": position + 1}
            return logits[:, -1, :].astype(jnp.float32), new

        return tokens_to_logits, cache


interface.register(DecoderOnlyConfig.family, DecoderOnlyConfig, DecoderOnlyModel)
