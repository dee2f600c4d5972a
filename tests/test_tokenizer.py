"""SentencePiece wrapper: streaming detokenization equals batch decoding (model trained here)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import sentencepiece

from moshi_mlx.tokenizer import Tokenizer

CORPUS = (
    "Hello world, this is Moshi speaking.\n"
    "Line two: café, naïve, and more words.\n"
    "The quick brown fox jumps over the lazy dog. Numbers 12345 and symbols #@!\n"
) * 30


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    # Lines are fed separately, so "\n" and unseen characters fall back to byte pieces.
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines()), model_writer=model, vocab_size=400,
        byte_fallback=True, character_coverage=1.0, model_type="bpe",
        normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2,
    )
    path = tmp_path_factory.mktemp("spm") / "tok.model"
    path.write_bytes(model.getvalue())
    return Tokenizer(path)


TEXTS = [
    "Hello café 東京 🙂\nnew line  and 𝄞 unseen",
    "The lazy dog.\n\nTwo newlines, then é and ü.",
    "  leading spaces and trailing ",
]


@pytest.mark.parametrize("text", TEXTS)
def test_streaming_equals_decode(tokenizer, text):
    ids = tokenizer.encode(text)
    stream = tokenizer.streaming()
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == tokenizer.decode(ids) == text


def test_byte_pieces_and_spaces(tokenizer):
    ids = tokenizer.encode("a\nb")
    pieces = [tokenizer.sp.id_to_piece(i) for i in ids]
    assert "<0x0A>" in pieces  # the newline is a byte piece in this model
    stream = tokenizer.streaming()
    assert [stream.push(i) for i in ids][pieces.index("<0x0A>")] == "\n"
    # A multi-byte character appears only once its last byte arrives.
    ids = tokenizer.encode("東")
    stream = tokenizer.streaming()
    out = [stream.push(i) for i in ids]
    assert out[-1] == "東" and "".join(out[:-1]) == ""


def test_skip_ids_controls_and_bos(tokenizer):
    ids = tokenizer.encode("Hello world", bos=True)
    assert ids[0] == tokenizer.bos_id
    pad = tokenizer.encode("fox")[0]
    mixed = [ids[0], ids[1], pad, *ids[2:], -1, 10**6]
    stream = tokenizer.streaming(skip_ids=(pad,))
    assert "".join(stream.push(i) for i in mixed) == "Hello world"


def test_random_ids_round_trip(tokenizer):
    rng = np.random.default_rng(0)
    for _ in range(20):
        ids = [int(i) for i in rng.integers(3, tokenizer.vocab_size, size=30)]
        stream = tokenizer.streaming()
        assert "".join(stream.push(i) for i in ids) + stream.flush() == tokenizer.decode(ids)
