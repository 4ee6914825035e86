"""Vocabularies: deterministic training, caching, checkpoint spiece.model, lazy resolution."""

import shutil

import pytest
import seqio

from dss_jax.data import vocab
from dss_jax.data.lazy_vocab import LazyVocabulary

CORPUS = [
    f"Tom has {i} apples and eats {i % 7}. How many are left?\nThe answer is ({i} - {i % 7})." for i in range(300)
]
SMALL = vocab.VocabSettings(vocab_size=320)


def test_training_is_deterministic_and_follows_t5_ids(tmp_path):
    a = vocab.train_vocabulary(CORPUS, tmp_path / "a.model", SMALL)
    b = vocab.train_vocabulary(CORPUS, tmp_path / "b.model", SMALL)
    assert a.read_bytes() == b.read_bytes()
    v = seqio.SentencePieceVocabulary(str(a))
    assert (v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2)
    ids = v.encode("Tom has 12 apples.")
    assert 0 not in ids and 1 not in ids and v.decode(ids) == "Tom has 12 apples."
    assert v.decode(v.encode("ünïcödé ✓")) == "ünïcödé ✓"  # byte fallback, no unk
    with pytest.raises(ValueError, match="empty corpus"):
        vocab.train_vocabulary(["", "  "], tmp_path / "c.model", SMALL)


def test_cached_vocabulary_trains_once_per_corpus(tmp_path):
    v1 = vocab.cached_vocabulary(CORPUS, tmp_path, SMALL)
    files = list(tmp_path.glob("*.model"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    v2 = vocab.cached_vocabulary(CORPUS, tmp_path, SMALL)
    assert files[0].stat().st_mtime_ns == mtime and v1.encode("Tom") == v2.encode("Tom")
    vocab.cached_vocabulary(CORPUS[:200], tmp_path, SMALL)  # another corpus, another file
    assert len(list(tmp_path.glob("*.model"))) == 2


def test_from_checkpoint_dir_or_file(tmp_path):
    model = vocab.train_vocabulary(CORPUS, tmp_path / "m.model", SMALL)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(model, ckpt / "spiece.model")
    assert vocab.from_checkpoint(ckpt).encode("apples") == vocab.from_checkpoint(model).encode("apples")
    with pytest.raises(FileNotFoundError, match=r"empty/spiece.model not found; expected a SentencePiece model"):
        (tmp_path / "empty").mkdir()
        vocab.from_checkpoint(tmp_path / "empty")


def test_lazy_vocabulary_resolves_on_first_use(tmp_path):
    model = vocab.train_vocabulary(CORPUS, tmp_path / "m.model", SMALL)
    calls = []

    def factory():
        calls.append(1)
        return seqio.SentencePieceVocabulary(str(model))

    lazy = LazyVocabulary(factory)
    assert not calls and "unresolved" in str(lazy)
    real = seqio.SentencePieceVocabulary(str(model))
    assert lazy.encode("Tom has 3") == real.encode("Tom has 3") and len(calls) == 1
    assert lazy.vocab_size == real.vocab_size and lazy.eos_id == 1
    assert lazy.encode_tf("Tom").numpy().tolist() == real.encode("Tom")
    assert lazy.sentencepiece_model_file == str(model) and lazy == real and len(calls) == 1
