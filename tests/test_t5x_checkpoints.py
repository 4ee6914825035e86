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


def test_a_t5x_checkpoint_trains_evaluates_and_exports_to_what_transformers_generates(tmp_path):
    """Issue 34's end to end: T5X's tiny checkpoint -> import -> DSS training steps -> eval ->
    export; transformers' generate gives the labels dss_jax.infer gives. The checkpoint is
    random, so this pins exactness, not accuracy."""
    import json

    import torch
    import transformers

    from conftest import run_binary

    env = dict(DSS_CACHE_DIR=tmp_path / "cache", XLA_FLAGS=None)
    sizes = ["--gin.synthetic_config.train_size=60", "--gin.synthetic_config.validation_size=8"]
    sizes += ["--gin.synthetic_config.test_size=8"]
    staged = tmp_path / "t5x_run" / "checkpoint_0"  # a T5X run's step directory
    staged.mkdir(parents=True)
    shutil.copy(T5X_DATA / "test_t5_tiny.checkpoint_0", staged / "checkpoint")
    spm = REPO_ROOT / "pretrained" / "synthetic_tiny_cpu" / "spiece.model"
    imported, run, hf = tmp_path / "imported", tmp_path / "run", tmp_path / "hf"
    lengths = "{'label_inputs': 64, 'label_targets': 8, 'rationale_inputs': 64, 'rationale_targets': 32}"
    common = ["--gin_file=tasks/synthetic.gin", f"--gin.TASK_FEATURE_LENGTHS={lengths}", *sizes]

    def ok(module, *args):
        r = run_binary(module, *args, **env)
        assert r.returncode == 0, f"{module}: {r.stderr[-3000:]}"
        return r

    ok("dss_jax.convert", f"--t5x_checkpoint={staged}", f"--vocab={spm}", f"--output={imported}")
    ok(
        "dss_jax.train",
        "--gin_file=runs/train.gin",
        *common,
        f"--gin.MODEL_DIR='{run}'",
        f"--gin.INITIAL_CHECKPOINT_PATH='{imported}'",
        "--gin.TRAIN_STEPS=2",
        "--gin.BATCH_SIZE=4",
        "--gin.EVAL_PERIOD=0",
        "--gin.train.checkpoint_period=2",
    )
    ok("dss_jax.eval", "--gin_file=runs/eval.gin", *common, f"--gin.CHECKPOINT_PATH='{run}'",
       f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'")  # fmt: skip
    assert json.loads((tmp_path / "eval" / "step_2" / "metrics.json").read_text())["num_examples"] == 8
    inputs = ["Ann has 3 pens and buys 2 more.", "A box holds 12 eggs; 5 break."]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": str(i), "input": t}) + "\n" for i, t in enumerate(inputs)))
    ok("dss_jax.infer", "--gin_file=runs/infer.gin", *common, f"--gin.CHECKPOINT_PATH='{run}'",
       f"--gin.INFER_INPUT='{source}'", f"--gin.INFER_OUTPUT='{tmp_path / 'out.jsonl'}'")  # fmt: skip
    ours = [json.loads(line)["label"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    ok("dss_jax.export", f"--checkpoint={run}", f"--output={hf}")

    from dss_jax import checkpoints
    from dss_jax.data import vocab
    from dss_jax.model.decoding import DecodeConfig, generate
    from dss_jax.prediction import encode_input

    ((_, path),) = checkpoints.select_checkpoints(str(run), "latest")
    student, params, vocab_path = checkpoints.load_checkpoint(path)
    vocabulary = vocab.from_checkpoint(vocab_path)
    model = transformers.T5ForConditionalGeneration.from_pretrained(hf, tie_word_embeddings=False).eval()
    for text, label in zip(inputs, ours):
        row, full = encode_input(vocabulary, "predict: " + text, 64, separator=False)
        tokens = np.asarray(generate(student, params, row[None], config=DecodeConfig(max_decode_length=8)).tokens)[0]
        assert vocabulary.decode(tokens.tolist()).strip() == label.strip()  # what infer wrote
        with torch.no_grad():
            theirs = model.generate(input_ids=torch.tensor([row[:full].tolist()]), max_new_tokens=8, do_sample=False)
        theirs = theirs[0, 1:].tolist()  # after the decoder's start token
        stop = theirs.index(1) + 1 if 1 in theirs else len(theirs)
        assert tokens[:stop].tolist() == theirs[:stop] and stop >= 2


def test_the_config_comes_from_the_users_t5x_model_file_and_is_checked_against_every_array(tmp_path):
    """A T5X checkpoint records no config: convert takes it from the user's model gin file
    (what arrays cannot show too: the activation, dropout, dtype, the vocabulary it names),
    and a gin file of another shape is one line naming the first array, before any write."""
    from conftest import run_binary
    from dss_jax import checkpoints
    from dss_jax.checkpoints import locate
    from dss_jax.model.config import T5Config

    tiny = T5X_DATA / "gin" / "t5x" / "examples" / "t5" / "t5_1_1" / "tiny.gin"
    spm = REPO_ROOT / "pretrained" / "synthetic_tiny_cpu" / "spiece.model"
    source = T5X_DATA / "test_t5_tiny.checkpoint_0"
    out = tmp_path / "imported"
    r = run_binary(
        "dss_jax.convert",
        f"--t5x_checkpoint={source}",
        f"--gin_file={tiny}",
        "--gin.DROPOUT_RATE=0.05",
        f"--gin.seqio.SentencePieceVocabulary.sentencepiece_model_file='{spm}'",
        f"--output={out}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "taken to be GELU" not in r.stderr  # the gin file says so
    config, _ = locate.read_config(str(out))
    assert (config.d_model, config.num_heads, config.d_kv, config.feed_forward) == (8, 4, 3, "gated-gelu")
    assert (config.dtype, config.dropout_rate) == ("bfloat16", 0.05)  # base.gin's dtype, the run's dropout
    _, _, vocab_path = checkpoints.load_params(str(out))
    assert pathlib.Path(vocab_path).read_bytes() == spm.read_bytes()  # the vocabulary the gin file names

    # Another activation than arrays show is the gin file's to say; another shape is refused.
    silu = T5Config(vocab_size=32128, d_model=8, d_kv=3, d_ff=16, num_heads=4, num_encoder_layers=2,
                    num_decoder_layers=2, feed_forward="gated-silu")  # fmt: skip
    assert t5x.import_checkpoint(source, silu)[1].feed_forward == "gated-silu"
    base = tiny.parent / "base.gin"
    r = run_binary("dss_jax.convert", f"--t5x_checkpoint={source}", f"--gin_file={base}",
                   "--gin.DROPOUT_RATE=0.0", f"--output={tmp_path / 'no'}")  # fmt: skip
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and "base.gin" in last and "describes another model than the checkpoint" in last, last
    assert not (tmp_path / "no").exists()
