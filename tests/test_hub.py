"""File resolution: local folders and files, hf:// paths and repo ids from a fake offline HF cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kyutai_mlx_fixture import ASSETS

from moshi_mlx.hub import LM_NAMES, MIMI_NAME, TOKENIZER_NAME, HubError, resolve
from moshi_mlx.weights import load_lm


def make_folder(folder: Path, lm: str = "model.q4.safetensors", config: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(ASSETS / lm, folder / lm)
    (folder / TOKENIZER_NAME).write_bytes(b"spm")
    (folder / MIMI_NAME).write_bytes(b"mimi")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def fake_cache(cache: Path, repo: str, files_from: Path, commit: str = "0123abcd") -> Path:
    """The layout huggingface_hub's cache uses: refs/main -> snapshots/<commit>/<files>."""
    base = cache / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    shutil.copytree(files_from, base / "snapshots" / commit)
    return base / "snapshots" / commit


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_local_folder_default_names(tmp_path):
    folder = make_folder(tmp_path / "m")
    files = resolve(folder)
    assert files.lm == folder / "model.q4.safetensors"
    assert files.tokenizer == folder / TOKENIZER_NAME and files.mimi == folder / MIMI_NAME
    assert files.config is None
    assert files.lm_config().transformer.d_model == 4096  # no config.json: the 7B preset


def test_config_names_override_defaults(tmp_path):
    raw = json.loads((ASSETS / "config.json").read_text())
    config = {**raw, "moshi_name": "lm.safetensors", "tokenizer_name": "spm.model", "mimi_name": "codec.safetensors"}
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(ASSETS / "model.safetensors", folder / "lm.safetensors")
    shutil.copy(ASSETS / "model.safetensors", folder / "model.safetensors")  # ignored: config names another
    (folder / "spm.model").write_bytes(b"spm")
    (folder / "codec.safetensors").write_bytes(b"mimi")
    (folder / "config.json").write_text(json.dumps(config))
    files = resolve(folder)
    names = (files.lm.name, files.tokenizer.name, files.mimi.name)
    assert names == ("lm.safetensors", "spm.model", "codec.safetensors")
    assert files.lm_config().transformer.d_model == 64
    assert load_lm(folder).cfg.dep_q == 3


def test_local_file_and_its_folder(tmp_path):
    folder = make_folder(tmp_path / "m", config=json.loads((ASSETS / "config.json").read_text()))
    files = resolve(folder / "model.q4.safetensors")
    assert files.lm == folder / "model.q4.safetensors" and files.tokenizer is not None
    assert resolve(f"file://{folder / 'model.q4.safetensors'}").lm == files.lm
    assert load_lm(folder / "model.q4.safetensors").cfg.transformer.d_model == 64


def test_missing_files_are_listed_in_one_line(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(HubError) as err:
        resolve(folder)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{folder}: missing lm, tokenizer, mimi files")
    for name in (*LM_NAMES, TOKENIZER_NAME, MIMI_NAME):
        assert name in msg
    assert resolve(make_folder(tmp_path / "lm_only"), require=("lm",)).lm is not None
    with pytest.raises(HubError, match=r"no such file or folder, and not a Hugging Face repo id"):
        resolve(tmp_path / "nowhere" / "x.safetensors")


def test_repo_from_fake_cache_offline(tmp_path, offline):
    cache = tmp_path / "hub"
    snapshot = fake_cache(cache, "kyutai/tiny-mlx-q4", make_folder(tmp_path / "src"))
    files = resolve("kyutai/tiny-mlx-q4", cache_dir=cache)
    assert files.lm == snapshot / "model.q4.safetensors" and files.mimi == snapshot / MIMI_NAME
    assert resolve("hf://kyutai/tiny-mlx-q4/model.q4.safetensors", cache_dir=cache).lm == files.lm
    with pytest.raises(HubError, match=r"^kyutai/tiny-mlx-q4 \(.*\): missing lm files \(looked for lm: model.q8"):
        resolve("hf://kyutai/tiny-mlx-q4/model.q8.safetensors", cache_dir=cache)
    with pytest.raises(HubError, match=r"^kyutai/absent: not found in .* and HF_HUB_OFFLINE is set$"):
        resolve("kyutai/absent", cache_dir=cache)


def test_repo_honours_hf_env_in_a_fresh_process(tmp_path):
    """HF_HUB_CACHE and HF_HUB_OFFLINE from the environment, as a user would set them."""
    cache = tmp_path / "hub"
    config = json.loads((ASSETS / "config.json").read_text())
    fake_cache(cache, "kyutai/tiny", make_folder(tmp_path / "src", config=config))
    code = (
        "from moshi_mlx.weights import load_lm; from moshi_mlx.hub import resolve;"
        "f = resolve('kyutai/tiny'); m = load_lm('kyutai/tiny');"
        "print(f.lm.name, f.config.name, m.cfg.transformer.d_model)"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["model.q4.safetensors", "config.json", "64"]
