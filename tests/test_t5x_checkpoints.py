"""Checkpoints written by T5X itself (../shared/data/t5x_testdata), read without t5x."""

import pathlib
import shutil

import numpy as np
import pytest

from conftest import REPO_ROOT
from dss_jax.checkpoints import t5x

T5X_DATA = REPO_ROOT.parent / "shared" / "data" / "t5x_testdata"


def test_a_whole_t5_v1_1_checkpoint_in_one_msgpack_file_reads_with_t5x_names_and_shapes():
    params = t5x.read_params(T5X_DATA / "test_t5_tiny.checkpoint_0")
    # The README's model: 2+2 layers, emb 8, 4 heads of 3, mlp 16, 32 buckets, 32128 ids.
    assert params["token_embedder/embedding"].shape == (32128, 8)
    assert params["encoder/layers_0/attention/query/kernel"].shape == (8, 12)
    assert params["encoder/layers_1/mlp/wi_0/kernel"].shape == params["encoder/layers_1/mlp/wi_1/kernel"].shape
    assert params["encoder/layers_1/mlp/wo/kernel"].shape == (16, 8)
    assert params["encoder/relpos_bias/rel_embedding"].shape == (4, 32)
    assert params["decoder/logits_dense/kernel"].shape == (8, 32128)
    assert params["decoder/layers_1/encoder_decoder_attention/out/kernel"].shape == (12, 8)
    assert {k.split("/")[1] for k in params if k.startswith("decoder/layers_")} == {"layers_0", "layers_1"}
    assert len(params) == 52 and all(a.dtype == np.float32 and np.isfinite(a).all() for a in params.values())


def test_arrays_stored_out_of_line_are_read_from_their_zarr_directories(tmp_path):
    tree = t5x.read_checkpoint(T5X_DATA / "tiny_t5" / "checkpoint_1")
    states = tree["optimizer"]["state"]["param_states"]
    assert states["kernel"].shape == (10, 5) and states["kernel"].dtype == np.float64
    assert states["bias"].shape == (5,) and states["step"].shape == () and states["step"].dtype == np.int32
    # The toy's values as T5X wrote them: a bias of ones after one step, a kernel in [0, 1).
    assert states["bias"].tolist() == [1.0] * 5 and int(states["step"]) == 1
    assert 0 <= states["kernel"].min() and states["kernel"].max() < 1 and len(np.unique(states["kernel"])) == 50
    # The same through the file itself; a directory the file names but that is gone is named.
    assert np.array_equal(t5x.read_checkpoint(T5X_DATA / "tiny_t5" / "checkpoint_1" / "checkpoint")["optimizer"]
                          ["state"]["param_states"]["kernel"], states["kernel"])  # fmt: skip
    copy = tmp_path / "checkpoint_1"
    shutil.copytree(T5X_DATA / "tiny_t5" / "checkpoint_1", copy)
    for directory in [copy, *[p for p in copy.rglob("*") if p.is_dir()]]:
        directory.chmod(0o755)  # the shared copy is read-only, and so is what copytree makes of it
    shutil.rmtree(copy / "state.param_states.kernel")
    with pytest.raises(t5x.T5xCheckpointError, match=r"optimizer/state/param_states/kernel: its array directory .*"
                       r"state.param_states.kernel is missing \(copy the whole checkpoint dir\)"):  # fmt: skip
        t5x.read_checkpoint(copy)


def test_files_that_are_no_version_3_t5x_checkpoint_are_refused_naming_them(tmp_path):
    from flax import serialization

    old = tmp_path / "old"
    old.write_bytes(serialization.msgpack_serialize({"version": 2, "optimizer": {"target": {}}}))
    with pytest.raises(t5x.T5xCheckpointError, match=r"old: T5X checkpoint format version 2; dss_jax reads version 3"):
        t5x.read_checkpoint(old)
    truncated = tmp_path / "truncated"
    truncated.write_bytes((T5X_DATA / "test_t5_tiny.checkpoint_0").read_bytes()[:1000])
    with pytest.raises(t5x.T5xCheckpointError, match=r"truncated: not a T5X msgpack checkpoint"):
        t5x.read_params(truncated)
    with pytest.raises(t5x.T5xCheckpointError, match=r"give a T5X checkpoint_<step>/ directory or its checkpoint"):
        t5x.read_params(tmp_path / "checkpoint_7")


def test_convert_imports_a_t5x_checkpoint_as_a_student_that_loads_and_decodes(tmp_path):
    from conftest import run_binary
    from dss_jax import checkpoints
    from dss_jax.model.decoding import DecodeConfig, generate

    source = T5X_DATA / "test_t5_tiny.checkpoint_0"
    staged = tmp_path / "checkpoint_0"  # as T5X lays a step out: checkpoint_<step>/checkpoint
    staged.mkdir()
    shutil.copy(source, staged / "checkpoint")
    spm = REPO_ROOT / "pretrained" / "synthetic_tiny_cpu" / "spiece.model"
    out = tmp_path / "imported"
    r = run_binary(
        "dss_jax.convert", f"--t5x_checkpoint={staged}", f"--vocab={spm}", f"--output={out}", "--verbosity=0"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "the optimizer state is not imported" in r.stderr
    model, params, vocab_path = checkpoints.load_checkpoint(str(out))
    config = model.config
    assert (config.d_model, config.num_heads, config.d_kv, config.d_ff, config.vocab_size) == (8, 4, 3, 16, 32128)
    assert config.feed_forward == "gated-gelu" and not config.tie_word_embeddings
    assert pathlib.Path(vocab_path).read_bytes() == spm.read_bytes()
    # Every number as T5X stored it, in our layout.
    theirs = t5x.read_params(source)
    query = np.asarray(params["encoder"]["layers_0"]["attention"]["query"]["kernel"])
    assert np.array_equal(query.reshape(8, 12), theirs["encoder/layers_0/attention/query/kernel"])
    out_kernel = np.asarray(params["decoder"]["layers_1"]["self_attention"]["out"]["kernel"])
    assert np.array_equal(out_kernel.reshape(12, 8), theirs["decoder/layers_1/self_attention/out/kernel"])
    relpos = np.asarray(params["encoder"]["relpos_bias"]["rel_embedding"])
    assert np.array_equal(relpos.T, theirs["encoder/relpos_bias/rel_embedding"])
    tokens = generate(model, params, np.array([[5, 6, 7, 1]], np.int32), config=DecodeConfig(max_decode_length=4))
    assert np.asarray(tokens.tokens).shape == (1, 4)
    # Both sources at once, or --vocab without a T5X checkpoint, are one line.
    r = run_binary(
        "dss_jax.convert", f"--t5x_checkpoint={staged}", f"--hf_dir={tmp_path}", f"--output={tmp_path / 'x'}"
    )
    assert r.returncode != 0 and "give one of --hf_dir" in r.stderr.strip().splitlines()[-1]
