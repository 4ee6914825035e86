"""Params checkpoints and the convert/export binaries (no torch needed)."""

import functools
import io
import json

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import run_binary
from dss_jax import checkpoints
from dss_jax.model import hf_convert
from dss_jax.model.config import T5Config
from dss_jax.model.t5 import init_variables

CONFIG = T5Config.preset("tiny", "t5.1.1", vocab_size=64)
SENTENCES = [
    "the student learns to explain its answer",
    "a teacher writes a rationale for every question",
    "distilling step by step trains a small model on labels and rationales",
    "four plus three is seven so the answer is seven",
    "the cat sat on the mat and the dog sat on the log",
] * 4


def _random_params(config=CONFIG, seed=0):
    shapes = jax.eval_shape(functools.partial(init_variables, config), jax.random.key(0))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), nn.meta.unbox(shapes["params"]))


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def spiece_model(tmp_path_factory):
    """A tiny SentencePiece model with T5's special ids (pad 0, eos 1, unk 2)."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES),
        model_writer=buffer,
        vocab_size=60,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("vocab") / "spiece.model"
    path.write_bytes(buffer.getvalue())
    return path


def test_save_and_load_round_trip(tmp_path, spiece_model):
    params = _random_params()
    ckpt = checkpoints.save_params(tmp_path / "ckpt", params, CONFIG, vocab_path=spiece_model)
    loaded, config, vocab = checkpoints.load_params(ckpt)
    _assert_same(loaded, params)
    assert config == CONFIG
    assert vocab == str(ckpt / "spiece.model")
    assert open(vocab, "rb").read() == spiece_model.read_bytes()
    # Pointing at the orbax item itself finds config and vocabulary beside it.
    loaded, config, vocab = checkpoints.load_params(ckpt / "params")
    _assert_same(loaded, params)
    assert config == CONFIG and vocab == str(ckpt / "spiece.model")
    with pytest.raises(FileExistsError, match="overwrite"):
        checkpoints.save_params(ckpt, params, CONFIG)
    other = _random_params(seed=1)
    checkpoints.save_params(ckpt, other, CONFIG, overwrite=True)
    _assert_same(checkpoints.load_params(ckpt)[0], other)


def test_load_params_from_a_trainer_style_checkpoint(tmp_path):
    params = _random_params()
    model_dir = tmp_path / "model"
    step_dir = model_dir / "checkpoint_5"
    state = {"step": np.int32(5), "params": params, "opt_state": {"mu": jax.tree.map(np.zeros_like, params)}}
    ocp.PyTreeCheckpointer().save(step_dir / "state", state)
    ocp.PyTreeCheckpointer().save(step_dir / "dataset", {"position": np.int64(17)})
    (model_dir / "config.json").write_text(CONFIG.to_json())
    for path in (step_dir, step_dir / "state"):
        loaded, config, vocab = checkpoints.load_params(path)
        _assert_same(loaded, params)
        assert config == CONFIG and vocab is None
    _assert_same(checkpoints.load_params(step_dir, item="state")[0], params)
    with pytest.raises(ValueError, match="hold no model params"):
        checkpoints.load_params(step_dir, item="dataset")


def test_load_params_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no orbax checkpoint"):
        checkpoints.load_params(tmp_path)
    ocp.PyTreeCheckpointer().save(tmp_path / "params", _random_params())
    with pytest.raises(FileNotFoundError, match="no config.json"):
        checkpoints.load_params(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(CONFIG.to_hf_config()))
    with pytest.raises(ValueError, match="Hugging Face config.json"):
        checkpoints.load_params(tmp_path)


def _run(module, *args):
    return run_binary(module, *args, timeout=300)


def test_convert_and_export_binaries_with_a_seqio_vocabulary(tmp_path, spiece_model):
    import seqio

    params = _random_params()
    hf_dir = hf_convert.export_hf_checkpoint(params, CONFIG, tmp_path / "hf", spiece_model)

    result = _run("dss_jax.convert", f"--hf_dir={hf_dir}", f"--output={tmp_path / 'ckpt'}")
    assert result.returncode == 0, result.stderr
    loaded, config, vocab_path = checkpoints.load_params(tmp_path / "ckpt")
    _assert_same(loaded, params)
    assert config == CONFIG

    vocab = seqio.SentencePieceVocabulary(vocab_path)
    ids = vocab.encode("the student learns")
    assert ids and max(ids) < vocab.vocab_size <= CONFIG.vocab_size
    assert vocab.decode(ids) == "the student learns"
    assert vocab.eos_id == 1 and vocab.pad_id == 0

    result = _run("dss_jax.export", f"--checkpoint={tmp_path / 'ckpt'}", f"--output={tmp_path / 'hf2'}")
    assert result.returncode == 0, result.stderr
    for name in ("config.json", "model.safetensors", "spiece.model"):
        assert (tmp_path / "hf2" / name).read_bytes() == (hf_dir / name).read_bytes(), name


def test_convert_reports_a_missing_config(tmp_path):
    (tmp_path / "hf").mkdir()
    result = _run("dss_jax.convert", f"--hf_dir={tmp_path / 'hf'}", f"--output={tmp_path / 'out'}")
    assert result.returncode != 0
    assert str(tmp_path / "hf" / "config.json") in result.stderr
    assert "Traceback" not in result.stderr
