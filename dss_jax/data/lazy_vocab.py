"""A seqio vocabulary that is chosen when first used, not when its task is registered.

Tasks register when `tasks.dss` is imported, which t5x-style binaries do while parsing
gin files, before the bindings that pick a vocabulary (a checkpoint's spiece.model, or
one trained on the data) are in force. `LazyVocabulary` calls its factory on first use
and delegates everything to the result.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

import seqio


class LazyVocabulary(seqio.Vocabulary):
    def __init__(self, factory: Callable[[], seqio.Vocabulary], name: str = "lazy vocabulary"):
        super().__init__(extra_ids=0)
        self._factory = factory
        self._name = name
        self._vocab: Optional[seqio.Vocabulary] = None
        self._lock = threading.Lock()

    def resolve(self) -> seqio.Vocabulary:
        if self._vocab is None:
            with self._lock:
                if self._vocab is None:
                    self._vocab = self._factory()
        return self._vocab

    def reset(self) -> None:
        """Forgets the resolved vocabulary (e.g. after changing gin bindings)."""
        with self._lock:
            self._vocab = None

    # Everything below delegates to the resolved vocabulary.
    @property
    def eos_id(self) -> Optional[int]:
        return self.resolve().eos_id

    @property
    def unk_id(self) -> Optional[int]:
        return self.resolve().unk_id

    @property
    def pad_id(self) -> int:
        return self.resolve().pad_id

    @property
    def bos_id(self) -> Optional[int]:
        return self.resolve().bos_id

    @property
    def extra_ids(self) -> int:
        return self.resolve().extra_ids

    @property
    def vocab_size(self) -> int:
        return self.resolve().vocab_size

    @property
    def _base_vocab_size(self) -> int:
        return self.resolve()._base_vocab_size  # pylint: disable=protected-access

    def _encode(self, s):
        return self.resolve().encode(s)

    def _decode(self, ids):
        return self.resolve().decode(ids)

    def _encode_tf(self, s):
        return self.resolve().encode_tf(s)

    def _decode_tf(self, ids):
        return self.resolve().decode_tf(ids)

    def encode(self, s):
        return self.resolve().encode(s)

    def decode(self, ids):
        return self.resolve().decode(ids)

    def encode_tf(self, s):
        return self.resolve().encode_tf(s)

    def decode_tf(self, ids):
        return self.resolve().decode_tf(ids)

    def __getattr__(self, name):
        # Vocabulary-specific extras (e.g. SentencePieceVocabulary.sentencepiece_model_file).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.resolve(), name)

    def __eq__(self, other) -> bool:
        other = other.resolve() if isinstance(other, LazyVocabulary) else other
        return self.resolve() == other

    def __hash__(self) -> int:
        return id(self)

    def __str__(self) -> str:
        return f"LazyVocabulary({self._name}: {self._vocab if self._vocab is not None else 'unresolved'})"
