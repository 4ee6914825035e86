"""The decoder-only family against transformers' Llama, Qwen2, Qwen3 and Gemma 3 (PyTorch,
CPU, float32, small random configs made here): logits, greedy and beam-search tokens of
`generate`; its configs and weights; and the trainer running it under every rule set."""

import json
import logging
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_data_vocab import _tokenizer_dir

import gin
from conftest import REPO_ROOT
from dss_jax import checkpoints, configurables, gin_utils, losses, optimizers, partitioning
from dss_jax.data import vocab as vocab_lib
from dss_jax.model import decoding, hf_convert, interface
from dss_jax.model.decoder_only import DecoderOnlyModel, hf
from dss_jax.model.decoder_only.config import DecoderOnlyConfig
from dss_jax.training.step import Trainer

pytestmark = pytest.mark.torch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, EOS = 96, 3
SMALL = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB)
# Each architecture with the features its configs use: Llama 3.1's RoPE bands (an original
# context of 8 puts the test's positions in all three), tied embeddings; Qwen2's q/k/v
# biases; Qwen3's QK-norm, a head_dim that is not hidden/heads, an untied head; Gemma 3's
# local/global layers (sliding window 4 over 12 tokens), linear RoPE scaling of the global
# layers, (1 + w) norms, post-norms, embedding scale, query_pre_attn_scalar, final soft-capping.
ARCHITECTURES = {
    "llama": lambda: transformers.LlamaConfig(
        **SMALL,
        num_hidden_layers=2,
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8,
        ),
        tie_word_embeddings=True,
    ),
    "qwen2": lambda: transformers.Qwen2Config(**SMALL, num_hidden_layers=2, tie_word_embeddings=False),
    "qwen3": lambda: transformers.Qwen3Config(**SMALL, num_hidden_layers=2, head_dim=16, tie_word_embeddings=False),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **SMALL,
        num_hidden_layers=7,
        head_dim=16,
        sliding_window=4,
        query_pre_attn_scalar=24,
        rope_scaling=dict(rope_type="linear", factor=8.0),
        final_logit_softcapping=15.0,
    ),
}


def _hf_model(name, eos_scale=0.0):
    torch.manual_seed(0)
    config = ARCHITECTURES[name]()
    config.eos_token_id, config.pad_token_id, config.bos_token_id = EOS, 0, 1
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
        # A larger EOS output row: some rows, but not all, stop before the length limit.
        model.get_output_embeddings().weight[EOS] *= 1.0 + eos_scale
    return model


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def converted(request, tmp_path_factory):
    model = _hf_model(request.param, eos_scale=1.5)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    params, config = hf.import_hf_checkpoint(path)
    return request.param, model, DecoderOnlyModel(config), params, path


def test_logits_match_transformers(converted):
    name, hf_model, model, params, _ = converted
    ids = np.random.RandomState(0).randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        want = hf_model(torch.tensor(ids)).logits.numpy()
    got = np.asarray(model.module.apply({"params": params}, jnp.asarray(ids)))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_packed_segments_see_what_they_would_see_alone(converted):
    _, _, model, params, _ = converted
    rng = np.random.RandomState(1)
    a, b = rng.randint(4, VOCAB, 7), rng.randint(4, VOCAB, 5)
    row = np.concatenate([a, b, [0, 0]])[None]
    segments = np.array([[1] * 7 + [2] * 5 + [0, 0]])
    positions = np.array([list(range(7)) + list(range(5)) + [0, 0]])
    packed = np.asarray(model.module.apply({"params": params}, row, segment_ids=segments, positions=positions))
    alone = [np.asarray(model.module.apply({"params": params}, x[None]))[0] for x in (a, b)]
    np.testing.assert_allclose(packed[0, :7], alone[0], atol=1e-5)
    np.testing.assert_allclose(packed[0, 7:12], alone[1], atol=1e-5)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_generate_matches_transformers_for_prompts_of_different_lengths(converted, method):
    name, hf_model, model, params, _ = converted
    lengths = [5, 3, 7, 1]
    rng = np.random.RandomState(2)
    prompts = np.zeros((len(lengths), 7), np.int32)
    segments = np.zeros_like(prompts)
    for i, n in enumerate(lengths):
        prompts[i, :n], segments[i, :n] = rng.randint(4, VOCAB, n), 1
    settings = dict(method="beam", num_beams=3) if method == "beam" else {}
    got = np.asarray(
        decoding.generate(model, params, prompts, segment_ids=segments, max_decode_length=10, **settings).tokens
    )
    finished_early = 0
    for i, n in enumerate(lengths):
        with torch.no_grad():
            out = hf_model.generate(
                torch.tensor(prompts[i : i + 1, :n]).long(),
                max_new_tokens=10,
                do_sample=False,
                num_beams=3 if method == "beam" else 1,
                eos_token_id=EOS,
                pad_token_id=0,
            )[0, n:].numpy()
        want = np.zeros(10, np.int64)
        want[: len(out)] = out
        np.testing.assert_array_equal(got[i], want, err_msg=f"{name} {method} row {i}")
        finished_early += EOS in out[:-1]
    assert finished_early < len(lengths)


def test_sampling_with_top_k_1_is_greedy(converted):
    _, _, model, params, _ = converted
    prompts = np.random.RandomState(3).randint(4, VOCAB, (3, 4)).astype(np.int32)
    greedy = decoding.generate(model, params, prompts, segment_ids=np.ones_like(prompts), max_decode_length=6)
    sampled = decoding.generate(
        model,
        params,
        prompts,
        segment_ids=np.ones_like(prompts),
        max_decode_length=6,
        method="sample",
        top_k=1,
        rng=jax.random.key(0),
    )
    np.testing.assert_array_equal(np.asarray(sampled.tokens), np.asarray(greedy.tokens))


def test_param_shapes_are_the_networks_and_config_json_reads_back(converted):
    _, _, model, params, _ = converted
    traced = {
        tuple(str(k.key) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(model.abstract_params())[0]
    }
    assert {p: shape for p, (shape, _) in model.param_shapes().items()} == traced
    assert model.param_root_keys <= set(model.abstract_params())
    data = json.loads(model.config.to_json())
    assert data["family"] == "decoder_only"
    assert interface.build(interface.config_from_dict(data)) == model
    back = hf.params_to_hf(params, model.config)
    again = hf.hf_to_params(back, model.config)
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_export_gives_back_the_same_tensors_and_transformers_loads_it_without_a_warning(converted, tmp_path):
    name, hf_model, model, params, hf_dir = converted
    original = hf_convert.read_hf_weights(hf_dir)
    if model.config.tie_word_embeddings:
        original.pop("lm_head.weight", None)  # a tied head is the embedding
    # Shards of at most 64 KiB, as a large model's would be at 5 GiB.
    out = hf.export_hf_checkpoint(params, model.config, tmp_path / "hf", max_shard_bytes=64 * 1024)
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*-of-*.safetensors"))) > 1
    exported = hf_convert.read_hf_weights(out)
    assert sorted(exported) == sorted(original)
    for k in original:
        np.testing.assert_array_equal(exported[k], original[k], err_msg=k)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
    assert [str(w.message) for w in caught if "transformers" in str(w.filename)] == []
    ids = torch.tensor(np.random.RandomState(4).randint(0, VOCAB, (2, 9)))
    with torch.no_grad():
        np.testing.assert_array_equal(loaded(ids).logits.numpy(), hf_model(ids).logits.numpy())
    assert model.from_pretrained_call(out).startswith(f"transformers.{type(hf_model).__name__}.from_pretrained(")


@pytest.mark.parametrize(
    "change,field",
    [
        (dict(model_type="mistral"), "model_type='mistral'"),
        (dict(model_type="t5gemma"), "model_type='t5gemma'"),
        (dict(model_type="gemma3"), "model_type='gemma3'"),
        (dict(rope_parameters=dict(rope_type="yarn", rope_theta=1e4, factor=4.0)), "rope_type='yarn'"),
        (dict(hidden_act="gelu"), "hidden_act='gelu'"),
        (dict(use_sliding_window=True), "use_sliding_window=True"),
        (dict(model_type="gemma3_text", attn_logit_softcapping=50.0), "attn_logit_softcapping=50.0"),
    ],
)
def test_what_it_does_not_implement_is_one_line_naming_the_field(change, field):
    config = {**transformers.Qwen3Config(**SMALL, num_hidden_layers=2).to_dict(), **change}
    with pytest.raises(hf.HFCheckpointError) as e:
        hf.config_from_hf(config, "some/config.json")
    message = str(e.value)
    assert len(message.splitlines()) == 1 and message.startswith("some/config.json: ") and field in message


def _decoder_batch(rng, batch=8, length=16):
    """Rows of prompt + target (loss on the target only), label task first, then a rationale."""
    feats = {
        k: np.zeros((batch, length), np.int32)
        for k in (
            "decoder_input_tokens",
            "decoder_target_tokens",
            "decoder_loss_weights",
            "decoder_segment_ids",
            "decoder_positions",
            "decoder_task_ids",
        )
    }
    for r in range(batch):
        start = 0
        for seg, (task, prompt, target) in enumerate([(1, 4, 2), (2, 3, 5)], start=1):
            n = prompt + target
            tokens = rng.integers(4, VOCAB, n + 1)
            feats["decoder_input_tokens"][r, start : start + n] = tokens[:-1]
            feats["decoder_target_tokens"][r, start : start + n] = tokens[1:]
            feats["decoder_loss_weights"][r, start + prompt - 1 : start + n] = 1
            feats["decoder_task_ids"][r, start + prompt - 1 : start + n] = task
            feats["decoder_segment_ids"][r, start : start + n] = seg
            feats["decoder_positions"][r, start : start + n] = np.arange(n)
            start += n
    return feats


@pytest.mark.parametrize("rules,num_partitions", [("fsdp", 1), ("tp", 2), ("fsdp_tp", 2)])
def test_the_trainer_trains_it_under_every_rule_set(rules, num_partitions, cpu_devices):
    config = hf.config_from_hf(ARCHITECTURES["gemma3"]().to_dict())
    batch = _decoder_batch(np.random.default_rng(0))

    def run(devices, rules, num_partitions, remat="none"):
        trainer = Trainer(
            DecoderOnlyModel(config.replace(remat_policy=remat)),
            loss_config=losses.LossConfig(rationale_weight=0.5),
            optimizer_config=optimizers.OptimizerConfig(name="adamw", learning_rate=1e-2),
            total_steps=10,
            partition_config=partitioning.PartitionConfig(rules=rules, num_partitions=num_partitions),
            mesh=partitioning.make_mesh(num_partitions, devices),
        )
        state, out = trainer.init_state(), []
        for _ in range(3):
            state, metrics = trainer.train_step(state, trainer.global_batch(batch))
            out.append(float(metrics["loss"]))
        return np.array(out), metrics, state

    ref, metrics, _ = run(cpu_devices[:1], "dp", 1)
    assert np.all(np.diff(ref) < 0)
    assert int(metrics["batch/examples"]) == 8 and int(metrics["tokens/encoder_real"]) == 8 * (3 + 2)
    got, _, state = run(cpu_devices, rules, num_partitions, remat="full" if rules == "fsdp" else "none")
    # The same first step; Adam's normalised updates then carry the sums' rounding on.
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    specs = " ".join(str(x.sharding.spec) for x in jax.tree_util.tree_leaves(state.params))
    assert ("model" in specs) == ("tp" in rules) and ("data" in specs) == ("fsdp" in rules)


def test_its_config_validates_fields_by_name():
    with pytest.raises(ValueError, match=r"num_heads=6 must be a multiple of num_kv_heads=4"):
        DecoderOnlyConfig(num_heads=6, num_kv_heads=4)
    with pytest.raises(ValueError, match=r"layer_types has 1 entries for num_layers=2"):
        DecoderOnlyConfig(layer_types=("full_attention",))


@pytest.mark.parametrize(
    "gin_file,total,non_embedding",
    [
        # total: the published checkpoints' parameter counts (their safetensors totals on
        # the hub); non-embedding: total - vocab_size * d_model (Qwen3's card: 0.44B).
        ("gemma3_270m", 268_098_176, 100_326_016),
        ("gemma3_1b", 999_885_952, 697_896_064),
        ("qwen3_0_6b", 596_049_920, 440_467_456),
        ("llama3_2_1b", 1_235_814_400, 973_146_112),
    ],
)
def test_the_model_files_are_the_published_sizes(gin_file, total, non_embedding):
    gin.clear_config()
    try:
        gin_utils.parse_gin([f"models/{gin_file}.gin"], [])
        model = configurables.build_model()
    finally:
        gin.clear_config()
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(model.abstract_params()))
    assert isinstance(model, DecoderOnlyModel)
    assert (count, count - model.config.vocab_size * model.config.d_model) == (total, non_embedding)


def test_convert_imports_it_with_its_tokenizer_and_export_gives_it_back(tmp_path):
    hf_dir = tmp_path / "qwen3"
    _hf_model("qwen3").save_pretrained(hf_dir)
    _tokenizer_dir(hf_dir)  # its tokenizer.json and tokenizer_config.json travel with it
    run = lambda binary, *args: subprocess.run(
        [sys.executable, "-m", f"dss_jax.{binary}", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    r = run("convert", f"--hf_dir={hf_dir}", f"--output={tmp_path / 'ckpt'}")
    assert r.returncode == 0, r.stderr
    assert "vocabulary: tokenizer.json, tokenizer_config.json" in r.stdout
    assert vocab_lib.TokenizerJsonVocabulary(tmp_path / "ckpt") == vocab_lib.TokenizerJsonVocabulary(hf_dir)
    params, config, vocab = checkpoints.load_params(tmp_path / "ckpt")
    want, want_config = hf.import_hf_checkpoint(hf_dir)
    assert config == want_config and vocab == str(tmp_path / "ckpt" / "tokenizer.json")
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, want)
    # ... and export gives back the same tensors, with the line that loads them.
    r = run("export", f"--checkpoint={tmp_path / 'ckpt'}", f"--output={tmp_path / 'exported'}")
    assert r.returncode == 0, r.stderr
    assert "load it with: transformers.Qwen3ForCausalLM.from_pretrained(" in r.stdout
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "exported" / name).read_bytes() == (hf_dir / name).read_bytes()
    original, exported = (hf_convert.read_hf_weights(d) for d in (hf_dir, tmp_path / "exported"))
    assert sorted(exported) == sorted(original)
    for k in original:
        np.testing.assert_array_equal(exported[k], original[k], err_msg=k)
    # eval, infer and annotate's student backend load it with its tokenizer, from either directory.
    for directory in (tmp_path / "ckpt", hf_dir):
        model, _, vocab = checkpoints.load_checkpoint(str(directory))
        assert isinstance(model, DecoderOnlyModel) and vocab == str(directory / "tokenizer.json")
    # A family it does not implement: one line naming model_type, nothing written.
    config_json = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config_json, "model_type": "mistral"}))
    r = run("convert", f"--hf_dir={hf_dir}", f"--output={tmp_path / 'mistral'}")
    assert r.returncode != 0 and not (tmp_path / "mistral").exists()
    last = r.stderr.strip().splitlines()[-1]
    assert "model_type='mistral' is not supported: Mistral is not implemented" in last and "Traceback" not in r.stderr
