"""Find model files: a Hugging Face repo ("org/repo", "hf://org/repo/file"), a local folder or a file.

File names follow Kyutai's repos: LM weights `model.safetensors` | `model.q8.safetensors` |
`model.q4.safetensors`, text tokenizer `tokenizer_spm_32k_3.model`, Mimi
`tokenizer-e351c8d8-checkpoint125.safetensors`, and an optional `config.json` whose `moshi_name`,
`tokenizer_name` and `mimi_name` keys override those names (as Kyutai's loaders do). Without a
`config.json` the LM is the 7B (`LmConfig.from_preset("moshi_7b")`).

Repos go through `huggingface_hub.snapshot_download` with `allow_patterns`, so only the needed
files are fetched; with `HF_HUB_OFFLINE=1` (read at call time) only the local cache is used.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .config import ConfigError, LmConfig, MimiConfig, read_config
from .errors import MoshiError

DEFAULT_REPO = "kyutai/moshiko-mlx-q4"
# The last: an HF transformers checkpoint in shards (`save_pretrained` of a large model), read whole.
LM_NAMES = ("model.safetensors", "model.q8.safetensors", "model.q4.safetensors", "model.safetensors.index.json")
TOKENIZER_NAME = "tokenizer_spm_32k_3.model"
MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
CONFIG_NAME = "config.json"
# Keys of our own config.json that are not LM architecture.
_NON_ARCH_KEYS = ("quantization",)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ROLES = ("lm", "tokenizer", "mimi")


class HubError(MoshiError, FileNotFoundError):
    """Model files that cannot be found; the message says what was looked for and where.

    When a download failed, the CLI prints the underlying error (`__cause__`) on a second line."""

    show_cause = True


class ModelFileError(MoshiError, ValueError):
    """A file given as a model that is not one (e.g. an audio file), or a damaged model file."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = Path(path), problem


# Leading bytes of files people pass by mistake, and what they are.
_KNOWN_MAGIC = {b"RIFF": "a RIFF/WAVE audio file", b"fLaC": "a FLAC audio file", b"OggS": "an Ogg audio file",
                b"ID3": "an MP3 audio file", b"PK\x03\x04": "a zip archive (a torch .pt/.pth?)"}
_MAX_HEADER = 100 * 2**20  # safetensors caps its JSON header at 100 MB


def check_safetensors(path: str | Path, what: str = "a model weights file") -> None:
    """Checks that `path` is a complete safetensors file (header and size) without reading tensors.

    Raises a one-line `ModelFileError` naming the file and what is wrong: not safetensors (and
    what it seems to be instead), an unreadable header, or fewer bytes than the header promises.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            header_bytes = f.read(n) if 0 < n <= min(size - 8, _MAX_HEADER) else b""
    except OSError as e:
        raise ModelFileError(path, f"cannot read it ({e.strerror or e})") from e
    kind = next((k for magic, k in _KNOWN_MAGIC.items() if head.startswith(magic)), None)
    if kind is not None:
        raise ModelFileError(path, f"this is {kind}, not {what} (.safetensors)")
    if not header_bytes:
        raise ModelFileError(
            path, f"not a safetensors file, so not {what} ({size} bytes"
            + (")" if n < 0 else f"; its header length {n} does not fit)")
        )
    try:
        header = json.loads(header_bytes)
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise ModelFileError(path, f"not a safetensors file, so not {what} (invalid header: {e})") from e
    needed = 8 + n + max(ends, default=0)
    if size < needed:
        raise ModelFileError(
            path, f"truncated ({size} bytes where its safetensors header needs {needed}); "
            "download or copy it again"
        )


@dataclass(frozen=True)
class ModelFiles:
    """Resolved paths; a role not found (and not required) is None."""

    lm: Path | None
    tokenizer: Path | None
    mimi: Path | None
    config: Path | None
    where: str
    mimi_config_file: Path | None = None  # Kyutai's Mimi config JSON, named by `mimi_config_name`

    def mimi_config(self, num_codebooks: int = 8) -> MimiConfig | None:
        """The Mimi architecture from the file `config.json` names by `mimi_config_name`; None
        without one (the published Mimi)."""
        if self.mimi_config_file is None:
            return None
        try:
            return MimiConfig.from_kyutai_json(read_config(self.mimi_config_file), num_codebooks)
        except ConfigError as e:
            raise ConfigError(f"{self.mimi_config_file}: {e}") from e

    def config_dict(self) -> dict[str, Any] | None:
        """The raw `config.json`, or None without one."""
        return None if self.config is None else read_config(self.config)

    def lm_config(self) -> LmConfig:
        """The LM architecture: from `config.json`, else the 7B preset."""
        raw = self.config_dict()
        if raw is None:
            return LmConfig.from_preset("moshi_7b")
        arch = {k: v for k, v in raw.items() if k not in _NON_ARCH_KEYS}
        try:
            return LmConfig.from_kyutai_json(arch)
        except ConfigError as e:
            raise ConfigError(f"{self.config}: {e}") from e


def is_offline() -> bool:
    """True when `HF_HUB_OFFLINE` is set now (huggingface_hub reads it only at import)."""
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return value in ("1", "true", "yes", "on")


def resolve(
    source: str | Path = DEFAULT_REPO,
    require: Iterable[str] = ROLES,
    cache_dir: str | Path | None = None,
) -> ModelFiles:
    """Finds the LM weights, tokenizer, Mimi weights and config of `source`.

    `source` is "org/repo", "hf://org/repo" or "hf://org/repo/<lm file>", a folder, or an LM
    weights file (its folder is searched for the rest). Roles in `require` must be found.
    """
    require = tuple(require)
    unknown = [r for r in require if r not in ROLES]
    if unknown:
        raise ValueError(f"unknown role {unknown[0]!r} (roles: {', '.join(ROLES)})")
    text = str(source)
    if text.startswith("hf://"):
        parts = text[len("hf://") :].strip("/").split("/")
        if len(parts) < 2:
            raise HubError(f"{text}: expected hf://org/repo or hf://org/repo/file")
        lm_name = "/".join(parts[2:]) or None
        return _from_repo(f"{parts[0]}/{parts[1]}", lm_name, require, cache_dir)
    if text.startswith("file://"):
        text = text[len("file://") :]
    path = Path(text).expanduser()
    if path.is_dir():
        return _from_folder(path, None, require, str(path))
    if path.is_file():
        if path.suffix != ".json":
            check_safetensors(path, "a Moshi LM weights file")
        return _from_folder(path.parent, path.name, require, str(path.parent))
    if _REPO_ID.match(text) and not text.startswith((".", "/")):
        return _from_repo(text, None, require, cache_dir)
    raise HubError(f"{text}: no such file or folder, and not a Hugging Face repo id (org/repo)")


def _wanted_names(raw: dict[str, Any] | None, lm_name: str | None) -> dict[str, tuple[str, ...]]:
    raw = raw or {}
    return {
        "lm": (lm_name,) if lm_name else ((raw["moshi_name"],) if "moshi_name" in raw else LM_NAMES),
        "tokenizer": (raw.get("tokenizer_name", TOKENIZER_NAME),),
        "mimi": (raw.get("mimi_name", MIMI_NAME),),
    }


def is_hf_moshi_config(raw: dict[str, Any] | None) -> bool:
    """True for an HF transformers Moshi `config.json` (Kyutai's name the width `dim`, HF `hidden_size`)."""
    return bool(raw) and raw.get("model_type") == "moshi" and "hidden_size" in raw


def _from_folder(folder: Path, lm_name: str | None, require: tuple[str, ...], where: str) -> ModelFiles:
    config = folder / CONFIG_NAME
    config = config if config.is_file() else None
    raw = read_config(config) if config is not None else None
    names = _wanted_names(raw, lm_name)
    found: dict[str, Path | None] = {}
    for role, candidates in names.items():
        found[role] = next((folder / n for n in candidates if (folder / n).is_file()), None)
    if is_hf_moshi_config(raw):  # an HF transformers Moshi file holds its Mimi (`audio_encoder.*`)
        found["mimi"] = found["lm"]
    missing = [r for r in require if found[r] is None]
    if missing:
        looked = "; ".join(f"{r}: {', '.join(names[r])}" for r in missing)
        raise HubError(f"{where}: missing {', '.join(missing)} files (looked for {looked})")
    mimi_config = None
    if raw and raw.get("mimi_config_name"):
        mimi_config = folder / str(raw["mimi_config_name"])
        if not mimi_config.is_file():
            if "mimi" in require:
                raise HubError(f"{where}: missing {mimi_config.name}, the Mimi config named by config.json")
            mimi_config = None
    return ModelFiles(found["lm"], found["tokenizer"], found["mimi"], config, where, mimi_config)


def _snapshot(repo: str, patterns: list[str], cache_dir: str | Path | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    offline = is_offline()
    try:
        return Path(
            snapshot_download(repo, allow_patterns=patterns, cache_dir=cache_dir, local_files_only=offline)
        )
    except LocalEntryNotFoundError as e:
        where = cache_dir or os.environ.get("HF_HUB_CACHE") or "the Hugging Face cache"
        why = "HF_HUB_OFFLINE is set" if offline else "it could not be downloaded"
        err = HubError(f"{repo}: not found in {where} and {why}")
        err.show_cause = not offline  # the network error says why it could not be downloaded
        raise err from (e if offline else _root_cause(e))
    except RepositoryNotFoundError as e:
        raise HubError(f"{repo}: no such Hugging Face repo (or it needs a login)") from e
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        err = HubError(f"{repo}: cannot fetch files ({reason})")
        err.show_cause = False  # the reason is already in the message
        raise err from e


def _root_cause(e: BaseException) -> BaseException:
    """The innermost error of a chain (e.g. the network error behind huggingface_hub's own)."""
    seen = {id(e)}
    while (e.__cause__ or e.__context__) is not None and id(e.__cause__ or e.__context__) not in seen:
        e = e.__cause__ or e.__context__
        seen.add(id(e))
    return e


def _from_repo(repo: str, lm_name: str | None, require: tuple[str, ...], cache_dir: str | Path | None) -> ModelFiles:
    first = _wanted_names(None, lm_name)
    patterns = [CONFIG_NAME, *first["lm"], *first["tokenizer"], *first["mimi"]]
    folder = _snapshot(repo, patterns, cache_dir)
    config = folder / CONFIG_NAME
    if config.is_file():
        names = _wanted_names(read_config(config), lm_name)
        extra = [n for ns in names.values() for n in ns if n not in patterns]
        mimi_config = read_config(config).get("mimi_config_name")
        extra += [str(mimi_config)] if mimi_config else []
        if extra:
            folder = _snapshot(repo, patterns + extra, cache_dir)
            patterns += extra
    index = folder / LM_NAMES[-1]
    if index.is_file() and not (folder / LM_NAMES[0]).is_file():  # fetch the shards the index names
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelFileError(index, f"not a safetensors index (no weight_map: {e})") from e
        folder = _snapshot(repo, patterns + shards, cache_dir)
    return _from_folder(folder, lm_name, require, f"{repo} ({folder})")
