"""export, convert and vocabularies on gs:// paths (a GCS emulator, tests/conftest.py):
what a local run writes and reads, a run given URLs writes and reads on the object store."""

import os
import pickle

import numpy as np
import pytest
from test_checkpoints import CONFIG, SENTENCES, _assert_same, _random_params

from conftest import REPO_ROOT, run_binary
from dss_jax import checkpoints, files
from dss_jax.data import vocab
from dss_jax.model import hf_convert, interface

T5X_DATA = REPO_ROOT.parent / "shared" / "data" / "t5x_testdata"
SETTINGS = vocab.VocabSettings(vocab_size=60, byte_fallback=False)  # CONFIG has 64 ids


def _names(url) -> set[str]:
    return {p.name for p in files.path(url).iterdir()}


def _download(url, local):
    """The files directly under `url`, copied into the local directory `local`."""
    local.mkdir(parents=True)
    for p in files.path(url).iterdir():
        files.copy(p, local / p.name)
    return local


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    return vocab.train_vocabulary(SENTENCES, tmp_path_factory.mktemp("vocab") / "spiece.model", SETTINGS)


def test_export_writes_to_gs_what_it_writes_locally_and_refuses_an_export_there_without_overwrite(
    tmp_path, gcs, spiece
):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    params = _random_params()
    checkpoints.save_params(tmp_path / "ckpt", params, CONFIG, vocab_path=spiece)
    files.upload_tree(tmp_path / "ckpt", f"{gcs}/ckpt")

    run_binary("dss_jax.export", f"--checkpoint={tmp_path / 'ckpt'}", f"--output={tmp_path / 'local'}", check=True)
    r = run_binary("dss_jax.export", f"--checkpoint={gcs}/ckpt", f"--output={gcs}/hf", check=True)
    assert f"-> {gcs}/hf" in r.stdout and "gcloud storage cp -r" in r.stdout
    local = tmp_path / "local"
    exported = {"config.json", "generation_config.json", "model.safetensors", "spiece.model", "README.md"}
    assert _names(f"{gcs}/hf") == {p.name for p in local.iterdir()} == exported
    assert _names(gcs) == {"ckpt", "hf"}  # no staging directory left behind
    down = _download(f"{gcs}/hf", tmp_path / "down")
    for name in ("config.json", "generation_config.json", "model.safetensors", "spiece.model"):
        assert (down / name).read_bytes() == (local / name).read_bytes(), name
    assert (down / "spiece.model").read_bytes() == spiece.read_bytes()
    assert f"gcloud storage cp -r {gcs}/hf ." in (down / "README.md").read_text()

    rng = np.random.default_rng(0)
    enc = torch.tensor(rng.integers(2, CONFIG.vocab_size, (2, 7)))
    dec = torch.tensor(rng.integers(2, CONFIG.vocab_size, (2, 5)))
    logits = []
    for d in (local, down):
        model = transformers.T5ForConditionalGeneration.from_pretrained(d, tie_word_embeddings=False).eval()
        with torch.no_grad():
            logits.append(model(input_ids=enc, decoder_input_ids=dec).logits.numpy())
    np.testing.assert_array_equal(logits[0], logits[1])

    # An existing export is replaced only with --overwrite, as locally.
    r = run_binary("dss_jax.export", f"--checkpoint={gcs}/ckpt", f"--output={gcs}/hf")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert f"{gcs}/hf" in last and "--overwrite" in last and "Traceback" not in r.stderr
    run_binary("dss_jax.export", f"--checkpoint={gcs}/ckpt", f"--output={gcs}/hf", "--overwrite", check=True)
    assert files.path(f"{gcs}/hf/model.safetensors").read_bytes() == (local / "model.safetensors").read_bytes()
    assert _names(gcs) == {"ckpt", "hf"}


def test_convert_reads_an_hf_dir_on_gs_and_writes_the_checkpoint_there(tmp_path, gcs, spiece):
    pytest.importorskip("torch")
    from test_hf_convert import make_hf_checkpoint

    hf_dir = tmp_path / "hf"
    make_hf_checkpoint(hf_dir, "t5.1.1")
    (hf_dir / "spiece.model").write_bytes(spiece.read_bytes())
    files.upload_tree(hf_dir, f"{gcs}/hf")
    want, want_config, _ = hf_convert.import_hf_checkpoint(hf_dir)

    r = run_binary("dss_jax.convert", f"--hf_dir={gcs}/hf", f"--output={gcs}/ckpt", check=True)
    assert f"converted {gcs}/hf -> {gcs}/ckpt" in r.stdout
    assert "spiece.model" in _names(f"{gcs}/ckpt") and _names(gcs) == {"hf", "ckpt"}
    params, config, vocab_path = checkpoints.load_params(f"{gcs}/ckpt")
    _assert_same(params, want)
    assert config == want_config
    assert files.path(vocab_path).read_bytes() == spiece.read_bytes()

    r = run_binary("dss_jax.convert", f"--hf_dir={gcs}/hf", f"--output={gcs}/ckpt")
    assert r.returncode != 0 and f"{gcs}/ckpt" in r.stderr.strip().splitlines()[-1]


def test_hf_weights_sharded_on_gs_import_as_local_ones_and_a_decoder_only_export_lands_there(tmp_path, gcs, spiece):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
        num_hidden_layers=2, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    files.upload_tree(tmp_path / "hf", f"{gcs}/hf")
    want, want_config, _ = interface.import_hf_checkpoint(tmp_path / "hf")
    params, got_config, _ = interface.import_hf_checkpoint(f"{gcs}/hf")
    _assert_same(params, want)
    assert got_config == want_config

    # A pytorch_model.bin on gs:// (torch.load reads a local copy).
    weights = hf_convert.read_hf_weights(tmp_path / "hf")
    torch.save({k: torch.tensor(np.asarray(v)) for k, v in weights.items()}, tmp_path / "pytorch_model.bin")
    files.upload(tmp_path / "pytorch_model.bin", f"{gcs}/bin/pytorch_model.bin")
    from_bin = hf_convert.read_hf_weights(f"{gcs}/bin")
    assert from_bin.keys() == weights.keys()
    for k, v in weights.items():
        np.testing.assert_array_equal(from_bin[k], v, err_msg=k)

    # A damaged file on gs:// is named by its URL.
    files.path(f"{gcs}/bad/model.safetensors").write_bytes(b"\x01")
    with pytest.raises(hf_convert.HFCheckpointError, match=f"^{gcs}/bad/model.safetensors: "):
        hf_convert.read_hf_weights(f"{gcs}/bad")

    # The export of a decoder-only student with a SentencePiece vocabulary on gs://.
    files.upload(spiece, f"{gcs}/spiece.model")
    model = interface.build(got_config)
    out = model.export_hf(params, f"{gcs}/out", f"{gcs}/spiece.model", overwrite=False)
    assert str(out) == f"{gcs}/out"
    assert _names(out) == {"config.json", "generation_config.json", "model.safetensors"} | set(
        vocab.sentencepiece_as_tokenizer_json(spiece)
    )
    down = _download(out, tmp_path / "down")
    assert hf_convert.read_hf_weights(down).keys() == hf_convert.read_hf_weights(tmp_path / "hf").keys()


def test_a_vocabulary_on_gs_loads_and_is_recorded_by_its_url(tmp_path, gcs, spiece):
    url = f"{gcs}/v/spiece.model"
    files.upload(spiece, url)
    local = vocab.from_checkpoint(spiece)
    for path in (url, f"{gcs}/v"):
        remote = vocab.from_checkpoint(path)
        assert remote.encode("the student learns") == local.encode("the student learns")
        assert remote.decode(remote.encode("the student learns")) == "the student learns"
        assert vocab.vocabulary_file(remote) == url
        assert not files.is_remote(remote.sentencepiece_model_file)  # what seqio reads: a local copy
    # Unpickled where the local copy is gone (another host), it is copied again.
    again = pickle.loads(pickle.dumps(remote))
    copy = again.sentencepiece_model_file
    os.remove(copy)
    assert again.encode("the cat") == local.encode("the cat") and vocab.vocabulary_file(again) == url

    # A tokenizer.json (with its tokenizer_config.json) on gs://.
    for name, data in vocab.sentencepiece_as_tokenizer_json(spiece).items():
        files.path(f"{gcs}/tok/{name}").write_bytes(data)
    tok = vocab.from_checkpoint(f"{gcs}/tok")
    assert isinstance(tok, vocab.TokenizerJsonVocabulary) and vocab.vocabulary_file(tok) == f"{gcs}/tok/tokenizer.json"
    assert tok.encode("the student learns") == local.encode("the student learns") and tok.eos_id == 1

    # A vocabulary trained for a corpus is cached on gs:// and read from there the next time.
    trained = vocab.cached_vocabulary(SENTENCES, f"{gcs}/cache", SETTINGS)
    (cached,) = files.path(f"{gcs}/cache").iterdir()
    assert vocab.vocabulary_file(trained) == str(cached)
    assert vocab.cached_vocabulary(SENTENCES, f"{gcs}/cache", SETTINGS) == trained

    with pytest.raises(FileNotFoundError, match=f"{gcs}/none/spiece.model not found"):
        vocab.from_checkpoint(f"{gcs}/none/spiece.model")


def test_a_t5x_checkpoint_on_gs_reads_and_converts_as_a_local_one(tmp_path, gcs):
    if not T5X_DATA.is_dir():
        pytest.skip(f"T5X test data not found at {T5X_DATA}")
    from dss_jax.checkpoints import t5x

    # Out-of-line arrays (zarr directories beside the msgpack file) through TensorStore's gcs driver.
    files.upload_tree(T5X_DATA / "tiny_t5" / "checkpoint_1", f"{gcs}/tiny/checkpoint_1")
    local = t5x.read_checkpoint(T5X_DATA / "tiny_t5" / "checkpoint_1")
    remote = t5x.read_checkpoint(f"{gcs}/tiny/checkpoint_1")
    for k, v in local["optimizer"]["state"]["param_states"].items():
        np.testing.assert_array_equal(remote["optimizer"]["state"]["param_states"][k], v, err_msg=k)

    spm = REPO_ROOT / "pretrained" / "synthetic_tiny_cpu" / "spiece.model"
    files.upload(T5X_DATA / "test_t5_tiny.checkpoint_0", f"{gcs}/t5/checkpoint_0/checkpoint")
    files.upload(spm, f"{gcs}/spiece.model")
    run_binary(
        "dss_jax.convert",
        f"--t5x_checkpoint={gcs}/t5/checkpoint_0",
        f"--vocab={gcs}/spiece.model",
        f"--output={gcs}/out",
        check=True,
    )
    params, config, vocab_path = checkpoints.load_params(f"{gcs}/out")
    want, want_config = t5x.import_checkpoint(T5X_DATA / "test_t5_tiny.checkpoint_0")
    _assert_same(params, want)
    assert config == want_config and files.path(vocab_path).read_bytes() == spm.read_bytes()
    # And back to T5X on gs://: T5X's own file again, byte for byte.
    export = ["dss_jax.export", f"--checkpoint={gcs}/out", "--format=t5x"]
    run_binary(*export, "--t5x_inline_arrays", f"--output={gcs}/back", check=True)
    written = files.path(f"{gcs}/back/checkpoint_0/checkpoint").read_bytes()
    assert written == (T5X_DATA / "test_t5_tiny.checkpoint_0").read_bytes()
    # As T5X's Checkpointer writes it, zarr arrays beside the file: read back from gs:// exactly.
    run_binary(*export, f"--output={gcs}/back_zarr", check=True)
    assert files.path(f"{gcs}/back_zarr/checkpoint_0/target.encoder.layers_0.mlp.wi_0.kernel/.zarray").is_file()
    _assert_same(t5x.import_checkpoint(f"{gcs}/back_zarr/checkpoint_0")[0], want)


def test_import_dss_reads_the_papers_files_on_gs_and_writes_the_cache_there(tmp_path, gcs):
    from test_data_import import _fake_layout

    _fake_layout(tmp_path, n=2, chunk_lengths=(2,))
    files.upload_tree(tmp_path, f"{gcs}/dss")
    args = [f"--dss_dir={gcs}/dss", "--dataset=svamp", "--split=train"]
    r = run_binary("dss_jax.import_dss", *args, f"--output={gcs}/train.jsonl", check=True)
    assert "records=2" in r.stdout.split() and r.stdout.strip().endswith("teacher_accuracy=1.000000")
    assert len(files.path(f"{gcs}/train.jsonl").read_text().splitlines()) == 2
    # A released file is never an output, as locally.
    released = f"{gcs}/dss/svamp/llm/train_CoT_0.json"
    before = files.path(released).read_bytes()
    r = run_binary("dss_jax.import_dss", *args, f"--output={released}", "--overwrite")
    assert r.returncode == 2 and released in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert files.path(released).read_bytes() == before
