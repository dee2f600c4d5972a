"""`translate` (Hibiki) vs torch moshi's `run_inference` for `model_type == "hibiki"` on espeak-ng speech:
a tiny random Hibiki-like model (Moshi's stream layout, the `description` LUT, `cfg_coef` 3 from its
`lm_gen_config`, the tiny folder's tokenizer and Mimi), greedy. Its text projection has a bias that
makes EOS the likeliest text token, so that torch's loop (which waits for an EOS after the input)
ends: the same number of steps, the same text tokens, the same audio tokens, and the voice within
1e-4 of torch's."""

from __future__ import annotations

import copy
import io
import json
import shutil
import subprocess
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
from conftest import require, unavailable

from moshi_mlx.audio.io import read_audio
from moshi_mlx.audio.translate import Translator
from moshi_mlx.errors import InvalidArgument
from moshi_mlx.hub import MIMI_NAME, TOKENIZER_NAME
from moshi_mlx.sampling import SamplingParams
from moshi_mlx.weights.pretrained import load_pretrained
from moshi_mlx.weights.tiny import make_tiny_model

torch = require("torch")
require("moshi")

METADATA = ("model_type", "lm_gen_config", "mimi_config_name")
LUT = {"type": "lut", "lut": {"n_bins": 5, "dim": 16, "tokenizer": "noop",
                              "possible_values": ["very_bad", "bad", "neutral", "good", "very_good"]}}
GREEDY = SamplingParams(text_temp=0.0, audio_temp=0.0)


@pytest.fixture(scope="module")
def hibiki(tmp_path_factory):
    from moshi.models.loaders import get_moshi_lm
    from safetensors.torch import save_file

    if shutil.which("espeak-ng") is None:
        unavailable("espeak-ng", "espeak-ng is not installed")
    root = tmp_path_factory.mktemp("hibiki")
    speech = root / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), "Bonjour, comment allez-vous ?"], check=True)
    folder = make_tiny_model(root / "model")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="hibiki", bias_proj=True, conditioners={"description": LUT},
                  fuser={"sum": ["description"]}, lm_gen_config={"cfg_coef": 3.0})
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    kwargs = {k: v for k, v in copy.deepcopy(config).items() if k not in METADATA}
    model = get_moshi_lm(None, lm_kwargs=kwargs, device="cpu", dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and p.shape[-1] > 1:
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[-1]))
        model.text_linear.bias.zero_()
        model.text_linear.bias[2] = 50.0  # EOS
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder, read_audio(speech)


def torch_run_inference(folder, pcm):
    import sentencepiece
    from moshi.client_utils import RawPrinter
    from moshi.models.loaders import get_mimi, get_moshi_lm
    from moshi.run_inference import InferenceState

    config = json.loads((folder / "config.json").read_text())
    mimi = get_mimi(folder / MIMI_NAME, json.loads((folder / config["mimi_config_name"]).read_text()), num_codebooks=8)
    lm = get_moshi_lm(folder / "model.safetensors", lm_kwargs={k: v for k, v in config.items() if k not in METADATA},
                      device="cpu", dtype=torch.float32)
    lm.text_emb.weight.data[2] = lm.text_emb.weight.data[3]  # `CheckpointInfo.get_moshi` for Hibiki
    info = SimpleNamespace(model_type="hibiki", stt_config={})
    state = InferenceState(info, mimi, sentencepiece.SentencePieceProcessor(str(folder / TOKENIZER_NAME)), lm,
                           batch_size=1, cfg_coef=3.0, device="cpu", use_sampling=False)
    state.printer = RawPrinter(stream=io.StringIO(), err_stream=io.StringIO())
    with torch.no_grad():
        (text, out_pcm), = state.run(torch.tensor(pcm)[None, None])
    return text.numpy(), out_pcm.numpy().reshape(-1)


def test_translation_matches_torch_run_inference(hibiki):
    folder, pcm = hibiki
    ref_text, ref_pcm = torch_run_inference(folder, pcm)
    pretrained = load_pretrained(folder, mimi_backend="mlx", dtype=mx.float32)
    frames = list(Translator(pretrained.lm, pretrained.mimi, pretrained.tokenizer, GREEDY).frames(pcm))
    assert len(frames) == len(ref_text) >= len(pcm) // 1920
    np.testing.assert_array_equal([f.token for f in frames], ref_text)
    ours = np.concatenate([f.pcm for f in frames])
    assert ours.shape == ref_pcm.shape and np.abs(ours - ref_pcm).max() <= 1e-4
    assert np.abs(ref_pcm).max() > 1e-3  # the voice is not silence


def test_translator_uses_the_models_guidance_and_refuses_other_models(hibiki, tmp_path):
    folder, _ = hibiki
    pretrained = load_pretrained(folder, mimi_backend="mlx")
    assert Translator(pretrained.lm, pretrained.mimi, pretrained.tokenizer).cfg_coef == 3.0
    other = tmp_path / "m"
    shutil.copytree(folder, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(config, model_type="stt")))
    p = load_pretrained(other, mimi_backend="mlx")
    with pytest.raises(InvalidArgument, match="not a Hibiki translation one; use `moshi-mlx transcribe`"):
        Translator(p.lm, p.mimi, p.tokenizer)


def test_cli_writes_the_voice_and_the_text(hibiki, tmp_path, capsys):
    from moshi_mlx.audio.io import write_wav
    from moshi_mlx.cli.translate import main

    folder, pcm = hibiki
    speech = write_wav(tmp_path / "in.wav", pcm)
    out, text = tmp_path / "out.wav", tmp_path / "out.txt"
    main([str(speech), str(out), "--model", str(folder), "--text-out", str(text), "--mimi-backend", "mlx"])
    assert len(read_audio(out)) >= len(pcm) // 1920 * 1920 and text.is_file()
    with pytest.raises(SystemExit):
        main([str(speech), str(tmp_path / "x.wav"), "--model", str(folder), "--mimi-backend", "rust"])
    assert "error" in capsys.readouterr().err
