"""Kyutai's websocket protocol (kyutai-labs/moshi `rust/protocol.md`): each binary message is one
kind byte followed by its payload; integers are little endian.

0 handshake (u32 protocol version, u32 model version), 1 audio (Ogg/Opus pages, 24 kHz mono),
2 text (UTF-8), 3 control (one byte; unused in full streaming), 4 metadata (UTF-8 JSON),
5 error (UTF-8), 6 ping (no payload). Messages of an unknown kind are discarded.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Mapping

from ..sampling import SamplingParams

PROTOCOL_VERSION = 0
MODEL_VERSION = 0


class Kind(IntEnum):
    HANDSHAKE = 0
    AUDIO = 1
    TEXT = 2
    CONTROL = 3
    METADATA = 4
    ERROR = 5
    PING = 6


def handshake(protocol_version: int = PROTOCOL_VERSION, model_version: int = MODEL_VERSION) -> bytes:
    return bytes([Kind.HANDSHAKE]) + struct.pack("<II", protocol_version, model_version)


def audio(ogg_opus: bytes) -> bytes:
    return bytes([Kind.AUDIO]) + ogg_opus


def text(piece: str) -> bytes:
    return bytes([Kind.TEXT]) + piece.encode("utf-8")


def metadata(info: Mapping) -> bytes:
    return bytes([Kind.METADATA]) + json.dumps(info).encode("utf-8")


def error(message: str) -> bytes:
    return bytes([Kind.ERROR]) + message.encode("utf-8")


def split(message: bytes) -> tuple[int, bytes] | None:
    """(kind, payload) of a message, or None for an empty one. The kind may be one this module
    does not name: callers discard those, as the protocol says."""
    if not message:
        return None
    return message[0], message[1:]


def parse_handshake(payload: bytes) -> tuple[int, int]:
    """(protocol version, model version); Kyutai's own servers send no payload, which reads as (0, 0)."""
    if not payload:
        return 0, 0
    if len(payload) < 8:
        raise ValueError(f"a handshake payload has 8 bytes (two u32), got {len(payload)}")
    return struct.unpack("<II", payload[:8])


# Query parameters of `/api/chat` (Kyutai's client sends all of these) -> our meaning.
_FLOAT = {"text_temperature": "text_temp", "audio_temperature": "audio_temp",
          "text_topp": "text_top_p", "audio_topp": "audio_top_p"}
_INT = {"text_topk": "text_top_k", "audio_topk": "audio_top_k"}
# Sent by Kyutai's client, with no meaning here: one random key drives text and audio (so
# `audio_seed` is ignored when `text_seed` is there), and there is no repetition penalty or padding bonus.
IGNORED = ("audio_seed", "pad_mult", "repetition_penalty", "repetition_penalty_context", "worker_auth_id",
           "email", "image_url", "image_resolution")


@dataclass
class SessionOptions:
    """What one connection asks for: sampling (the server's defaults where it says nothing)."""

    sampling: SamplingParams


def session_options(query: Mapping[str, str], defaults: SamplingParams) -> SessionOptions:
    """Reads `/api/chat`'s query: temperatures, top-k, top-p and a seed (`seed`, else Kyutai's
    `text_seed`, else `audio_seed`). Raises ValueError naming the parameter at fault."""
    values = {
        "text_temp": defaults.text_temp, "text_top_k": defaults.text_top_k, "text_top_p": defaults.text_top_p,
        "audio_temp": defaults.audio_temp, "audio_top_k": defaults.audio_top_k,
        "audio_top_p": defaults.audio_top_p, "seed": defaults.seed,
    }
    for names, cast in ((_FLOAT, float), (_INT, int)):
        for name, field in names.items():
            if name in query:
                try:
                    values[field] = cast(query[name])
                except ValueError:
                    raise ValueError(f"query parameter {name}={query[name]!r} is not a number") from None
                if not math.isfinite(values[field]):
                    raise ValueError(f"query parameter {name}={query[name]!r} is not a finite number")
    for name in ("seed", "text_seed", "audio_seed"):
        if name in query:
            try:
                values["seed"] = int(float(query[name])) % 2**63
            except (ValueError, OverflowError):
                raise ValueError(f"query parameter {name}={query[name]!r} is not a number") from None
            break
    return SessionOptions(SamplingParams(**values))  # InvalidArgument (a ValueError) names a bad value
