"""T5X's orbax-era checkpoint layouts and scanned-layer checkpoints, read without t5x.

T5X's own early-orbax file (../shared/data/t5x_testdata/tiny_orbax/1) is read as it is; the
current layout (checkpoint_<step>/state/, OCDBT) and scanned layers are written here by
following T5X's own code (`save_as_t5x_orbax`, `scan_like_scalable_t5`), with the arrays of
T5X's test_t5_tiny.checkpoint_0, so each import is compared with that msgpack file's. With a
relative-position table of its own in each layer (`own_tables`), as scalable_t5 trains them,
a checkpoint imports as a student that transformers' UMT5 computes.
"""

import dataclasses
import functools
import json
import re
import shutil

import jax
import numpy as np
import pytest
from flax import serialization, traverse_util

from conftest import REPO_ROOT, run_binary
from dss_jax import files
from dss_jax.checkpoints import t5x

T5X_DATA = REPO_ROOT.parent / "shared" / "data" / "t5x_testdata"
TINY_T5 = T5X_DATA / "test_t5_tiny.checkpoint_0"  # 2+2 layers, emb 8, 4 heads of 3, mlp 16


@functools.cache
def _t5x_dataset_item():
    """T5X's DatasetCheckpointHandler and DatasetArgs (t5x/checkpoints.py) for a run without
    a dataset iterator (should_write_dataset_ckpt False): the item exists and holds nothing."""
    import orbax.checkpoint as ocp

    class DatasetCheckpointHandler(ocp.CheckpointHandler):
        def save(self, directory, args):
            pass

        def restore(self, directory, args=None):
            return None

    @ocp.args.register_with_handler(DatasetCheckpointHandler, for_save=True, for_restore=True)
    @dataclasses.dataclass
    class DatasetArgs(ocp.args.CheckpointArgs):
        item: object = None

    return DatasetCheckpointHandler, DatasetArgs


def save_as_t5x_orbax(train_state: dict, model_dir, step: int):
    """Saves `train_state` (T5X's TrainState.state_dict(): {'target': params, 'state': {'step',
    'param_states'}}) as current T5X does, following t5x/checkpoints.py (T5X cc342d4)
    OrbaxCheckpointManagerInterface: its __init__'s ocp.CheckpointManager (step_prefix
    get_checkpoint_prefix() = 'checkpoint'; item handlers 'state':
    PyTreeCheckpointHandler(use_ocdbt=True) and 'dataset': DatasetCheckpointHandler; its
    CheckpointManagerOptions) and its save(): Composite(state=PyTreeSave(state_dict,
    save_args from _construct_save_args, save_dtype None), dataset=DatasetArgs(iterator)).
    Returns the step directory, model_dir/checkpoint_<step>."""
    import orbax.checkpoint as ocp

    handler, dataset_args = _t5x_dataset_item()
    options = ocp.CheckpointManagerOptions(
        cleanup_tmp_directories=True, step_prefix="checkpoint", async_options=ocp.AsyncOptions(timeout_secs=600)
    )
    items = {"state": ocp.PyTreeCheckpointHandler(use_ocdbt=True), "dataset": handler()}
    manager = ocp.CheckpointManager(directory=str(model_dir), options=options, item_handlers=items)
    save_args = jax.tree.map(lambda _: ocp.SaveArgs(dtype=None), train_state)
    args = ocp.args.Composite(state=ocp.args.PyTreeSave(train_state, save_args=save_args), dataset=dataset_args(None))
    manager.save(step, args=args, force=True)
    manager.wait_until_finished()
    manager.close()
    return model_dir / f"checkpoint_{step}"


def scan_like_scalable_t5(flat: dict, param_scan_axis: int = 1) -> dict:
    """examples/t5 params (flat, by T5X names) as T5X's examples/scalable_t5/network.py with
    scan_layers=True holds the same model: each stack's layers one module (`encoder/encoder/...`,
    `decoder/decoder/...`) whose arrays stack the layers on param_scan_axis (nn.scan's
    variable_axes), attention kernels with heads and head width apart (scalable_t5/layers.py:
    query [embed, heads, kv], out [heads, kv, embed]), and the stack's relative-position table
    in each layer (its EncoderLayer and DecoderLayer own one each)."""
    heads = flat["encoder/relpos_bias/rel_embedding"].shape[0]

    def split_heads(sub: str, array: np.ndarray) -> np.ndarray:
        if re.fullmatch(r"\w*attention/(query|key|value)/kernel", sub):
            return array.reshape(array.shape[0], heads, -1)
        if re.fullmatch(r"\w*attention/out/kernel", sub):
            return array.reshape(heads, -1, array.shape[-1])
        return array

    scanned = {k: v for k, v in flat.items() if not re.match(r"(encoder|decoder)/(layers_\d+|relpos_bias)/", k)}
    for stack in ("encoder", "decoder"):
        count = 1 + max(int(m[1]) for k in flat if (m := re.match(rf"{stack}/layers_(\d+)/", k)))
        for sub in sorted({k.split("/", 2)[2] for k in flat if k.startswith(f"{stack}/layers_")}):
            layers = [split_heads(sub, flat[f"{stack}/layers_{i}/{sub}"]) for i in range(count)]
            scanned[f"{stack}/{stack}/{sub}"] = np.stack(layers, axis=param_scan_axis)
        table = flat[f"{stack}/relpos_bias/rel_embedding"]
        scanned[f"{stack}/{stack}/relpos_bias/rel_embedding"] = np.stack([table] * count, axis=param_scan_axis)
    return scanned


def own_tables(scanned: dict, param_scan_axis: int = 1, stacks=("encoder", "decoder")) -> dict:
    """`scanned` (scan_like_scalable_t5's arrays) with a relative-position table of its own in
    each layer of `stacks`, as scalable_t5 trains them: layer i's is the stack's times 1 + i/2."""
    out = dict(scanned)
    for stack in stacks:
        name = f"{stack}/{stack}/relpos_bias/rel_embedding"
        tables = scanned[name]  # [heads, layers, buckets] at param_scan_axis 1
        shape = [-1 if axis == param_scan_axis else 1 for axis in range(tables.ndim)]
        out[name] = (tables * (1 + np.arange(tables.shape[param_scan_axis]) / 2).reshape(shape)).astype(tables.dtype)
    return out


def unscanned_like_scalable_t5(scanned: dict, param_scan_axis: int = 1) -> dict:
    """`scanned`'s model as scalable_t5 holds it with scan_layers=False: each layer a module
    `layers_<i>` of its own, attention kernels still with heads apart, a table each."""
    out = {}
    for name, array in scanned.items():
        if not (m := re.match(r"(encoder|decoder)/\1/(.+)", name)):
            out[name] = array
            continue
        for i in range(array.shape[param_scan_axis]):
            out[f"{m[1]}/layers_{i}/{m[2]}"] = np.take(array, i, axis=param_scan_axis)
    return out


def _nested(flat: dict) -> dict:
    return traverse_util.unflatten_dict(flat, sep="/")


def _save_as_t5x_msgpack(params: dict, step_dir):
    """T5X's Checkpointer.save for arrays kept inline: msgpack of {'version': 3, 'optimizer': ...}."""
    step_dir.mkdir(parents=True)
    tree = {"version": 3, "optimizer": {"target": _nested(params), "state": {"step": np.int32(0)}}}
    (step_dir / "checkpoint").write_bytes(serialization.msgpack_serialize(tree))
    return step_dir


def _assert_same_import(got, want):
    (params, config), (want_params, want_config) = got, want
    assert config == want_config
    assert jax.tree.structure(params) == jax.tree.structure(want_params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b, strict=True), params, want_params)


def _one_line_error(match: str, fn, *args):
    with pytest.raises(t5x.T5xCheckpointError, match=match) as caught:
        fn(*args)
    assert "\n" not in str(caught.value), str(caught.value)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """test_t5_tiny's train state saved as current T5X saves it (orbax, OCDBT), unscanned and
    scanned, and the msgpack import they must equal."""
    base = tmp_path_factory.mktemp("t5x_orbax")
    train_state = t5x.read_checkpoint(TINY_T5)["optimizer"]  # {'target', 'state'}: TrainState.state_dict()
    scanned = {"target": _nested(scan_like_scalable_t5(t5x.read_params(TINY_T5))), "state": {"step": np.int32(3)}}
    per_layer = {"target": _nested(own_tables(scan_like_scalable_t5(t5x.read_params(TINY_T5))))}
    return dict(
        ocdbt=save_as_t5x_orbax(train_state, base / "run", 0),
        scanned=save_as_t5x_orbax(scanned, base / "scanned_run", 3),
        per_layer=save_as_t5x_orbax({**per_layer, "state": {"step": np.int32(5)}}, base / "per_layer_run", 5),
        want=t5x.import_checkpoint(TINY_T5),
    )


def test_the_early_orbax_layout_t5x_wrote_reads_with_its_values(tmp_path):
    source = T5X_DATA / "tiny_orbax" / "1"
    # T5X's copy keeps each array's chunks but not the .zarray TensorStore writes beside
    # them: its dtype and shape are unknown, and the first array read says so.
    _one_line_error(
        r"_optimizer/state/param_states/bias: .*tiny_orbax/1/_optimizer.state.param_states.bias/.zarray is "
        r"missing, so its dtype and shape are unknown \(copy the whole checkpoint dir, dot files included\)",
        t5x.read_checkpoint,
        source,
    )
    # A toy linear model with its parameters in the optimizer state: nothing to import, and
    # nothing read to learn that.
    _one_line_error(r"tiny_orbax/1/checkpoint: the checkpoint holds no parameters", t5x.import_checkpoint, source)

    # The same toy, written by T5X's msgpack Checkpointer (tiny_t5/checkpoint_1), names each
    # array's dtype and shape; with them as the .zarray orbax's TensorStore wrote (zstd), the
    # chunks T5X wrote read as the same values, bit for bit.
    copy = tmp_path / "1"
    shutil.copytree(source, copy)
    twin = serialization.msgpack_restore((T5X_DATA / "tiny_t5" / "checkpoint_1" / "checkpoint").read_bytes())
    twin = twin["optimizer"]["state"]  # param_states as TensorStore specs, step inline
    described = {f"param_states.{k}": (s["dtype"], s["metadata"]["shape"]) for k, s in twin["param_states"].items()}
    described["step"] = (np.asarray(twin["step"]).dtype.name, [])
    for name, (dtype, shape) in described.items():
        stored = copy / f"_optimizer.state.{name}"
        stored.chmod(0o755)  # the shared copy is read-only, and so is what copytree makes of it
        metadata = {"zarr_format": 2, "shape": shape, "chunks": shape, "dtype": np.dtype(dtype).str, "order": "C"}
        metadata |= {"compressor": {"id": "zstd", "level": 1}, "fill_value": None, "filters": None}
        (stored / ".zarray").write_text(json.dumps(metadata))
    twin = t5x.read_checkpoint(T5X_DATA / "tiny_t5" / "checkpoint_1")["optimizer"]["state"]
    tree = t5x.read_checkpoint(copy)
    assert tree["_optimizer"]["target"] == {}
    assert tree["flax_mutables"] is None and tree["params_axes"] is None  # FlaxOptimTrainState saved whole
    state = tree["_optimizer"]["state"]
    for name, want in twin["param_states"].items():
        np.testing.assert_array_equal(state["param_states"][name], want, strict=True, err_msg=name)
    assert int(state["step"]) == int(twin["step"]) == 1
    # The msgpack file itself names the same checkpoint.
    assert t5x.read_checkpoint(copy / "checkpoint")["_optimizer"]["state"]["param_states"]["kernel"].shape == (10, 5)


def test_an_ocdbt_state_dir_written_as_t5x_does_imports_exactly_as_its_msgpack_twin(written, monkeypatch):
    step_dir = written["ocdbt"]
    # What T5X's orbax path leaves: checkpoint_<step>/ with the items state/ (OCDBT) and dataset/.
    assert step_dir.name == "checkpoint_0" and (step_dir / "dataset").is_dir()
    assert (step_dir / "state" / "_METADATA").is_file() and (step_dir / "state" / "manifest.ocdbt").is_file()
    theirs = t5x.read_params(TINY_T5)
    ours = t5x.read_params(step_dir)
    assert ours.keys() == theirs.keys()
    for name, array in theirs.items():
        np.testing.assert_array_equal(ours[name], array, strict=True, err_msg=name)
    tree = t5x.read_checkpoint(step_dir / "state")  # the item itself names it too
    assert int(tree["state"]["step"]) == 0 and tree["state"]["param_states"]["token_embedder"]["embedding"]["v"].size

    read = []
    reader = t5x._read_orbax_array
    monkeypatch.setattr(t5x, "_read_orbax_array", lambda *a: read.append(a[-1]) or reader(*a))
    _assert_same_import(t5x.import_checkpoint(step_dir), written["want"])
    # Each parameter read once, the optimizer state (Adafactor's, as large again) never.
    assert sorted(read) == sorted(f"target/{name}" for name in theirs)


def test_a_scanned_checkpoint_imports_exactly_as_the_unscanned_one(written, tmp_path):
    flat = t5x.read_params(TINY_T5)
    scanned = t5x.read_params(written["scanned"])  # as T5X stored it
    # The names and shapes T5X's scalable_t5 Transformer.init gives this config (run at T5X
    # cc342d4 with scan_layers=True): layers on axis 1, heads apart, a relpos table per layer.
    assert scanned["encoder/encoder/attention/query/kernel"].shape == (8, 2, 4, 3)
    assert scanned["decoder/decoder/self_attention/out/kernel"].shape == (4, 2, 3, 8)
    assert scanned["encoder/encoder/relpos_bias/rel_embedding"].shape == (4, 2, 32)
    assert scanned["decoder/decoder/pre_cross_attention_layer_norm/scale"].shape == (8, 2)
    assert scanned["encoder/encoder/mlp/wo/kernel"].shape == (16, 2, 8)
    assert scanned["encoder/encoder_norm/scale"].shape == (8,) and "decoder/logits_dense/kernel" in scanned
    assert not any("layers_" in k for k in scanned)
    # Unstacked: T5X's examples/t5 names and arrays, bit for bit, and the config they show.
    unscanned = t5x.unscan_layers(scanned)
    assert unscanned.keys() == flat.keys()
    for name, array in flat.items():
        np.testing.assert_array_equal(unscanned[name], array, strict=True, err_msg=name)
    assert t5x.config_from_shapes(scanned) == written["want"][1]
    _assert_same_import(t5x.import_checkpoint(written["scanned"]), written["want"])
    # The layers axis where scalable_t5's param_scan_axis=0 puts it, in T5X's msgpack format.
    first_axis = _save_as_t5x_msgpack(scan_like_scalable_t5(flat, param_scan_axis=0), tmp_path / "checkpoint_0")
    assert t5x.read_params(first_axis)["encoder/encoder/attention/query/kernel"].shape == (2, 8, 4, 3)
    _assert_same_import(t5x.import_checkpoint(first_axis), written["want"])


def test_scanned_arrays_that_do_not_stack_are_one_line_naming_the_array():
    scanned = scan_like_scalable_t5(t5x.read_params(TINY_T5))
    short = dict(scanned)
    short["encoder/encoder/mlp/wo/kernel"] = scanned["encoder/encoder/mlp/wo/kernel"][:, :1]
    _one_line_error(
        r"encoder/encoder/mlp/wo/kernel is \[16, 1, 8\], not 2 layers on axis 1 as encoder/encoder's other arrays",
        t5x.unscan_layers,
        short,
    )


@pytest.mark.torch
def test_a_scalable_t5_checkpoint_with_a_table_per_layer_imports_as_the_umt5_it_is(written, tmp_path):
    """scalable_t5's layers each train their own relative-position table: scanned (OCDBT) or
    not (msgpack), the import keeps them per layer, and transformers' UMT5, which has a table
    in every layer, computes the student's logits from its Hugging Face export."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from dss_jax.model import hf_convert
    from dss_jax.model.t5 import T5

    scanned = t5x.read_params(written["per_layer"])
    params, config = t5x.import_checkpoint(written["per_layer"])
    shared_params, shared_config = written["want"]
    assert config == shared_config.replace(relative_attention_per_layer=True)
    swapped = dict(params)  # each stack's table where examples/t5 has it: the shared-table import
    for stack in ("encoder", "decoder"):
        assert "relpos_bias" not in params[stack]
        for i in range(2):
            table = params[stack][f"layers_{i}"]["relpos_bias"]["rel_embedding"]  # [buckets, heads]
            np.testing.assert_array_equal(table, scanned[f"{stack}/{stack}/relpos_bias/rel_embedding"][:, i].T)
        layers = {k: {n: v for n, v in t.items() if n != "relpos_bias"} for k, t in params[stack].items()}
        swapped[stack] = {**layers, "relpos_bias": shared_params[stack]["relpos_bias"]}
    _assert_same_import((swapped, shared_config), written["want"])  # every other array as T5X stored it
    # Unscanned (scan_layers=False: layers_<i>/relpos_bias), in T5X's msgpack format: the same.
    unscanned = _save_as_t5x_msgpack(unscanned_like_scalable_t5(scanned), tmp_path / "checkpoint_0")
    _assert_same_import(t5x.import_checkpoint(unscanned), (params, config))
    # Tables that differ in one stack only: both stacks keep theirs (one config switch).
    decoder_only = t5x.unscan_layers(own_tables(scan_like_scalable_t5(t5x.read_params(TINY_T5)), stacks=["decoder"]))
    assert {k for k in decoder_only if "relpos_bias" in k} == {
        f"{stack}/layers_{i}/relpos_bias/rel_embedding" for stack in ("encoder", "decoder") for i in range(2)
    }

    out = hf_convert.export_hf_checkpoint(params, config, tmp_path / "hf")
    model = transformers.UMT5ForConditionalGeneration.from_pretrained(out, tie_word_embeddings=False).eval()
    rng = np.random.default_rng(0)
    enc, dec = rng.integers(2, 32128, (2, 40)), rng.integers(2, 32128, (2, 30))  # past the exact buckets
    enc[1, 25:], dec[:, 0] = 0, 0
    with torch.no_grad():
        theirs = model(
            input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != 0), decoder_input_ids=torch.tensor(dec)
        ).logits.numpy()

    # Ours, and (not to be vacuous) every layer on the first layer's table, as a shared-table
    # import would have it: other logits. One compilation (eager flax is slow on a CPU).
    @jax.jit
    def logits(enc, dec):
        per_layer = T5(config).apply({"params": params}, enc, dec)
        return per_layer, T5(shared_config).apply({"params": shared_params}, enc, dec)

    ours, first = map(np.asarray, logits(enc.astype(np.int32), dec.astype(np.int32)))
    assert np.abs(ours - theirs).max() <= 1e-4 * max(1.0, np.abs(theirs).max())
    assert np.abs(first - ours).max() > 1e-3 * np.abs(ours).max()


def test_convert_imports_an_orbax_t5x_checkpoint_as_a_student_that_loads_and_decodes(written, tmp_path):
    from dss_jax import checkpoints
    from dss_jax.model.decoding import DecodeConfig, generate

    spm = REPO_ROOT / "pretrained" / "synthetic_tiny_cpu" / "spiece.model"
    out = tmp_path / "imported"
    # scalable_t5 scanned, a table per layer, OCDBT: what its runs leave.
    source = written["per_layer"]
    r = run_binary("dss_jax.convert", f"--t5x_checkpoint={source}", f"--vocab={spm}", f"--output={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "the optimizer state is not imported" in r.stderr
    model, params, _ = checkpoints.load_checkpoint(str(out))
    assert model.config.relative_attention_per_layer
    _assert_same_import((params, model.config), t5x.import_checkpoint(source))
    tokens = generate(model, params, np.array([[5, 6, 7, 1]], np.int32), config=DecodeConfig(max_decode_length=4))
    assert np.asarray(tokens.tokens).shape == (1, 4)


def test_damaged_or_foreign_layouts_are_one_line_naming_the_file(written, tmp_path):
    step_dir = tmp_path / "checkpoint_0"
    shutil.copytree(written["ocdbt"], step_dir)
    (step_dir / "state" / "_METADATA").write_text("{'not': json")
    _one_line_error(
        r"checkpoint_0/state/_METADATA: not an orbax checkpoint's tree metadata \(JSONDecodeError",
        t5x.import_checkpoint,
        step_dir,
    )
    shutil.copy(written["ocdbt"] / "state" / "_METADATA", step_dir / "state" / "_METADATA")
    for data in (step_dir / "state").rglob("d/*"):
        data.unlink()  # OCDBT's data files: every array's chunks and the b-tree naming them
    _one_line_error(
        r"target/\S+: .*checkpoint_0/state cannot be read \(NOT_FOUND: .*/d/\w+\"\)$", t5x.read_params, step_dir
    )
    (step_dir / "state" / "manifest.ocdbt").write_bytes(b"damaged")
    _one_line_error(r"checkpoint_0/state cannot be read \(DATA_LOSS: .*manifest.ocdbt", t5x.import_checkpoint, step_dir)
    # A directory that holds no checkpoint, or a run's, whose steps are named.
    (tmp_path / "empty").mkdir()
    _one_line_error(
        r"empty: no T5X checkpoint here .*: give a T5X checkpoint_<step>/ directory",
        t5x.read_params,
        tmp_path / "empty",
    )
    _one_line_error(
        r"scanned_run: no T5X checkpoint here .*: give one of its steps, e\.g\. .*scanned_run/checkpoint_3",
        t5x.import_checkpoint,
        written["scanned"].parent,
    )
    # An early orbax placeholder that leads outside the checkpoint.
    escaping = tmp_path / "1"
    escaping.mkdir()
    (escaping / "checkpoint").write_bytes(serialization.msgpack_serialize({"target": {"w": "PLACEHOLDER://../w"}}))
    _one_line_error(r"target/w: its array '\.\./w' lies outside the checkpoint directory", t5x.read_params, escaping)


def test_an_ocdbt_checkpoint_on_gs_imports_as_the_local_one(written, gcs):
    files.upload_tree(written["scanned"], f"{gcs}/run/checkpoint_3")
    _assert_same_import(t5x.import_checkpoint(f"{gcs}/run/checkpoint_3"), written["want"])
