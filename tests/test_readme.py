"""Every ```bash and ```python block of README.md runs as written.

The blocks run in README order in one fresh folder that holds links to the repository's `tests/`
and `examples/`, with the venv's scripts on PATH. Nothing is downloaded: a Hugging Face cache in
the folder (`HF_HOME`, `HF_HUB_OFFLINE=1`) holds the tiny model (`moshi-mlx make-tiny`) under
every `kyutai/...` repo id the README names, so commands with the default model run unchanged.
A block may opt out only with a visible marker on the line before it:
`<!-- readme-test: skip — <why> -->`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP = re.compile(r"^<!--\s*readme-test:\s*skip\s*[—–-]+\s*(?P<why>\S.*?)\s*-->$")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")
REPO_ID = re.compile(r"\bkyutai/[\w.-]+")
BLOCK_TIMEOUT_S = 300


@dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    skip: str | None  # the marker's reason


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of `text` with their language and skip reason."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise AssertionError(f"README.md:{i + 1}: unclosed code block")
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = SKIP.match(before)
        blocks.append(Block(m["lang"], "\n".join(lines[i + 1 : end]) + "\n", i + 1, marker["why"] if marker else None))
        i = end + 1
    return blocks


def _fake_hf_cache(hub: Path, repos: set[str], folder: Path) -> None:
    """A Hugging Face cache in which each of `repos` is a snapshot of `folder`."""
    commit = "0" * 40
    for repo in sorted(repos):
        entry = hub / ("models--" + repo.replace("/", "--"))
        snapshot = entry / "snapshots" / commit
        snapshot.mkdir(parents=True)
        (entry / "refs").mkdir()
        (entry / "refs" / "main").write_text(commit)
        for f in folder.iterdir():
            (snapshot / f.name).symlink_to(f)


def test_every_block_is_runnable_or_says_why_not():
    blocks = readme_blocks(README.read_text())
    assert any(b.lang in ("bash", "python") and not b.skip for b in blocks)
    for b in blocks:
        if b.skip:
            assert b.lang in ("bash", "python"), f"README.md:{b.line}: a skip marker before a {b.lang or 'plain'} block"
    text = README.read_text()
    markers = len(re.findall(r"readme-test:", text))
    assert markers == sum(1 for b in blocks if b.skip), "a readme-test marker that is not right before a block"


def test_readme_blocks_run(tmp_path):
    text = README.read_text()
    blocks = [b for b in readme_blocks(text) if b.lang in ("bash", "python") and not b.skip]
    work = tmp_path / "work"
    work.mkdir()
    for name in ("tests", "examples"):
        (work / name).symlink_to(ROOT / name)
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("HF_HUB_CACHE", None)
    tiny = tmp_path / "hub-model"
    subprocess.run([sys.executable, "-m", "moshi_mlx.cli.main", "make-tiny", str(tiny)], check=True,
                   capture_output=True, env=env)
    _fake_hf_cache(tmp_path / "hf" / "hub", set(REPO_ID.findall(text)), tiny)
    for b in blocks:
        if b.lang == "bash":
            cmd = ["bash", "-euo", "pipefail", "-c", b.code]
        else:
            script = work / f"readme_block_{b.line}.py"
            script.write_text(b.code)
            cmd = [sys.executable, script.name]
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        if proc.returncode != 0:
            pytest.fail(
                f"README.md:{b.line}: the {b.lang} block exited {proc.returncode}\n--- block\n{b.code}"
                f"--- stderr (tail)\n{proc.stderr[-3000:]}\n--- stdout (tail)\n{proc.stdout[-1500:]}",
                pytrace=False,
            )
    assert (work / "answer.wav").is_file() and (work / "answer_api.wav").is_file()


def test_the_parser_sees_markers_and_blocks():
    text = "x\n<!-- readme-test: skip — needs a microphone -->\n```bash\nmoshi-mlx chat\n```\n\n```python\nprint(1)\n```\n"
    blocks = readme_blocks(text)
    assert [(b.lang, b.skip, b.line) for b in blocks] == [("bash", "needs a microphone", 3), ("python", None, 7)]
