"""Tests of the docstring corpus, the tokenizer, sequence packing and BERT masking."""

from __future__ import annotations

import functools
import json
import math
from collections import Counter

import jax
import numpy as np
import pytest

from jaxprune.data.mlm import mask_tokens, num_to_mask
from jaxprune.data.text import docstring_corpus, read_text_files
from jaxprune.data.tokenizer import (
    CLS_ID,
    MASK_ID,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    Tokenizer,
    pack_sequences,
    pre_tokenize,
    train_tokenizer,
)

MAX_CHARS = 400_000
VOCAB_SIZE = 4_000


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return docstring_corpus(max_chars=MAX_CHARS)


@pytest.fixture(scope="module")
def tokenizer(corpus: list[str]) -> Tokenizer:
    return train_tokenizer(corpus, VOCAB_SIZE)


# --- corpus ---------------------------------------------------------------------------------


def test_corpus_is_real_english(corpus: list[str]) -> None:
    total = sum(map(len, corpus))
    assert 200_000 < total <= MAX_CHARS
    words = Counter(w for doc in corpus for w in pre_tokenize(doc))
    for common in ("the", "of", "and", "to", "is", "a", "return", "if", "that", "with"):
        assert words[common] > 300, common
    # English prose: "the" is the most frequent word.
    assert max((w for w in words if w.isalpha()), key=words.__getitem__) == "the"


def test_corpus_is_normalised_deduplicated_and_deterministic(corpus: list[str]) -> None:
    assert len(set(corpus)) == len(corpus)
    assert all(doc and doc == " ".join(doc.split()) for doc in corpus)
    assert docstring_corpus(max_chars=MAX_CHARS) == corpus
    smaller = docstring_corpus(max_chars=50_000)
    assert smaller == corpus[: len(smaller)]
    assert sum(map(len, smaller)) <= 50_000


def test_corpus_cache(tmp_path, corpus: list[str]) -> None:
    first = docstring_corpus(max_chars=MAX_CHARS, cache_dir=tmp_path)
    (path,) = tmp_path.iterdir()
    assert json.loads(path.read_text(encoding="utf-8")) == corpus == first
    assert docstring_corpus(max_chars=MAX_CHARS, cache_dir=tmp_path) == corpus


def test_corpus_rejects_bad_max_chars() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        docstring_corpus(max_chars=0)


def test_read_text_files(tmp_path) -> None:
    path = tmp_path / "wiki.train.tokens"
    path.write_text(
        " \n = Valkyria Chronicles = \n\n Senjō no Valkyria 3 :  Unrecorded\n"
        " = = Gameplay = = \n The game  began development in 2010 .\n",
        encoding="utf-8",
    )
    assert read_text_files([path]) == [
        "Senjō no Valkyria 3 : Unrecorded",
        "The game began development in 2010 .",
    ]
    with pytest.raises(TypeError, match="paths"):
        read_text_files([3])


# --- tokenizer ------------------------------------------------------------------------------


def test_tokenizer_specials_and_size(tokenizer: Tokenizer) -> None:
    assert tokenizer.vocab_size == VOCAB_SIZE
    assert tokenizer.vocab[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    assert (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID) == (0, 1, 2, 3, 4)
    assert tokenizer.special_ids == (0, 1, 2, 3, 4)
    assert train_tokenizer(["a b"], 100).vocab_size == 5 + 2 * 2  # a, ##a, b, ##b
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["a"], 5)


def test_tokenizer_round_trips(corpus: list[str], tokenizer: Tokenizer) -> None:
    for doc in corpus[::20]:
        ids = tokenizer.encode(doc)
        assert UNK_ID not in ids
        assert all(0 <= i < VOCAB_SIZE for i in ids)
        assert tokenizer.decode(ids) == Tokenizer.normalize(doc)
    # A word never seen whole is spelled with subword pieces, and still round-trips.
    ids = tokenizer.encode("Zyxwvutsrq, the ANTIDISESTABLISHMENTARIANISM!")
    assert tokenizer.decode(ids) == "zyxwvutsrq , the antidisestablishmentarianism !"
    assert len(tokenizer.encode("the")) == 1


def test_tokenizer_unknown_characters(tokenizer: Tokenizer) -> None:
    assert tokenizer.encode("the \u2603 end") == [
        tokenizer.encode("the")[0],
        UNK_ID,
        tokenizer.encode("end")[0],
    ]


def test_tokenizer_deterministic_and_save_load(tmp_path, corpus, tokenizer) -> None:
    assert train_tokenizer(corpus, VOCAB_SIZE) == tokenizer
    tokenizer.save(tmp_path / "tok.json")
    loaded = Tokenizer.load(tmp_path / "tok.json")
    assert loaded == tokenizer
    assert loaded.encode(corpus[0]) == tokenizer.encode(corpus[0])


# --- packing --------------------------------------------------------------------------------


def test_pack_sequences() -> None:
    docs = [[10, 11, 12], [13], [14, 15, 16, 17, 18]]
    packed = pack_sequences(docs, 5)
    stream = [10, 11, 12, SEP_ID, 13, SEP_ID, 14, 15, 16, 17, 18, SEP_ID]
    assert packed.dtype == np.int32
    assert packed.shape == (math.ceil(len(stream) / 4), 5)
    assert (packed[:, 0] == CLS_ID).all()
    assert packed[:, 1:].ravel()[: len(stream)].tolist() == stream
    assert (packed[:, 1:].ravel()[len(stream) :] == PAD_ID).all()
    assert pack_sequences([], 8).shape == (0, 8)
    with pytest.raises(ValueError, match="seq_len"):
        pack_sequences(docs, 1)


def test_pack_corpus(corpus: list[str], tokenizer: Tokenizer) -> None:
    token_lists = [tokenizer.encode(doc) for doc in corpus[:100]]
    packed = pack_sequences(token_lists, 128)
    total = sum(len(t) + 1 for t in token_lists)
    assert packed.shape == (math.ceil(total / 127), 128)
    assert (packed == SEP_ID).sum() == 100


# --- masking --------------------------------------------------------------------------------

SPECIALS = (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID)
VOCAB = 1000


def _batch(num_rows: int = 1024, seq_len: int = 128) -> np.ndarray:
    rng = np.random.default_rng(0)
    tokens = rng.integers(len(SPECIALS), VOCAB, size=(num_rows, seq_len), dtype=np.int32)
    tokens[:, 0] = CLS_ID
    lengths = rng.integers(2, seq_len + 1, size=num_rows)
    tokens[np.arange(seq_len) >= lengths[:, None]] = PAD_ID
    tokens[np.arange(num_rows), lengths - 1] = SEP_ID
    return tokens


MASK = functools.partial(mask_tokens, vocab_size=VOCAB, mask_id=MASK_ID, special_ids=SPECIALS)


def test_mask_selection_exact_count_and_invariants() -> None:
    tokens = _batch()
    inputs, labels, weights = (np.asarray(a) for a in MASK(jax.random.key(0), tokens))
    selected = weights == 1
    candidates = ~np.isin(tokens, SPECIALS)
    assert set(np.unique(weights)) <= {0.0, 1.0}
    assert not (selected & ~candidates).any()  # specials never selected
    n = candidates.sum(axis=1)
    expected = np.where(n > 0, np.maximum(1, np.round(0.15 * n)), 0)
    np.testing.assert_array_equal(selected.sum(axis=1), expected)
    np.testing.assert_array_equal(np.asarray(num_to_mask(n, 0.15)), expected)
    # Overall fraction: rounding moves each row by at most 1/2 token (plus the max(1, .) floor).
    assert abs(selected.sum() / candidates.sum() - 0.15) < 0.01
    np.testing.assert_array_equal(labels, np.where(selected, tokens, 0))
    np.testing.assert_array_equal(inputs[~selected], tokens[~selected])
    assert inputs.dtype == labels.dtype == np.int32 and weights.dtype == np.float32


def test_mask_80_10_10_within_binomial_bounds() -> None:
    tokens = _batch()
    inputs, _, weights = (np.asarray(a) for a in MASK(jax.random.key(1), tokens))
    selected = weights == 1
    orig, new = tokens[selected], inputs[selected]
    m = selected.sum()
    r = VOCAB - len(SPECIALS)  # a random replacement equals the original with probability 1/r
    outcomes = {
        "mask": (new == MASK_ID, 0.8),
        "random": ((new != MASK_ID) & (new != orig), 0.1 * (1 - 1 / r)),
        "same": (new == orig, 0.1 + 0.1 / r),
    }
    for name, (hits, p) in outcomes.items():
        # Each count is Binomial(m, p); 5 standard deviations bound a false failure by ~6e-7.
        assert abs(hits.sum() / m - p) < 5 * math.sqrt(p * (1 - p) / m), name
    assert not np.isin(new[new != orig], [PAD_ID, UNK_ID, CLS_ID, SEP_ID]).any()
    # The positions chosen are uniform: each candidate column is hit ≈ equally often.
    candidates = ~np.isin(tokens, SPECIALS)
    per_position = selected[:, 1:64].sum(axis=0) / candidates[:, 1:64].sum(axis=0)
    assert np.abs(per_position - 0.15).max() < 0.06


def test_mask_is_pure_and_jittable() -> None:
    tokens = _batch(64, 32)
    first = MASK(jax.random.key(3), tokens)
    again = jax.jit(MASK)(jax.random.key(3), tokens)
    other = MASK(jax.random.key(4), tokens)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(first[2]), np.asarray(other[2]))


def test_mask_rejects_bad_arguments() -> None:
    tokens = _batch(2, 8)
    with pytest.raises(ValueError, match="rate"):
        MASK(jax.random.key(0), tokens, rate=0.0)
    with pytest.raises(TypeError, match="tokens"):
        MASK(jax.random.key(0), tokens.astype(np.float32))
    with pytest.raises(ValueError, match="mask_id"):
        mask_tokens(jax.random.key(0), tokens, vocab_size=4, mask_id=4, special_ids=(0,))
