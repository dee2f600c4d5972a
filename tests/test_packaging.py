"""Packaging: lazy re-exports, `python -m moshi_mlx`, dependency floors, and the CUDA extra's install order."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
# Nothing a building block needs: importing one must not pull these in.
HEAVY = ("moshi_mlx.audio", "moshi_mlx.hub", "moshi_mlx.tokenizer", "moshi_mlx.api", "moshi_mlx.weights",
         "sounddevice", "sphn", "sentencepiece", "huggingface_hub", "rustymimi", "torch")


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _requires(extra: str = "", platform: str = "linux") -> list[Requirement]:
    """The installed mlx-moshi's requirements for `extra` alone ("" = the base) on `platform`."""
    env = {"sys_platform": platform, "platform_system": {"linux": "Linux", "darwin": "Darwin"}[platform]}
    reqs = [Requirement(line) for line in requires("mlx-moshi") or []]

    def active(r: Requirement, e: str) -> bool:
        return r.marker is None or r.marker.evaluate({**env, "extra": e})

    base = [r for r in reqs if active(r, "")]
    return base if not extra else [r for r in reqs if active(r, extra) and r not in base]


def test_importing_a_building_block_loads_nothing_heavy():
    out = _python("-c", "import sys, moshi_mlx.modules.kv_cache; print('\\n'.join(sys.modules))")
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.split()
    assert "moshi_mlx.modules.kv_cache" in loaded
    ours = sorted(m for m in loaded if m.split(".")[0] == "moshi_mlx")
    assert ours == ["moshi_mlx", "moshi_mlx.modules", "moshi_mlx.modules.kv_cache"]
    assert sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)) == []


def test_every_public_name_resolves_lazily():
    import moshi_mlx

    for name in moshi_mlx.__all__:
        assert getattr(moshi_mlx, name) is not None, name
        assert name in dir(moshi_mlx)
    assert moshi_mlx.Mimi.__module__ == "moshi_mlx.models.mimi"
    assert moshi_mlx.SamplingParams.__module__ == "moshi_mlx.sampling"
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchName'"):
        getattr(moshi_mlx, "NoSuchName")


def test_python_dash_m_runs_the_cli():
    out = _python("-m", "moshi_mlx", "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: moshi-mlx" in out.stdout
    out = _python("-m", "moshi_mlx", "--version")
    assert out.returncode == 0 and "0.1.0" in out.stdout + out.stderr


def test_dependencies_have_floors_and_rustymimi_is_optional():
    for platform in ("linux", "darwin"):
        base = _requires(platform=platform)
        assert all(any(s.operator == ">=" for s in r.specifier) for r in base), "every dependency needs a floor"
        names = {r.name for r in base}
        assert "mlx" in names and not names & {"rustymimi", "safetensors", "transformers", "torch"}
        assert [r.name for r in _requires("rust", platform)] == ["rustymimi"]
        assert "rustymimi" not in {r.name for r in _requires("test", platform)}  # a CI venv runs without it
    assert _requires("cuda", "darwin") == []


def _wheel(out: Path, name: str, version: str, requires: list[str], files: dict[str, str],
           extras: tuple[str, ...] = ()) -> None:
    """A minimal wheel (METADATA, WHEEL, RECORD) holding `files`."""
    dist = f"{name.replace('-', '_')}-{version}"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Provides-Extra: {e}" for e in extras] + [f"Requires-Dist: {r}" for r in requires]
    contents = {**files, f"{dist}.dist-info/METADATA": "\n".join(meta) + "\n",
                f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    with zipfile.ZipFile(out / f"{dist}-py3-none-any.whl", "w") as z:
        for path, text in contents.items():
            z.writestr(path, text)
        z.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")


def _unmarked(req: Requirement) -> str:
    """`req` without its (platform) marker."""
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return f"{req.name}{extras}{req.specifier}"


@pytest.mark.parametrize("extras,library", [("", "cpu"), ("[cuda]", "cuda")])
def test_cuda_extra_leaves_the_cuda_library_in_place(tmp_path, extras, library):
    """Stand-in wheels with MLX's shape: `mlx-cpu` and `mlx-cuda-12` both ship `mlx/lib/libmlx.so`.

    Our Linux mlx requirements (platform markers dropped) must leave the CUDA copy in place with `[cuda]`,
    with the installer CI uses (this venv's pip).
    """
    linux = next(r for r in _requires(platform="linux") if r.name == "mlx")
    assert linux.extras == {"cpu"}
    cuda = _requires("cuda", "linux")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    v = "99.0"
    _wheel(wheels, "mlx", v, [f'mlx-cpu=={v}; extra == "cpu"', f'mlx-cuda-12=={v}; extra == "cuda"'],
           {"mlx/core.py": ""}, extras=("cpu", "cuda"))
    _wheel(wheels, "mlx-cpu", v, [], {"mlx/lib/libmlx.so": "cpu"})
    _wheel(wheels, "mlx-cuda-12", v, ["nvidia-stand-in-cublas", "nvidia-stand-in-cudnn"], {"mlx/lib/libmlx.so": "cuda"})
    _wheel(wheels, "nvidia-stand-in-cublas", "1.0", [], {"nvidia_cublas/x.py": ""})
    _wheel(wheels, "nvidia-stand-in-cudnn", "1.0", ["nvidia-stand-in-cublas"], {"nvidia_cudnn/x.py": ""})
    _wheel(wheels, "stand-in-moshi", "1.0", [_unmarked(linux)] + [f'{_unmarked(r)}; extra == "cuda"' for r in cuda],
           {"stand_in_moshi.py": ""}, extras=("cuda",))
    target = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels),
           "--no-cache-dir", "--disable-pip-version-check", "--target", str(target), f"stand-in-moshi{extras}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PIP_CONSTRAINT": ""})
    assert out.returncode == 0, out.stderr
    assert (target / "mlx" / "lib" / "libmlx.so").read_text() == library
