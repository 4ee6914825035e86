"""Nothing lost, nothing silently wrong: checkpoints and HF directories that do not fit.

Each test damages one thing (a weight file, config.json, the output directory) and pins
what the user sees: one error naming the file and what disagrees, and nothing written or
overwritten. HF directories are written with our own exporter (numpy only, no torch).
"""

import functools
import json
import os
import pathlib
import shutil

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import save_file

from conftest import run_binary
from dss_jax import checkpoints, cli
from dss_jax.model import hf_convert
from dss_jax.model.config import T5Config
from dss_jax.model.t5 import init_variables

CONFIG = T5Config.preset("tiny", "t5.1.1", vocab_size=64)


def _random_params(config=CONFIG, seed=0):
    shapes = jax.eval_shape(functools.partial(init_variables, config), jax.random.key(0))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), nn.meta.unbox(shapes["params"]))


@pytest.fixture(scope="module")
def params():
    return _random_params()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, params):
    """A valid HF T5 directory of CONFIG (read-only for the tests: they copy it)."""
    return hf_convert.export_hf_checkpoint(params, CONFIG, tmp_path_factory.mktemp("hf") / "model")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _snapshot(d: pathlib.Path) -> dict:
    """{relative path: bytes} of every file under d: to show nothing was touched."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _weights(d):
    return {k: np.array(v) for k, v in hf_convert.read_safetensors(d / "model.safetensors").items()}


def _run(module, *args):
    return run_binary(module, *args, timeout=300)


def _assert_one_line_error(result, name):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{name}: error: "), result.stderr
    return last


def _fake_run(root: pathlib.Path, params, config=CONFIG) -> pathlib.Path:
    """A training run's MODEL_DIR as the trainer leaves it (config.json, spiece.model,
    config.gin, checkpoint_<step>/state with the params)."""
    model_dir = root / "run"
    ocp.PyTreeCheckpointer().save(model_dir / "checkpoint_5" / "state", {"step": np.int32(5), "params": params})
    (model_dir / "config.json").write_text(config.to_json())
    (model_dir / "spiece.model").write_bytes(b"the run's vocabulary")
    (model_dir / "config.gin").write_text("# the run's gin config\n")
    return model_dir


# ----- what a config implies ----------------------------------------------------------------
@pytest.mark.parametrize(
    "config",
    [
        CONFIG,
        T5Config.preset("tiny", "t5.1.0", vocab_size=50, num_encoder_layers=3, num_decoder_layers=1),
        T5Config.preset("tiny", "t5.1.1", d_kv=6, d_ff=40, relative_attention_num_buckets=8),
        T5Config.preset("tiny", "t5.1.0", num_decoder_layers=3, relative_attention_per_layer=True),
    ],
)
def test_param_shapes_are_the_models_own(config):
    model = nn.meta.unbox(jax.eval_shape(functools.partial(init_variables, config), jax.random.key(0))["params"])
    ours = {path: shape for path, (shape, _) in hf_convert.param_shapes(config).items()}
    flat = {
        tuple(str(k.key) for k in keys): leaf.shape for keys, leaf in jax.tree_util.tree_flatten_with_path(model)[0]
    }
    assert ours == flat


# ----- item 4: convert checks every tensor against config.json -------------------------------
def _mutate_weight(name, shape=None, dtype=None):
    def mutate(w):
        w[name] = np.zeros(shape or w[name].shape, dtype or np.float32)

    return mutate


def _add_layer(w):  # a third encoder block under num_layers=2
    for name in [k for k in w if k.startswith("encoder.block.1.")]:
        w[name.replace("block.1.", "block.2.")] = w[name]


def _drop_layer(w):
    for name in [k for k in w if k.startswith("decoder.block.1.")]:
        del w[name]


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (
            _mutate_weight("encoder.block.0.layer.1.DenseReluDense.wi_0.weight", (80, 32)),
            r"encoder\.block\.0\.layer\.1\.DenseReluDense\.wi_0\.weight has shape \[80, 32\], but .*config\.json "
            r"implies \[64, 32\] \(d_ff=64, d_model=32\)",
        ),
        (
            _mutate_weight("shared.weight", (128, 32)),
            r"shared\.weight has shape \[128, 32\], but .*config\.json implies \[64, 32\] \(vocab_size=64",
        ),
        (
            _mutate_weight("decoder.block.1.layer.1.EncDecAttention.k.weight", (40, 32)),
            r"EncDecAttention\.k\.weight has shape \[40, 32\].*num_heads\*d_kv=32",
        ),
        (_mutate_weight("lm_head.weight", dtype=np.int32), r"lm_head\.weight has dtype int32"),
        (_add_layer, r"unexpected weights \['encoder\.block\.2\..*config\.json \(num_layers=2"),
        (_drop_layer, r"missing weights \['decoder\.block\.1\..*config\.json \(num_layers=2"),
        # A separately trained input embedding would be dropped: T5 (and dss_jax) has one.
        (
            _mutate_weight("decoder.embed_tokens.weight"),
            r"decoder\.embed_tokens\.weight differs from shared\.weight, but T5 has one input embedding",
        ),
    ],
    ids=["d_ff", "vocab", "heads", "dtype", "deeper", "shallower", "own-input-embedding"],
)
def test_import_checks_every_tensor_against_config_json(hf_dir, tmp_path, mutate, expect):
    d = _copy(hf_dir, tmp_path / "hf")
    weights = _weights(d)
    mutate(weights)
    save_file(weights, str(d / "model.safetensors"))
    with pytest.raises(hf_convert.HFCheckpointError, match=expect) as e:
        hf_convert.import_hf_checkpoint(d)
    assert isinstance(e.value, cli.UserError) and "\n" not in str(e.value)


def test_convert_binary_rejects_a_mismatched_tensor_and_writes_nothing(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path / "hf")
    weights = _weights(d)
    weights["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"] = np.zeros((80, 32), np.float32)
    save_file(weights, str(d / "model.safetensors"))
    result = _run("dss_jax.convert", f"--hf_dir={d}", f"--output={tmp_path / 'out'}")
    last = _assert_one_line_error(result, "convert")
    assert "wi_0.weight has shape [80, 32]" in last and str(d / "config.json") in last
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no output, no staging directory left


# ----- item 4: damaged weight files, index and config.json -----------------------------------
def _safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


def _truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


def _garbage_header(path):
    b = path.read_bytes()
    n = int.from_bytes(b[:8], "little")
    path.write_bytes(b[:8] + b"\xff" * n + b[8 + n :])


def _huge_header_size(path):
    path.write_bytes((10**15).to_bytes(8, "little") + path.read_bytes()[8:])


@pytest.mark.parametrize(
    "damage, expect",
    [
        (
            lambda p: _truncate(p, len(p.read_bytes()) - 100),
            r"model\.safetensors: tensor \S+ \(F32 \[\d+, \d+\], \d+ bytes\) is said to lie at bytes .*truncated",
        ),
        (lambda p: _truncate(p, 5), r"model\.safetensors: 5 bytes, fewer than the 8-byte header size"),
        (_garbage_header, r"model\.safetensors: the header is not JSON"),
        (_huge_header_size, r"model\.safetensors: the header size 1000000000000000 exceeds the file's \d+ bytes"),
        (lambda p: p.write_bytes(_safetensors_bytes([1, 2])), r"model\.safetensors: the header is a JSON list"),
        (
            lambda p: p.write_bytes(_safetensors_bytes({"shared.weight": {"dtype": "F32"}})),
            r"model\.safetensors: the header entry of 'shared\.weight' is malformed",
        ),
        (
            lambda p: p.write_bytes(
                _safetensors_bytes({"shared.weight": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"ab")
            ),
            r"model\.safetensors: tensor shared\.weight: unsupported safetensors dtype 'F8_E4M3'",
        ),
    ],
    ids=[
        "truncated",
        "shorter-than-8-bytes",
        "garbage-header",
        "header-size-1e15",
        "header-list",
        "entry-without-shape",
        "unknown-dtype",
    ],
)
def test_a_damaged_safetensors_file_is_named(hf_dir, tmp_path, damage, expect):
    d = _copy(hf_dir, tmp_path / "hf")
    damage(d / "model.safetensors")
    with pytest.raises(hf_convert.HFCheckpointError, match=expect) as e:
        hf_convert.import_hf_checkpoint(d)
    assert str(d / "model.safetensors") in str(e.value) and "\n" not in str(e.value)


def _shard(d, weight_map=None, index_text=None):
    """Splits d's weights into two shards with an index; `weight_map`/`index_text` replace it."""
    weights = _weights(d)
    (d / "model.safetensors").unlink()
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, members in shards.items():
        save_file({k: weights[k] for k in members}, str(d / shard))
    wm = {k: s for s, members in shards.items() for k in members}
    index = {"metadata": {}, "weight_map": weight_map(wm) if weight_map else wm}
    (d / "model.safetensors.index.json").write_text(index_text if index_text is not None else json.dumps(index))


def _missing_shard(d):
    _shard(d)
    (d / "model-00002-of-00002.safetensors").unlink()


def _misplaced(wm):
    name = sorted(wm)[0]
    return dict(wm, **{name: "model-00002-of-00002.safetensors"})


@pytest.mark.parametrize(
    "damage, expect",
    [
        (
            _missing_shard,
            r"model\.safetensors\.index\.json names the shard \S+model-00002-of-00002\.safetensors, "
            r"which is missing",
        ),
        (lambda d: _shard(d, index_text="{not json"), r"model\.safetensors\.index\.json is not valid JSON"),
        (lambda d: _shard(d, index_text='{"metadata": {}}'), r"model\.safetensors\.index\.json: 'weight_map' must map"),
        (
            lambda d: _shard(d, weight_map=_misplaced),
            r"model\.safetensors\.index\.json puts \S+ in model-00002-of-00002\.safetensors, but it is in "
            r"model-00001-of-00002\.safetensors",
        ),
        (lambda d: (d / "config.json").write_text("{not json"), r"config\.json is not valid JSON"),
        (lambda d: (d / "config.json").write_text("[]"), r"config\.json holds a JSON list, not an object"),
        (
            lambda d: (d / "config.json").write_text('{"model_type": "t5"}'),
            r"config\.json: not a usable T5 config: HF T5 config lacks the key",
        ),
        (
            lambda d: (d / "config.json").write_text(
                json.dumps(dict(json.loads((d / "config.json").read_text()), d_model="32"))
            ),
            r"config\.json: not a usable T5 config",
        ),
    ],
    ids=[
        "missing-shard",
        "index-not-json",
        "index-without-weight-map",
        "index-misplaces-a-tensor",
        "config-not-json",
        "config-a-list",
        "config-without-sizes",
        "config-d_model-a-string",
    ],
)
def test_a_damaged_index_or_config_json_is_named(hf_dir, tmp_path, damage, expect):
    d = _copy(hf_dir, tmp_path / "hf")
    damage(d)
    with pytest.raises(cli.UserError, match=expect) as e:
        hf_convert.import_hf_checkpoint(d)
    assert "\n" not in str(e.value)


def test_sharded_weights_still_import(hf_dir, tmp_path, params):
    d = _copy(hf_dir, tmp_path / "hf")
    _shard(d)
    jax.tree.map(np.testing.assert_array_equal, hf_convert.import_hf_checkpoint(d)[0], params)


# ----- item 2: export never writes over a run, a checkpoint, or anything without --overwrite ---
def test_export_binary_refuses_a_run_dir_even_with_overwrite(tmp_path, params):
    model_dir = _fake_run(tmp_path, params)
    before = _snapshot(model_dir)
    result = _run(
        "dss_jax.export", f"--checkpoint={model_dir / 'checkpoint_5'}", f"--output={model_dir}", "--overwrite"
    )
    last = _assert_one_line_error(result, "export")
    assert last == f"export: error: --output={model_dir} is the training run {model_dir}: give a path outside it " + (
        "(not even with --overwrite)"
    )
    assert _snapshot(model_dir) == before
    assert sorted(os.listdir(tmp_path)) == ["run"]
    # ...and the run still loads, so it can still be exported and evaluated.
    jax.tree.map(np.testing.assert_array_equal, checkpoints.load_params(model_dir / "checkpoint_5")[0], params)


def test_export_output_directory_rules(tmp_path, params):
    out = tmp_path / "hf"
    export = functools.partial(hf_convert.export_hf_checkpoint, params, CONFIG, out)
    # An existing empty directory is fine.
    out.mkdir()
    export()
    first = _snapshot(out)
    # A non-empty one needs overwrite; until then nothing changes.
    with pytest.raises(checkpoints.OutputDirError, match=r"is not empty .*--overwrite"):
        export()
    assert _snapshot(out) == first
    # With overwrite an earlier export is replaced whole: stale shards and tokenizer files go too.
    (out / "model-00001-of-00002.safetensors").write_bytes(b"stale")
    (out / "tokenizer.json").write_text("{}")
    export(overwrite=True)
    assert _snapshot(out) == first
    # A file export would not write is the user's: refused, even with overwrite.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(checkpoints.OutputDirError, match=r"holds notes\.txt"):
        export(overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    # A dss_jax checkpoint (convert's output) is never written over.
    ckpt = checkpoints.save_params(tmp_path / "ckpt", params, CONFIG)
    before = _snapshot(ckpt)
    with pytest.raises(checkpoints.OutputDirError, match=r"holds the orbax checkpoint params/"):
        hf_convert.export_hf_checkpoint(params, CONFIG, ckpt, overwrite=True)
    with pytest.raises(checkpoints.OutputDirError, match=r"holds an orbax checkpoint"):
        hf_convert.export_hf_checkpoint(params, CONFIG, ckpt / "params", overwrite=True)
    assert _snapshot(ckpt) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_export_and_convert_refuse_a_checkpoint_step_or_an_input_as_output_even_with_overwrite(
    tmp_path, params, hf_dir
):
    model_dir = _fake_run(tmp_path, params)
    before = _snapshot(model_dir)
    inside = model_dir / "checkpoint_5" / "hf"
    last = _assert_one_line_error(
        _run("dss_jax.export", f"--checkpoint={model_dir}", f"--output={inside}", "--overwrite"), "export"
    )
    assert f"--output={inside} lies in {model_dir / 'checkpoint_5'}, part of the training run {model_dir}" in last
    assert _snapshot(model_dir) == before
    # The vocabulary to ship, inside the directory that would be replaced whole.
    out = hf_convert.export_hf_checkpoint(params, CONFIG, tmp_path / "hf", model_dir / "spiece.model")
    exported = _snapshot(out)
    last = _assert_one_line_error(
        _run(
            "dss_jax.export",
            f"--checkpoint={model_dir}",
            f"--output={out}",
            f"--vocab={out / 'spiece.model'}",
            "--overwrite",
        ),
        "export",
    )
    assert f"--output={out} holds --vocab ({out / 'spiece.model'}), which this command reads" in last
    assert _snapshot(out) == exported
    source = _copy(hf_dir, tmp_path / "source")
    last = _assert_one_line_error(
        _run("dss_jax.convert", f"--hf_dir={source}", f"--output={source}", "--overwrite"), "convert"
    )
    assert f"--output={source} is --hf_dir ({source}), which this command reads (not even with --overwrite)" in last
    assert _snapshot(source) == _snapshot(hf_dir)


def test_export_is_atomic_when_it_fails_half_way(tmp_path, params, monkeypatch):
    import safetensors.numpy

    out = tmp_path / "hf"
    hf_convert.export_hf_checkpoint(params, CONFIG, out)
    before = _snapshot(out)

    def crash(tensors, filename, metadata=None):
        pathlib.Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", crash)
    with pytest.raises(OSError, match="No space"):
        hf_convert.export_hf_checkpoint(params, CONFIG, out, overwrite=True)
    assert _snapshot(out) == before  # the earlier export is intact
    with pytest.raises(OSError, match="No space"):
        hf_convert.export_hf_checkpoint(params, CONFIG, tmp_path / "new")
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no half-exported model, no staging


def test_save_params_never_writes_into_a_run_and_stages_its_writes(tmp_path, params, monkeypatch):
    model_dir = _fake_run(tmp_path, params)
    before = _snapshot(model_dir)
    with pytest.raises(checkpoints.OutputDirError, match=r"holds a training run's checkpoint_5/"):
        checkpoints.save_params(model_dir, params, CONFIG, overwrite=True)
    assert _snapshot(model_dir) == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("my own config")
    with pytest.raises(checkpoints.OutputDirError, match="--overwrite"):
        checkpoints.save_params(tmp_path / "mine", params, CONFIG)
    assert (tmp_path / "mine" / "config.json").read_text() == "my own config"

    def crash(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.PyTreeCheckpointer, "save", crash)
    with pytest.raises(OSError, match="No space"):
        checkpoints.save_params(tmp_path / "ckpt", params, CONFIG)
    assert sorted(os.listdir(tmp_path)) == ["mine", "run"]


# ----- item 11: a checkpoint whose config.json disagrees with its weights --------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory, params):
    return checkpoints.save_params(tmp_path_factory.mktemp("saved") / "ckpt", params, CONFIG)


def _with_config(src, dst, **changes):
    d = _copy(src, dst)
    (d / "config.json").write_text(CONFIG.replace(**changes).to_json())
    return d


@pytest.mark.parametrize(
    "changes, expect",
    [
        (
            dict(d_ff=80),
            r"encoder/layers_0/mlp/wi_0/kernel is \[32, 64\] in \S+, but \S+config\.json implies "
            r"\[32, 80\] \(d_model, d_ff\)",
        ),
        (
            dict(vocab_size=128),
            r"token_embedder/embedding is \[64, 32\] in \S+, but \S+config\.json implies "
            r"\[128, 32\] \(vocab_size, d_model\)",
        ),
        (
            dict(num_decoder_layers=3),
            r"\S+config\.json \(num_encoder_layers=2, num_decoder_layers=3\) calls for "
            r"the parameter decoder/layers_2/",
        ),
        (
            dict(num_encoder_layers=1),
            r"holds the parameter encoder/layers_1/\S+, which \S+config\.json "
            r"\(num_encoder_layers=1",
        ),
        (dict(feed_forward="relu"), r"calls for the parameter \S+/mlp/wi/kernel"),
    ],
    ids=["d_ff", "vocab", "deeper", "shallower", "not-gated"],
)
def test_load_params_names_config_json_and_the_first_disagreeing_param(saved, tmp_path, changes, expect):
    d = _with_config(saved, tmp_path / "ckpt", **changes)
    with pytest.raises(checkpoints.CheckpointError, match=expect) as e:
        checkpoints.load_params(d)
    assert str(d / "config.json") in str(e.value) and "\n" not in str(e.value)


def test_every_loader_reports_a_disagreeing_config_json(saved, tmp_path, monkeypatch):
    from dss_jax.teacher import student_backend
    from dss_jax.training import loop

    d = _with_config(saved, tmp_path / "ckpt", d_ff=80)
    expect = rf"{d / 'config.json'}".replace(".", r"\.") + r" implies \[32, 80\]"
    with pytest.raises(cli.UserError, match=expect):  # eval and infer
        checkpoints.load_checkpoint(str(d))
    with pytest.raises(cli.UserError, match=expect):  # the student as a teacher backend
        student_backend.StudentBackend(student_backend.StudentConfig(checkpoint=str(d), family="svamp"))

    class NoRunYet:  # INITIAL_CHECKPOINT_PATH is read when the run has no checkpoint of its own
        def latest_step(self):
            return None

    with pytest.raises(cli.UserError, match=expect):
        loop._initial_state(None, NoRunYet(), str(d), str(tmp_path / "run"), trained_with={})


def test_a_run_step_copied_without_its_config_json_is_refused_with_the_fix(saved, tmp_path):
    """One config.json describes a run's steps (in MODEL_DIR); a step dir taken away from
    it cannot be read as some other model: every loader says which file to bring along."""
    step = tmp_path / "copied" / "checkpoint_5"
    _copy(saved / "params", step / "state")
    (step / "metadata").mkdir()
    (step / "metadata" / "metadata").write_text(json.dumps({"step": 5, "input_position": 5}))
    expect = rf"no config\.json in {step.parent} \(the training run's MODEL_DIR above {step}\): put the config\.json"
    with pytest.raises(checkpoints.CheckpointNotFoundError, match=expect):
        checkpoints.load_params(step)
    with pytest.raises(checkpoints.CheckpointNotFoundError, match=expect):
        checkpoints.load_checkpoint(str(step))


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda t: t / "nowhere", r"checkpoint directory \S+nowhere does not exist"),
        (lambda t: (t / "file.txt").write_text("x") and t / "file.txt", r"is a file, not a checkpoint directory"),
        (lambda t: (t / "empty").mkdir() or t / "empty", r"holds no orbax checkpoint"),
    ],
    ids=["missing", "a-file", "not-a-checkpoint"],
)
def test_load_params_names_a_path_that_is_no_checkpoint(tmp_path, make, expect):
    with pytest.raises(cli.UserError, match=expect):
        checkpoints.load_params(make(tmp_path))


def test_a_damaged_orbax_checkpoint_is_named(saved, tmp_path):
    d = _copy(saved, tmp_path / "ckpt")
    (d / "params" / "_METADATA").write_text("not json")
    with pytest.raises(checkpoints.CheckpointError, match=rf"{d / 'params'}: cannot read the orbax checkpoint"):
        checkpoints.load_params(d)


@pytest.mark.parametrize("case", ["missing", "not-a-checkpoint", "config-disagrees"])
def test_export_binary_names_a_bad_checkpoint(saved, tmp_path, case):
    ckpt = {
        "missing": lambda: tmp_path / "nowhere",
        "not-a-checkpoint": lambda: tmp_path,
        "config-disagrees": lambda: _with_config(saved, tmp_path / "ckpt", num_encoder_layers=3),
    }[case]()
    result = _run("dss_jax.export", f"--checkpoint={ckpt}", f"--output={tmp_path / 'out'}")
    last = _assert_one_line_error(result, "export")
    assert str(ckpt) in last
    assert not (tmp_path / "out").exists()


# ----- #17 item 5: export takes what eval takes: a run's MODEL_DIR, its latest step or --step ----
def _two_step_run(root: pathlib.Path, params) -> tuple[pathlib.Path, dict]:
    model_dir = _fake_run(root, params)
    later = _random_params(seed=1)
    ocp.PyTreeCheckpointer().save(model_dir / "checkpoint_10" / "state", {"step": np.int32(10), "params": later})
    return model_dir, {5: params, 10: later}


@pytest.mark.parametrize("step_flag, step", [((), 10), (("--step=5",), 5)], ids=["latest", "step"])
def test_export_binary_takes_a_run_model_dir(tmp_path, params, step_flag, step):
    model_dir, by_step = _two_step_run(tmp_path, params)
    out = tmp_path / "hf"
    result = _run("dss_jax.export", f"--checkpoint={model_dir}", f"--output={out}", *step_flag)
    assert result.returncode == 0, result.stderr
    assert f"checkpoint_{step} (step {step}) -> {out}" in result.stdout
    assert f"from_pretrained({str(out)!r}, tie_word_embeddings=False)" in result.stdout  # how to load it
    exported, config, vocab = hf_convert.import_hf_checkpoint(out)
    jax.tree.map(np.testing.assert_array_equal, exported, by_step[step])
    assert config == CONFIG and pathlib.Path(vocab).read_bytes() == b"the run's vocabulary"


def test_an_export_says_how_to_prompt_it_and_generates_the_run_s_lengths(tmp_path, params):
    """What a user of the export meets: a length transformers does not cut rationales at,
    a model card with the prompt format, task, lengths and validation figures, and files
    other users can read."""
    model_dir, _ = _two_step_run(tmp_path, params)
    (model_dir / "config.gin").write_text(
        "TASK_FEATURE_LENGTHS = {'label_inputs': 64, 'label_targets': 16, 'rationale_inputs': 64, "
        "'rationale_targets': 96}\n"
    )
    (model_dir / "task.json").write_text(
        json.dumps({"task": "dss_svamp", "options": {"label_source": "teacher", "label_target": "label"}})
    )
    (model_dir / "validation").mkdir()
    (model_dir / "validation" / "metrics.jsonl").write_text(
        json.dumps({"step": 5, "decode/accuracy": 0.5}) + "\n" + json.dumps({"step": 10, "decode/accuracy": 0.625})
    )
    out = tmp_path / "hf"
    result = _run("dss_jax.export", f"--checkpoint={model_dir}", f"--output={out}")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "generation_config.json").read_text())["max_new_tokens"] == 96
    card = (out / "README.md").read_text()
    for expected in (
        "`predict: <input>` gives the label",
        "`explain: <input>` gives a rationale",
        "Task: `dss_svamp`",
        '"rationale_targets": 96',
        "decode/accuracy: 0.625",
        f"from_pretrained({str(out)!r}, tie_word_embeddings=False)",
    ):
        assert expected in card, expected
    umask = os.umask(0)
    os.umask(umask)
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in out.iterdir()} == {
        f.name: oct(0o666 & ~umask) for f in out.iterdir()
    }
    # A converted model is no run's: no length is made up, and the card says so.
    checkpoints.save_params(tmp_path / "converted", params, CONFIG)
    result = _run("dss_jax.export", f"--checkpoint={tmp_path / 'converted'}", f"--output={tmp_path / 'hf2'}")
    assert result.returncode == 0, result.stderr
    assert "max_new_tokens" not in json.loads((tmp_path / "hf2" / "generation_config.json").read_text())
    assert "no training run's (a converted model)" in (tmp_path / "hf2" / "README.md").read_text()
    assert "sets no length" in result.stderr


def test_a_run_without_a_finished_checkpoint_is_named_as_one(tmp_path):
    """The fix for a MODEL_DIR with no checkpoint yet is to train on, not to convert one."""
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(CONFIG.to_json())
    (model_dir / "config.gin").write_text("# the run's gin config\n")
    (model_dir / "checkpoint_10.orbax-checkpoint-tmp-123").mkdir()  # a save still being written
    result = _run("dss_jax.export", f"--checkpoint={model_dir}", f"--output={tmp_path / 'hf'}")
    last = _assert_one_line_error(result, "export")
    assert f"{model_dir} holds no orbax checkpoint yet: it is a training run's MODEL_DIR" in last
    assert "first checkpoint save" in last and "convert" not in last and "save_params" not in last
    assert sorted(os.listdir(tmp_path)) == ["run"]


def _unfinished_step(root):  # state/ without orbax's files: a save cut short
    (root / "run" / "checkpoint_5" / "state").mkdir(parents=True)
    (root / "run" / "checkpoint_5" / "state" / "half_written").write_bytes(b"")
    return root / "run" / "checkpoint_5"


def _run_without_checkpoints(root):
    (root / "run").mkdir()
    (root / "run" / "config.gin").write_text("# the run's gin config\n")
    return root / "run"


@pytest.mark.parametrize(
    "make, expect",
    [
        (
            _unfinished_step,
            r"checkpoint_5 holds no orbax checkpoint: the save of this step did not finish; use another "
            r"step of the run \S+/run$",
        ),
        (
            _run_without_checkpoints,
            r"run holds no orbax checkpoint yet: it is a training run's MODEL_DIR without a "
            r"finished checkpoint_<step>/; let the run reach its first checkpoint save",
        ),
        (
            lambda t: t,
            r"holds no orbax checkpoint: give a training run's MODEL_DIR \(with checkpoint_<step>/ dirs\), "
            r"one checkpoint_<step>/ dir, or a directory written by `python -m dss_jax\.convert`",
        ),
        (
            lambda t: _fake_run(t, _random_params()),  # INITIAL_CHECKPOINT_PATH takes one checkpoint, not a run
            r"run is a training run's MODEL_DIR, not one checkpoint: give one of its checkpoint_<step>/ dirs "
            r"\(steps \[5\]\), e\.g\. \S+/run/checkpoint_5$",
        ),
    ],
    ids=["unfinished-step", "run-without-checkpoints", "any-other-dir", "run-given-for-one-checkpoint"],
)
def test_a_directory_without_a_checkpoint_gets_the_fix_for_what_it_is(tmp_path, make, expect):
    with pytest.raises(checkpoints.CheckpointNotFoundError, match=expect) as e:
        checkpoints.load_params(make(tmp_path))
    assert "\n" not in str(e.value)


def test_select_checkpoints_names_the_callers_settings(tmp_path, params):
    model_dir, _ = _two_step_run(tmp_path, params)
    select = functools.partial(checkpoints.select_checkpoints, path_setting="--checkpoint", steps_setting="--step")
    assert select(model_dir) == [(10, str(model_dir / "checkpoint_10"))]
    assert select(model_dir, 5) == [(5, str(model_dir / "checkpoint_5"))]
    assert select(model_dir / "checkpoint_5") == [(5, str(model_dir / "checkpoint_5"))]
    with pytest.raises(
        checkpoints.CheckpointError,
        match=r"run has no checkpoint for step\(s\) \[7\]; it has steps "
        r"\[5, 10\] \(set --step to one of them\)",
    ):
        select(model_dir, 7)
    with pytest.raises(checkpoints.CheckpointError, match=r"^--step=5 needs a model dir .*checkpoint_5 has none$"):
        select(model_dir / "checkpoint_5", 5)
    with pytest.raises(checkpoints.CheckpointNotFoundError, match=r"nowhere does not exist \(--checkpoint\)$"):
        select(tmp_path / "nowhere")
    assert select(model_dir, "all") == [(5, str(model_dir / "checkpoint_5")), (10, str(model_dir / "checkpoint_10"))]


# ----- issue 30 item 7: a damaged checkpoint -------------------------------------------------
def _saved_run(root: pathlib.Path, by_step: dict) -> pathlib.Path:
    """A MODEL_DIR as RunCheckpointer writes it: a state (step, params, optimizer state)
    per step with the metadata, and the run's config.json and spiece.model."""
    model_dir = root / "run"
    ckpt = checkpoints.RunCheckpointer(str(model_dir), asynchronous=False)
    for step, params in by_step.items():
        state = {"step": np.int32(step), "params": params, "opt_state": {"mu": jax.tree.map(np.zeros_like, params)}}
        ckpt.save(step, state, {"step": step, "input_position": step})
    ckpt.close()
    (model_dir / "config.json").write_text(CONFIG.to_json())
    (model_dir / "spiece.model").write_bytes(b"the run's vocabulary")
    return model_dir


def _flip_a_bit_of_a_parameter(step: pathlib.Path) -> None:
    """Flips a bit of the first value of one parameter of a run's step, as the issue's
    flipped bits in ocdbt.process_0/d/ did: the step reads back without any error, with a
    value that is still a finite number, so only its checksum can tell. The orbax item is
    written again with that one bit changed, since where orbax puts a value varies."""
    from dss_jax.checkpoints import params as ckpt_params

    state = step / "state"
    meta = ckpt_params._metadata_tree(state)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    tree = ocp.PyTreeCheckpointer().restore(state, args=ocp.args.PyTreeRestore(item=meta, restore_args=args))
    params = tree
    for key in ckpt_params.find_params_path(tree):
        params = params[key]
    params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"].view(np.uint32).flat[0] ^= 1 << 20
    ocp.PyTreeCheckpointer().save(step / "state.rewritten", tree)
    shutil.rmtree(state)
    (step / "state.rewritten").rename(state)


def test_a_damaged_checkpoint_is_refused_by_every_loader_naming_it(tmp_path, params):
    from dss_jax.teacher import student_backend
    from dss_jax.training import loop

    model_dir = _saved_run(tmp_path, {5: params, 10: _random_params(seed=1)})
    damaged = model_dir / "checkpoint_10"
    _flip_a_bit_of_a_parameter(damaged)
    expect = (
        rf"^{damaged} is damaged: the checksum of the parameter params/encoder/layers_0/mlp/wo/kernel differs from "
        rf"the one recorded when it was saved \({damaged}/metadata/metadata\): use another step of the run "
        rf"{model_dir} \(it has steps \[5\]\), or copy this one again$"
    )
    ((_, latest),) = checkpoints.select_checkpoints(model_dir, "latest")  # eval, infer, export, annotate
    for load in (checkpoints.load_params, checkpoints.load_checkpoint):
        with pytest.raises(checkpoints.DamagedCheckpointError, match=expect) as e:
            load(latest)
        assert "\n" not in str(e.value)
    with pytest.raises(cli.UserError, match=expect[1:]):  # the student as a teacher backend
        student_backend.StudentBackend(student_backend.StudentConfig(checkpoint=str(model_dir), family="svamp"))

    class NoRunYet:  # INITIAL_CHECKPOINT_PATH
        def latest_step(self):
            return None

    with pytest.raises(checkpoints.DamagedCheckpointError, match=expect):
        loop._initial_state(None, NoRunYet(), str(damaged), str(tmp_path / "new_run"), {})
    loaded, _, _ = checkpoints.load_params(model_dir / "checkpoint_5")  # the intact step verifies
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_the_binaries_stop_on_a_damaged_checkpoint_before_writing(tmp_path, params):
    import _eval_toy as toy

    model_dir = _saved_run(tmp_path, {5: params})
    damaged = model_dir / "checkpoint_5"
    _flip_a_bit_of_a_parameter(damaged)
    result = _run("dss_jax.export", f"--checkpoint={model_dir}", f"--output={tmp_path / 'hf'}")
    last = _assert_one_line_error(result, "export")
    assert last.startswith(f"export: error: {damaged} is damaged: the checksum of the parameter params/encoder/")
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    toy.write_task_module(toy.write_caches(tmp_path / "caches"), task_dir)
    result = run_binary(
        "dss_jax.eval",
        "--gin_file=runs/eval.gin",
        f"--gin_file={toy.write_task_gin(task_dir)}",
        f"--gin.CHECKPOINT_PATH='{model_dir}'",
        f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'",
        timeout=300,
        PYTHONPATH=os.pathsep.join([str(task_dir), str(pathlib.Path(__file__).parents[1])]),
    )
    last = _assert_one_line_error(result, "eval")
    assert last.startswith(f"eval: error: {damaged} is damaged: the checksum of the parameter params/encoder/")
    assert sorted(os.listdir(tmp_path)) == ["caches", "run", "task"]  # no hf/, no eval/


def _with_nonfinite(params, value=np.nan):
    bad = jax.tree.map(np.array, params)
    bad["encoder"]["layers_1"]["mlp"]["wo"]["kernel"][3, :2] = value
    return bad


def test_nonfinite_parameters_are_refused_on_every_load_naming_the_first(tmp_path, params, hf_dir):
    first = r"2 of the 2048 values of the parameter (params/)?encoder/layers_1/mlp/wo/kernel"
    # Checkpoints from before checksums were recorded still load, but not with NaN in them.
    legacy = _fake_run(tmp_path / "legacy", _with_nonfinite(params))
    with pytest.raises(
        checkpoints.DamagedCheckpointError,
        match=rf"^{legacy}/checkpoint_5 holds NaN or infinity: {first}; it is damaged, or its run diverged: ",
    ):
        checkpoints.load_params(legacy / "checkpoint_5")
    assert checkpoints.load_params(_fake_run(tmp_path / "legacy_ok", params) / "checkpoint_5")[1] == CONFIG
    # A run that saved infinity: its checksums agree, so it was saved so.
    run = _saved_run(tmp_path / "diverged", {5: _with_nonfinite(params, np.inf)})
    with pytest.raises(checkpoints.DamagedCheckpointError, match=rf"{first}; it was saved so \(its run diverged\)"):
        checkpoints.load_params(run / "checkpoint_5")
    # A Hugging Face directory, and save_params / convert, which write nothing.
    hf = hf_convert.export_hf_checkpoint(_with_nonfinite(params), CONFIG, tmp_path / "hf")
    with pytest.raises(checkpoints.DamagedCheckpointError, match=rf"^{hf} holds NaN or infinity: {first}"):
        checkpoints.load_checkpoint(str(hf))
    result = _run("dss_jax.convert", f"--hf_dir={hf}", f"--output={tmp_path / 'converted'}")
    last = _assert_one_line_error(result, "convert")
    assert f"{hf} holds NaN or infinity: 2 of the 2048 values of the parameter encoder/layers_1/mlp/wo/kernel" in last
    with pytest.raises(checkpoints.DamagedCheckpointError, match="nothing is written"):
        checkpoints.save_params(tmp_path / "saved", _with_nonfinite(params), CONFIG)
    assert not (tmp_path / "converted").exists() and not (tmp_path / "saved").exists()


def test_the_checksum_is_the_same_however_the_arrays_are_sharded(tmp_path, params, cpu_devices):
    """What each device holds is summed where it is: a state saved sharded over 8 devices
    (as over several processes) verifies when read back whole on the host, and a changed
    value anywhere changes it."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from dss_jax.checkpoints import integrity

    mesh = Mesh(np.array(cpu_devices[:8]).reshape(4, 2), ("data", "model"))
    sharded = jax.tree.map(
        lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec(*(("data", "model")[: x.ndim])))), params
    )
    assert len(sharded["token_embedder"]["embedding"].sharding.device_set) == 8
    assert integrity.scan(sharded) == integrity.scan(params)
    changed = jax.tree.map(np.array, params)
    changed["decoder"]["decoder_norm"]["scale"][7] = np.nextafter(changed["decoder"]["decoder_norm"]["scale"][7], 9)
    differ = [p for p, (c, _, _) in integrity.scan(changed).items() if integrity.scan(params)[p][0] != c]
    assert differ == ["decoder/decoder_norm/scale"]
    model_dir = _saved_run(tmp_path, {})
    ckpt = checkpoints.RunCheckpointer(str(model_dir), asynchronous=False)
    ckpt.save(5, {"step": np.int32(5), "params": sharded}, {"step": 5})
    ckpt.close()
    loaded, _, _ = checkpoints.load_params(model_dir / "checkpoint_5")
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


# ----- issue 30 item 9: a checkpoint's run found in the wrong place ---------------------------
def test_a_checkpoint_is_read_with_its_own_runs_files_only(tmp_path, params):
    """config.json, spiece.model and task.json come from the checkpoint dir, or from the
    MODEL_DIR right above a run's step: never from another run further up."""
    import gin
    from dss_jax.data import options as dss_options
    from dss_jax.teacher import student_backend

    run = _fake_run(tmp_path, params)  # run/{config.json, spiece.model, config.gin, checkpoint_5/}
    checkpoints.write_run_task(run, "dss_svamp", {"label_target": "rationale_then_label"})
    # A converted copy kept inside that run, without a spiece.model: no run's options or vocabulary.
    copy = checkpoints.save_params(run / "exports" / "copy", params, CONFIG)
    assert checkpoints.run_task(copy) is None and checkpoints.load_params(copy)[2] is None
    gin.clear_config()
    try:
        assert dss_options.use_run_options("dss_svamp", str(copy), "CHECKPOINT_PATH") is None
        assert dss_options.bound_option("dss_svamp", "label_target") is None
    finally:
        gin.clear_config()
    with pytest.raises(
        student_backend.StudentLoadError, match=rf"has no spiece\.model or tokenizer\.json \(looked in {copy}\)"
    ):
        student_backend.StudentBackend(student_backend.StudentConfig(checkpoint=str(copy), family="svamp"))
    # A step taken out of its run into a folder inside it is not read with the run's config.json.
    moved = run / "old" / "checkpoint_7"
    shutil.copytree(run / "checkpoint_5", moved)
    with pytest.raises(
        checkpoints.CheckpointNotFoundError,
        match=rf"^no config\.json in {run / 'old'} \(the training run's MODEL_DIR above {moved}\): ",
    ):
        checkpoints.load_params(moved)
    assert checkpoints.run_task(moved) is None and checkpoints.find_vocabulary(moved) is None
    (run / "sub_run").mkdir()  # a new MODEL_DIR inside the run is another run
    assert checkpoints.run_task(run / "sub_run") is None
    # The layouts dss_jax writes: a run's step (or its state/), a save_params dir (or its params/).
    for step in (run / "checkpoint_5", run / "checkpoint_5" / "state"):
        assert checkpoints.run_task(step)[0] == str(run / "task.json")
        assert checkpoints.load_params(step)[2] == str(run / "spiece.model")
    converted = checkpoints.save_params(tmp_path / "converted", params, CONFIG, vocab_path=run / "spiece.model")
    assert checkpoints.load_params(converted / "params")[2] == str(converted / "spiece.model")
    assert checkpoints.describing_dir(converted / "params") == converted


def test_a_checkpoint_without_its_spiece_model_is_refused_unless_the_vocabulary_is_given(tmp_path, params, monkeypatch):
    """Decoding with a vocabulary trained for the task, or a parent's, would give other
    token ids than the embeddings learnt: eval and infer stop in one line instead."""
    import _eval_toy as toy

    import gin
    from dss_jax import eval as eval_binary
    from dss_jax import infer
    from dss_jax.data import tasks as dss_tasks

    monkeypatch.setenv("DSS_CACHE_DIR", str(tmp_path / "cache"))
    caches = toy.write_caches(tmp_path / "caches")
    spm = toy.train_vocab(caches, tmp_path)
    task = "toy_vocabulary_from_gin"
    dss_tasks.register_cache_task(task, train_cache=caches["train"], test_cache=caches["test"], family="cqa")
    other_run = _fake_run(tmp_path / "other", params)  # a run whose spiece.model is not the copy's
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"id": "a", "input": "what about a red car?"}) + "\n")
    gin.clear_config()
    try:
        for copy in (
            checkpoints.save_params(other_run / "copy", params, CONFIG),
            checkpoints.save_params(tmp_path / "alone", params, CONFIG),
        ):
            expect = (
                rf"^CHECKPOINT_PATH={copy}: {copy} has no spiece\.model or tokenizer\.json, so the vocabulary the "
                r"checkpoint was trained with is unknown: copy its run's vocabulary there, or bind "
                r"--gin\.task_vocabulary\.spm_path=\"'PATH'\" to it"
            )
            with pytest.raises(cli.UserError, match=expect):
                eval_binary.evaluate_checkpoints(
                    checkpoint_path=str(copy),
                    output_dir=str(tmp_path / "eval"),
                    task_name=task,
                    feature_lengths=toy.LENGTHS,
                    max_examples=2,
                )
            for task_name in (task, None):
                with pytest.raises(cli.UserError, match=expect):
                    infer.infer_file(
                        checkpoint_path=str(copy),
                        input_path=str(inputs),
                        output_path=str(tmp_path / "out.jsonl"),
                        feature_lengths=toy.LENGTHS,
                        task_name=task_name,
                    )
        assert not (tmp_path / "eval").exists() and not (tmp_path / "out.jsonl").exists()
        gin.bind_parameter("task_vocabulary.spm_path", str(spm))  # the vocabulary, given explicitly
        dss_tasks.get_task(task).output_features["label_targets"].vocabulary.reset()
        metrics = eval_binary.evaluate_checkpoints(
            checkpoint_path=str(copy),
            output_dir=str(tmp_path / "eval"),
            task_name=task,
            feature_lengths=toy.LENGTHS,
            max_examples=2,
        )
        assert metrics[None]["num_examples"] == 2
    finally:
        gin.clear_config()
        dss_tasks.get_task(task).output_features["label_targets"].vocabulary.reset()
