"""A dss_jax T5 student written back as a T5X msgpack checkpoint (`export --format=t5x`):
the file T5X's own Checkpointer writes, read back exactly (../shared/data/t5x_testdata)."""

import json
import pathlib

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import serialization

from conftest import REPO_ROOT, run_binary
from dss_jax.checkpoints import t5x
from dss_jax.model import interface
from dss_jax.model.config import T5Config

T5X_DATA = REPO_ROOT.parent / "shared" / "data" / "t5x_testdata"


def test_t5xs_own_checkpoint_imported_then_exported_is_the_same_file_byte_for_byte(tmp_path):
    """convert --t5x_checkpoint then export --format=t5x gives back T5X's test file exactly:
    its structure, keys and key order, dtypes, the step and the (zero) Adafactor state."""
    source = T5X_DATA / "test_t5_tiny.checkpoint_0"
    student, out = tmp_path / "student", tmp_path / "t5x"
    r = run_binary("dss_jax.convert", f"--t5x_checkpoint={source}", f"--output={student}")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_binary(
        "dss_jax.export", f"--checkpoint={student}", "--format=t5x", "--t5x_inline_arrays", f"--output={out}"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["checkpoint_0", "checkpoint_0/checkpoint"]
    assert (out / "checkpoint_0" / "checkpoint").read_bytes() == source.read_bytes()
    assert f"INITIAL_CHECKPOINT_PATH = '{out / 'checkpoint_0'}'" in r.stdout
    assert "network.T5Config.emb_dim = 8" in r.stdout and "mlp_activations = ('gelu', 'linear')" in r.stdout

    # An earlier export is replaced only with --overwrite; anything else is never written over.
    again = ["dss_jax.export", f"--checkpoint={student}", "--format=t5x", f"--output={out}"]
    r = run_binary(*again)
    assert r.returncode != 0 and "pass --overwrite" in r.stderr.strip().splitlines()[-1]
    assert run_binary(*again, "--overwrite").returncode == 0  # now as T5X's Checkpointer: zarr arrays beside
    assert (out / "checkpoint_0" / "target.encoder.layers_0.mlp.wi_0.kernel" / ".zarray").is_file()
    assert t5x.read_params(out / "checkpoint_0").keys() == t5x.read_params(source).keys()
    assert run_binary(*again, "--overwrite").returncode == 0  # an export with zarr arrays is replaceable too
    (out / "config.gin").write_text("# a T5X run's\n")  # now a T5X run's MODEL_DIR
    r = run_binary(*again, "--overwrite")
    assert r.returncode != 0 and "is the training run" in r.stderr.strip().splitlines()[-1]
    assert (out / "config.gin").is_file() and (out / "checkpoint_0" / "checkpoint").is_file()
    r = run_binary(*again[:-1], f"--output={tmp_path / 'x'}", f"--vocab={source}")
    assert r.returncode != 0 and "T5X keeps no vocabulary" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "x").exists()


def _random_params(config: T5Config, seed: int = 0) -> dict:
    model = interface.build(config)
    shapes = model.abstract_params()
    rng = np.random.default_rng(seed)
    dtype = np.dtype(ml_dtypes.bfloat16) if config.param_dtype == "bfloat16" else np.float32
    return jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(dtype), shapes)


@pytest.mark.parametrize("inline_arrays", [False, True], ids=["zarr_arrays", "inline"])
@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_a_student_round_trips_exactly_with_t5x_adafactor_state_shapes(tmp_path, param_dtype, inline_arrays):
    """export -> import gives every array back bit for bit in its dtype (bf16 stays bf16),
    with the config its arrays show; T5X's Adafactor state is there with the shapes its
    init_param_state gives (factored over the two largest dims from 128 entries)."""
    config = T5Config(
        vocab_size=160, d_model=128, d_kv=8, d_ff=48, num_heads=2, num_encoder_layers=2, num_decoder_layers=1,
        param_dtype=param_dtype,
    )  # fmt: skip
    params = _random_params(config)
    written = t5x.export_checkpoint(params, config, 1234, tmp_path / "t5x", inline_arrays=inline_arrays)
    assert written == tmp_path / "t5x" / "checkpoint_1234"
    back, shown = t5x.import_checkpoint(written)
    ours = jax.tree_util.tree_leaves_with_path(params)
    theirs = dict(jax.tree_util.tree_leaves_with_path(back))
    assert len(ours) == len(theirs)
    for path, array in ours:
        assert theirs[path].dtype == array.dtype and np.array_equal(theirs[path], array, equal_nan=True), path
    for field in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_encoder_layers", "num_decoder_layers"):
        assert getattr(shown, field) == getattr(config, field), field
    tree = serialization.msgpack_restore((written / "checkpoint").read_bytes())
    assert tree["version"] == 3 and int(tree["optimizer"]["state"]["step"]) == 1234
    states = tree["optimizer"]["state"]["param_states"]
    embedding = states["token_embedder"]["embedding"]  # [160, 128]: factored
    assert embedding["v_row"].shape == (128,) and embedding["v_col"].shape == (160,) and embedding["v"].shape == (1,)
    wo = states["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]  # [48, 128]: 48 < 128, not factored
    if inline_arrays:
        assert wo["v"].shape == (48, 128) and wo["v_row"].shape == wo["m"].shape == (1,)
        assert sorted(p.name for p in written.iterdir()) == ["checkpoint"]
        return
    # As T5X's Checkpointer writes them: what it partitions (the parameters and an
    # unfactored v) as gzip zarr arrays named by their keys, the spec's path relative;
    # the rest inline.
    query = tree["optimizer"]["target"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    assert query["kvstore"] == {"driver": "file", "path": "target.encoder.layers_0.attention.query.kernel/"}
    assert query["metadata"]["compressor"]["id"] == "gzip" and query["metadata"]["shape"] == [128, 16]
    assert query["dtype"] == ("bfloat16" if param_dtype == "bfloat16" else "float32")
    assert wo["v"]["kvstore"]["path"] == "state.param_states.encoder.layers_0.mlp.wo.kernel.v/"
    assert wo["v_row"].shape == wo["m"].shape == embedding["v"].shape == (1,)  # inline
    specs = [
        leaf["kvstore"]["path"].rstrip("/")
        for leaf in jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, dict) and "kvstore" in x)
        if isinstance(leaf, dict)
    ]
    n_targets = sum(p.startswith("target.") for p in specs)
    assert n_targets == len(ours) and sorted(p.name for p in written.iterdir()) == sorted(["checkpoint", *specs])
    assert json.loads((written / query["kvstore"]["path"] / ".zarray").read_text())["shape"] == [128, 16]


def test_an_out_of_line_arrays_chunks_divide_it_and_hold_at_most_64_mib():
    assert t5x.zarr_chunks((1024, 1024), 4, limit=1 << 20) == [512, 512]  # the largest dimension cut first
    assert t5x.zarr_chunks((32128, 4096), 4) == [4016, 4096]  # T5 1.1 XL's embedding: 62.75 MiB chunks
    assert t5x.zarr_chunks((16, 128), 4) == [16, 128] and t5x.zarr_chunks((), 4) == []


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(relative_attention_max_distance=64), "relative_attention_max_distance=64"),
        (dict(layer_norm_epsilon=1e-5), "layer_norm_epsilon"),
        (dict(scale_decoder_outputs=True), "scales the decoder output exactly when the lm head is tied"),
        # scalable_t5's layout, a table per layer, is read (test_t5x_layouts.py) but not written.
        (
            dict(relative_attention_per_layer=True),
            "relative_attention_per_layer=True: T5X's examples/t5 network "
            "shares one relative-position table per stack, and writing scalable_t5's layout .* is not built",
        ),
    ],
)
def test_a_student_t5x_would_compute_otherwise_is_refused_before_anything_is_written(tmp_path, change, message):
    config = T5Config(
        vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, **change
    )
    with pytest.raises(t5x.T5xCheckpointError, match=message) as refused:
        t5x.export_checkpoint(_random_params(config), config, 0, tmp_path / "t5x")
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "t5x").exists()


def test_a_decoder_only_student_is_refused_in_one_line(tmp_path):
    from dss_jax.model.decoder_only.config import DecoderOnlyConfig

    with pytest.raises(t5x.T5xCheckpointError, match="only T5 students"):
        t5x.export_checkpoint({}, DecoderOnlyConfig(), 0, tmp_path / "t5x")
    assert not pathlib.Path(tmp_path / "t5x").exists()
