"""SentencePiece text tokenizer with streaming detokenization (Moshi/Helium text streams)."""

from __future__ import annotations

from pathlib import Path

import sentencepiece

from .errors import MoshiError

SPACE = "\u2581"  # "▁", SentencePiece's word-boundary marker


class TokenizerError(MoshiError, ValueError):
    """A text tokenizer file that is missing or cannot be parsed; the message names it."""


class Tokenizer:
    """Wraps a SentencePiece model file: `encode`, `decode` and per-token pieces."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: no such text tokenizer file")
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as e:  # e.g. "INTERNAL: could not parse ModelProto"
            raise TokenizerError(
                f"{path}: not a SentencePiece text tokenizer (.model) file, or a damaged one; "
                "download or copy it again"
            ) from e

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    def encode(self, text: str, bos: bool = False) -> list[int]:
        """Token ids of `text`, optionally preceded by BOS."""
        ids = self.sp.encode(text)
        return [self.bos_id, *ids] if bos else ids

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(list(ids))

    def streaming(self, skip_ids: tuple[int, ...] = ()) -> "StreamingDetokenizer":
        """A detokenizer that turns tokens into text one at a time."""
        return StreamingDetokenizer(self, skip_ids)


class StreamingDetokenizer:
    """Incremental decoding: `push(token)` returns the text that token completes.

    "▁" becomes a space (dropped at the very start, as `decode` does), byte pieces such as
    `<0x0A>` are buffered until they form valid UTF-8 (a newline here), and control,
    unknown and `skip_ids` tokens (e.g. Moshi's text PAD 3 / EPAD 0) print nothing.
    The concatenation of every `push` equals `Tokenizer.decode` of the same ids.
    """

    def __init__(self, tokenizer: Tokenizer, skip_ids: tuple[int, ...] = ()):
        self.tokenizer = tokenizer
        self.skip_ids = set(skip_ids)
        self.reset()

    def reset(self) -> None:
        self._bytes = b""
        self._started = False

    def push(self, token: int) -> str:
        sp = self.tokenizer.sp
        token = int(token)
        if token in self.skip_ids or not 0 <= token < sp.get_piece_size():
            return ""
        if sp.is_control(token) or sp.is_unknown(token):
            return ""
        if sp.is_byte(token):
            self._bytes += bytes([int(sp.id_to_piece(token)[3:-1], 16)])
            text = self._flush_bytes(final=False)
        else:
            text = self._flush_bytes(final=True) + sp.id_to_piece(token).replace(SPACE, " ")
        return self._strip_start(text)

    def flush(self) -> str:
        """Text held back by an incomplete byte sequence (as replacement characters)."""
        return self._strip_start(self._flush_bytes(final=True))

    def _flush_bytes(self, final: bool) -> str:
        if not self._bytes:
            return ""
        try:
            text, self._bytes = self._bytes.decode("utf-8"), b""
            return text
        except UnicodeDecodeError:
            if not final:
                return ""
            text, self._bytes = _decode_per_byte(self._bytes), b""
            return text

    def _strip_start(self, text: str) -> str:
        if not self._started and text:
            self._started = True
            if text.startswith(" "):
                text = text[1:]
        return text


def _decode_per_byte(data: bytes) -> str:
    """UTF-8 decoding where every byte that starts no valid character becomes one U+FFFD
    (SentencePiece's rule; Python's `errors="replace"` would merge some of them)."""
    out, i = [], 0
    while i < len(data):
        for size in (1, 2, 3, 4):
            try:
                out.append(data[i : i + size].decode("utf-8"))
                i += size
                break
            except UnicodeDecodeError:
                continue
        else:
            out.append("\ufffd")
            i += 1
    return "".join(out)
