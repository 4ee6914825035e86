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


def _tokenizer_dir(tmp_path, config=None, texts=CORPUS, vocab_size=400, bos=False):
    """A small byte-level BPE tokenizer.json, as Llama 3 and Qwen ship theirs; with `bos`,
    one that starts every text with BOS, as Llama 3's does."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    config = config or {"eos_token": "<eos>", "bos_token": {"content": "<bos>", "special": True}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


TEXTS = ["predict: Tom has 12 apples and eats 3.", "explain: ünïcödé ✓ (12 - 3) = 9", ""]


def test_a_tokenizer_json_vocabulary_gives_transformers_ids_and_text(tmp_path):
    transformers = pytest.importorskip("transformers")
    v = vocab.TokenizerJsonVocabulary(_tokenizer_dir(tmp_path))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert (v.eos_id, v.bos_id, v.vocab_size) == (1, 2, len(fast))
    for text in TEXTS:
        ids = v.encode(text)
        assert ids == fast.encode(text, add_special_tokens=False)
        assert v.decode(ids) == fast.decode(ids, skip_special_tokens=True) == text
    # seqio's decode stops at EOS; special tokens are not text.
    ids = v.encode(TEXTS[0])
    assert v.decode([v.bos_id] + ids + [v.eos_id] + v.encode("after")) == TEXTS[0]
    assert v == vocab.TokenizerJsonVocabulary(tmp_path / "tokenizer.json")


def test_a_tokenizer_json_vocabulary_gives_the_same_in_tf_data(tmp_path):
    import numpy as np
    import tensorflow as tf

    v = vocab.TokenizerJsonVocabulary(_tokenizer_dir(tmp_path))
    encoded = [t.numpy().tolist() for t in tf.data.Dataset.from_tensor_slices(TEXTS).map(v.encode_tf)]
    assert encoded == [v.encode(t) for t in TEXTS]
    a, b = v.encode(TEXTS[0]), v.encode(TEXTS[1])
    n = max(len(a), len(b)) + 2
    batch = np.zeros((2, n), np.int32)
    batch[0, : len(a) + 1] = a + [v.eos_id]
    batch[1, : len(b)] = b
    batch[1, len(b) :] = v.eos_id
    decoded = v.decode_tf(tf.constant(batch)).numpy().tolist()
    assert [d.decode() for d in decoded] == [TEXTS[0], TEXTS[1]]


def test_a_tokenizer_json_vocabulary_names_what_is_wrong(tmp_path):
    _tokenizer_dir(tmp_path, config={"eos_token": "</s>"})
    with pytest.raises(
        ValueError, match=r"tokenizer_config.json: eos_token='</s>' is not a token of \S+tokenizer.json"
    ):
        vocab.TokenizerJsonVocabulary(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"tokenizer.json: not a readable tokenizer.json"):
        vocab.TokenizerJsonVocabulary(tmp_path)
    with pytest.raises(FileNotFoundError, match="expected a Hugging Face tokenizer.json"):
        vocab.TokenizerJsonVocabulary(tmp_path / "missing")


def test_a_sentencepiece_vocabulary_is_written_as_a_tokenizer_json_giving_its_ids(tmp_path):
    # The quickstart's decoder-only student's vocabulary, over texts of the built-in dataset
    # and texts SentencePiece's byte fallback and whitespace rules decide.
    import sentencepiece as spm
    import transformers

    from conftest import REPO_ROOT
    from dss_jax.data.synthetic.dataset import SyntheticConfig, generate_records

    model = REPO_ROOT / "pretrained" / "synthetic_decoder_only_tiny_cpu" / "spiece.model"
    for name, data in vocab.sentencepiece_as_tokenizer_json(model).items():
        (tmp_path / name).write_bytes(data)
    fast = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = spm.SentencePieceProcessor(model_file=str(model))
    texts = ["", " ", "  two  spaces  ", "\ttab\nnewline", "ünïcödé ✓ (12 - 3) = 9 * 4", "emoji 😀 and 中文"]
    texts += ["ﬁ ligature ①", "a\u00a0b", "  lead", "trail  ", "*bold* ~tilde~ `code` {braces}"]
    for records in generate_records(SyntheticConfig()).values():
        for record in records[:150]:
            texts += [record.input] + [s.rationale for s in record.samples if isinstance(s.rationale, str)]
    for text in texts:
        ids = ours.encode(text)
        assert fast.encode(text, add_special_tokens=False) == ids, text
        assert fast.decode(ids, skip_special_tokens=True) == ours.decode(ids), text
    assert sum(1 for text in texts if any(i in range(3, 259) for i in ours.encode(text))) >= 3  # bytes were used
    assert (fast.eos_token_id, fast.pad_token_id, fast.unk_token_id) == (1, 0, 2) and fast.bos_token is None
    # The one difference: transformers reads a literal "</s>" as its EOS token.
    assert fast.encode("x</s>y", add_special_tokens=False) != ours.encode("x</s>y")


def test_a_sentencepiece_model_the_tokenizer_json_cannot_express_is_refused(tmp_path):
    model = vocab.train_vocabulary(
        CORPUS, tmp_path / "bpe.model", vocab.VocabSettings(vocab_size=320, model_type="bpe")
    )
    with pytest.raises(
        ValueError, match=r"bpe.model: cannot be written as a tokenizer.json: it is not a unigram model"
    ):
        vocab.sentencepiece_as_tokenizer_json(model)
