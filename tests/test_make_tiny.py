"""`moshi-mlx make-tiny`: a small, quickly built model folder that every command runs; its Mimi is
written in Kyutai's torch layout with its architecture in Kyutai's Mimi config format."""

from __future__ import annotations

import io
import json
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import require

from moshi_mlx.audio.io import read_audio
from moshi_mlx.cli.main import main
from moshi_mlx.config import ConfigError, MimiConfig
from moshi_mlx.hub import MIMI_NAME, HubError, resolve
from moshi_mlx.weights.mimi import load_mimi, load_mimi_backend, save_mimi
from moshi_mlx.weights.tiny import MIMI_CONFIG_NAME, make_tiny_model
from moshi_mlx.weights.tiny_mimi import informative_mimi, small_mimi_config, speech_like

SPEECH = Path(__file__).resolve().parent / "assets" / "speech_24k.wav"


def cli(*argv: str) -> tuple[int, str, str]:
    """Runs `moshi-mlx *argv` in process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, float]:
    """The folder built by the command, and the seconds it took."""
    out = tmp_path_factory.mktemp("make") / "tiny-moshi"
    start = time.perf_counter()
    code, printed, errors = cli("make-tiny", str(out))
    assert code == 0, errors
    return out, time.perf_counter() - start


def test_make_tiny_is_small_and_quick(tiny):
    folder, seconds = tiny
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["config.json", "model.safetensors", "tokenizer_spm_32k_3.model", MIMI_NAME, MIMI_CONFIG_NAME])
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 20e6, size
    assert seconds < 60, seconds  # about 2 s on an idle 2-core CPU; generous for a loaded machine
    assert json.loads((folder / "config.json").read_text())["mimi_config_name"] == MIMI_CONFIG_NAME


def test_run_with_the_tiny_model_is_audible(tiny, tmp_path):
    folder, _ = tiny
    answer = tmp_path / "answer.wav"
    code, printed, errors = cli("run", str(SPEECH), str(answer), "--model", str(folder), "--seed", "0")
    assert code == 0, errors
    pcm = read_audio(answer)
    frames = -(-len(read_audio(SPEECH)) // 1920)
    assert pcm.shape == (frames * 1920,)  # rounded up to whole 80 ms frames
    assert np.abs(pcm).max() > 0.01 and pcm.std() > 0.005  # audible, not silence
    assert len(np.unique(np.round(pcm, 4))) > 100  # not constant


def test_rust_backend_refuses_the_small_mimi_in_one_line(tiny, tmp_path):
    require("rustymimi")
    folder, _ = tiny
    code, _, errors = cli("run", str(SPEECH), str(tmp_path / "a.wav"), "--model", str(folder), "--mimi-backend", "rust")
    assert code == 2
    lines = errors.strip().splitlines()
    assert len(lines) == 1 and "not the published architecture" in lines[0] and "mlx" in lines[0], errors
    assert not (tmp_path / "a.wav").exists()


def test_a_missing_mimi_config_is_named(tiny, tmp_path):
    folder, _ = tiny
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in folder.iterdir():
        if p.name != MIMI_CONFIG_NAME:
            (copy / p.name).write_bytes(p.read_bytes())
    with pytest.raises(HubError, match=MIMI_CONFIG_NAME):
        resolve(copy)


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x").write_text("keep me")
    code, _, errors = cli("make-tiny", str(tmp_path))
    assert code == 2 and "not an empty folder" in errors
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def test_informative_mimi_emits_diverse_codes_and_audible_audio():
    mimi = informative_mimi(small_mimi_config(), seed=3)
    other = speech_like(4.0, seed=11)[None, None, : 50 * 1920]  # not the signal it was fitted on
    codes = np.array(mimi.encode(other))[0]
    assert min(len(set(level)) for level in codes) >= 10, [len(set(level)) for level in codes]
    pcm = np.array(mimi.decode(codes[None]))
    assert 0.02 < pcm.std() < 0.5


def test_mimi_config_round_trips_and_refuses_what_it_cannot_run():
    for cfg in (MimiConfig.mimi_202407(), small_mimi_config()):
        assert MimiConfig.from_kyutai_json(json.loads(json.dumps(cfg.to_kyutai_json()))) == cfg
    raw = small_mimi_config().to_kyutai_json()
    raw["seanet"]["activation"] = "GELU"
    with pytest.raises(ConfigError, match="seanet.activation='GELU' is not supported"):
        MimiConfig.from_kyutai_json(raw)
    raw = small_mimi_config().to_kyutai_json()
    raw["transformer"]["dim_feedforwad"] = 3
    with pytest.raises(ConfigError, match="unexpected key transformer.'dim_feedforwad'"):
        MimiConfig.from_kyutai_json(raw)


def test_saved_mimi_loads_back_exactly(tmp_path):
    mimi = informative_mimi(small_mimi_config(), seed=1)
    path = save_mimi(mimi, tmp_path / "m.safetensors")
    back = load_mimi_backend(path, None, 8, small_mimi_config())  # not published: the mlx backend
    x = speech_like(1.0, seed=2)[None, None, : 12 * 1920]
    assert np.array_equal(np.array(back.encode(x)), np.array(mimi.encode(x)))


def test_saved_mimi_and_config_read_by_torch_moshi(tiny):
    """Kyutai's own loader builds the Mimi from our config file and weights, and computes what we do."""
    torch = require("torch")
    loaders = require("moshi.models.loaders")
    folder, _ = tiny
    raw = json.loads((folder / MIMI_CONFIG_NAME).read_text())
    ref = loaders.get_mimi(str(folder / MIMI_NAME), raw, num_codebooks=8)
    ours = load_mimi(folder / MIMI_NAME, MimiConfig.from_kyutai_json(raw))
    x = speech_like(3.0, seed=4)[None, None, : 30 * 1920]
    with torch.no_grad():
        ref_codes = ref.encode(torch.from_numpy(x)).numpy()
        ref_pcm = ref.decode(torch.from_numpy(ref_codes)).numpy()
    codes = np.array(ours.encode(x))
    assert (codes == ref_codes).mean() >= 0.999
    assert np.abs(np.array(ours.decode(mx.array(ref_codes))) - ref_pcm).max() < 1e-4


@pytest.mark.slow
def test_full_mimi_runs_on_both_backends(tmp_path):
    """`--full-mimi`: the published architecture, which rustymimi runs with the same codes."""
    require("rustymimi")
    folder = make_tiny_model(tmp_path / "full", full_mimi=True)
    assert not (folder / MIMI_CONFIG_NAME).exists()
    x = read_audio(SPEECH)[None, None, : 25 * 1920]
    rust = load_mimi_backend(folder / MIMI_NAME, "rust")
    ours = load_mimi_backend(folder / MIMI_NAME, "mlx")
    codes = np.array(ours.encode(x))
    assert (np.array(rust.encode(x)) == codes).mean() >= 0.99
    assert min(len(set(level)) for level in codes[0]) >= 5
    assert np.array(rust.decode(codes)).std() > 0.01


def test_quantized_copy_keeps_its_mimi_config(tiny, tmp_path):
    folder, _ = tiny
    code, _, errors = cli("quantize", str(folder), str(tmp_path / "q8"), "--bits", "8")
    assert code == 0, errors
    assert (tmp_path / "q8" / MIMI_CONFIG_NAME).is_file()
    code, _, errors = cli("run", str(SPEECH), str(tmp_path / "a.wav"), "--model", str(tmp_path / "q8"))
    assert code == 0, errors
