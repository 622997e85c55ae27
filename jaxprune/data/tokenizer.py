"""A small deterministic word-level tokenizer with a character WordPiece fallback.

Text is lowercased and split into words and single punctuation marks (regex ``\\w+|[^\\w\\s]``).
The vocabulary is: the five special tokens, then every character seen in the corpus in two forms
(``c`` starting a word, ``##c`` continuing one), then the most frequent words until
``vocab_size`` is reached; ties are broken alphabetically, so training is deterministic.  A word
in the vocabulary is one token; any other word is split greedily longest-match-first into
vocabulary pieces (BERT's WordPiece encoding), which always succeeds down to characters, so
only words holding a character never seen in training become ``[UNK]``.  This is the simplest
scheme that is lossless on in-alphabet text: ``decode(encode(x)) == normalize(x)``.

References:
  Wu et al., "Google's Neural Machine Translation System" (WordPiece), 2016.
  Devlin et al., "BERT", NAACL 2019, Section 3 (the special tokens).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxprune._validation import check_int, check_iterable

__all__ = [
    "CLS_ID",
    "MASK_ID",
    "PAD_ID",
    "SEP_ID",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "Tokenizer",
    "pack_sequences",
    "pre_tokenize",
    "train_tokenizer",
]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
_CONTINUATION = "##"
_WORD_RE = re.compile(r"\w+|[^\w\s]")


def pre_tokenize(text: str) -> list[str]:
    """Lowercase ``text`` and split it into words (``\\w+``) and single punctuation marks."""
    return _WORD_RE.findall(text.lower())


@dataclass(frozen=True)
class Tokenizer:
    """A trained vocabulary; token ``i`` of ``vocab`` has id ``i``.

    Attributes:
      vocab: tokens in id order, starting with ``SPECIAL_TOKENS``.
    """

    vocab: tuple[str, ...]
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if tuple(self.vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocab must start with {SPECIAL_TOKENS}, got {self.vocab[:5]!r}")
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError("vocab holds duplicate tokens")
        object.__setattr__(self, "_ids", {token: i for i, token in enumerate(self.vocab)})

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids of ``[PAD]``, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]`` (0 to 4)."""
        return tuple(range(len(SPECIAL_TOKENS)))

    @staticmethod
    def normalize(text: str) -> str:
        """The text ``decode(encode(text))`` gives back: pre-tokenized words joined by spaces."""
        return " ".join(pre_tokenize(text))

    def _encode_word(self, word: str) -> list[int]:
        if word in self._ids:
            return [self._ids[word]]
        pieces: list[int] = []
        start = 0
        while start < len(word):
            prefix = _CONTINUATION if start else ""
            for end in range(len(word), start, -1):
                piece_id = self._ids.get(prefix + word[start:end])
                if piece_id is not None:
                    pieces.append(piece_id)
                    start = end
                    break
            else:
                return [UNK_ID]
        return pieces

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no ``[CLS]``/``[SEP]`` added)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return [i for word in pre_tokenize(text) for i in self._encode_word(word)]

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Text of ``ids``: ``##`` pieces are glued to the previous token, others space-separated."""
        words: list[str] = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"ids must lie in [0, {len(self.vocab)}), got {i}")
            if skip_special and i < len(SPECIAL_TOKENS):
                continue
            token = self.vocab[i]
            if token.startswith(_CONTINUATION) and words:
                words[-1] += token[len(_CONTINUATION) :]
            else:
                words.append(token)
        return " ".join(words)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary to ``path`` as JSON."""
        Path(path).write_text(json.dumps({"vocab": list(self.vocab)}), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer written by ``save``."""
        return cls(tuple(json.loads(Path(path).read_text(encoding="utf-8"))["vocab"]))


def _by_frequency(counts: Counter[str]) -> list[str]:
    """Keys by decreasing count, ties alphabetically."""
    return sorted(counts, key=lambda key: (-counts[key], key))


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Fit a vocabulary of at most ``vocab_size`` tokens to ``texts`` (see module docstring).

    Args:
      texts: training documents.
      vocab_size: largest vocabulary; must leave room for the special tokens and one character.

    Returns:
      A ``Tokenizer`` with ``min(vocab_size, 5 + 2·#characters + #words)`` tokens.
    """
    check_iterable(texts, "texts", "an iterable of documents (a list of str)")
    check_int(vocab_size, "vocab_size", minimum=len(SPECIAL_TOKENS) + 1)
    words: Counter[str] = Counter()
    for text in texts:
        words.update(pre_tokenize(text))
    chars: Counter[str] = Counter()
    for word, count in words.items():
        for char in word:
            chars[char] += count
    vocab = list(SPECIAL_TOKENS)
    for char in _by_frequency(chars):
        vocab += [char, _CONTINUATION + char]
    seen = set(vocab)
    vocab += [word for word in _by_frequency(words) if word not in seen]
    return Tokenizer(tuple(vocab[:vocab_size]))


def pack_sequences(
    token_lists: Sequence[Sequence[int]],
    seq_len: int,
    *,
    cls_id: int = CLS_ID,
    sep_id: int = SEP_ID,
    pad_id: int = PAD_ID,
) -> np.ndarray:
    """Pack documents into fixed-length rows for masked-language modelling.

    Documents are concatenated, each followed by ``[SEP]``; the stream is cut into chunks of
    ``seq_len - 1`` tokens, each row is ``[CLS]`` + chunk, and the last row is padded with
    ``[PAD]``.

    Args:
      token_lists: token ids of each document.
      seq_len: row length, at least 2.

    Returns:
      ``(N, seq_len)`` int32 array, ``N = ceil(total / (seq_len - 1))`` with ``total`` the
      stream length (documents plus one ``[SEP]`` each).
    """
    check_int(seq_len, "seq_len", minimum=2)
    stream = [i for tokens in token_lists for i in (*tokens, sep_id)]
    chunk = seq_len - 1
    num_rows = -(-len(stream) // chunk)
    body = np.full(num_rows * chunk, pad_id, dtype=np.int32)
    body[: len(stream)] = stream
    rows = body.reshape(num_rows, chunk)
    return np.concatenate([np.full((num_rows, 1), cls_id, np.int32), rows], axis=1)
