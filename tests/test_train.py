"""`moshi-mlx finetune` / `fuse` on the tiny model: bad data fails up front in one line, checkpoints are
atomic and resume exactly, adapters load on every path (API, fuse, Kyutai's torch layout), the schedule
equals torch's OneCycleLR and moshi-finetune's YAML loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from moshi_mlx.audio.wav import WavWriter
from moshi_mlx.train import checkpoint as ckpt_mod
from moshi_mlx.train.config import TrainConfig, TrainConfigError, load_yaml, set_value
from moshi_mlx.train.data import DataError, WindowDataset, read_jsonl
from moshi_mlx.train.finetune import finetune
from moshi_mlx.train.interleaver import Interleaver
from moshi_mlx.train.loop import one_cycle
from moshi_mlx.weights.tiny import make_tiny_model

SR = 24_000


def write_recording(folder: Path, name: str, seconds: float, channels: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    pcm = np.stack([0.3 * np.sin(2 * np.pi * (200 + 100 * c) * t) for c in range(channels)])
    pcm += 0.01 * rng.standard_normal(pcm.shape)
    with WavWriter(folder / f"{name}.wav", SR, channels=channels) as w:
        w.write(pcm.astype(np.float32))
    al = [
        ["hello", [0.1, 0.4], "SPEAKER_MAIN"],
        ["fine", [0.5, 0.7], "SPEAKER_1"],
        ["weather", [0.9, 1.3], "SPEAKER_MAIN"],
    ]
    (folder / f"{name}.json").write_text(json.dumps({"alignments": al}))
    return {"path": f"{name}.wav", "duration": n / SR}


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    return write_jsonl(d / "train.jsonl", [write_recording(d, f"r{i}", 2.5 + 0.3 * i, seed=i) for i in range(2)])


def config(tiny: Path, dataset: Path, run: Path, **kw) -> TrainConfig:
    cfg = TrainConfig(model=str(tiny), run_dir=str(run), duration_sec=1.0, batch_size=2, max_steps=4)
    cfg.data.train_data = str(dataset)
    cfg.lora.rank = 4
    cfg.optim.lr = 1e-3
    for k, v in kw.items():
        set_value(cfg, k, v)
    return cfg


def windows(jsonl: Path) -> WindowDataset:
    """Checks only (every check runs before the first encoding: no Mimi is needed to fail)."""
    return WindowDataset(jsonl, None, Interleaver(None), 1.0, (8, 8), jsonl.parent / "cache")


def test_bad_data_is_one_line_naming_file_and_line(tmp_path):
    good = write_recording(tmp_path, "good", 1.0)
    write_recording(tmp_path, "mono", 1.0, channels=1)
    cases = [
        ([good, {"path": "missing.wav", "duration": 1.0}], r"train.jsonl:2: no such wav file .*missing.wav"),
        ([{"path": "mono.wav", "duration": 1.0}], r"train.jsonl:1: .*mono.wav has 1 channel\(s\)"),
        ([good, {"path": "good.wav"}], r"train.jsonl:2: each line needs \"path\" and \"duration\""),
        (["{not json"], r"train.jsonl:1: not a JSON object"),
        ([{"path": "good.wav", "duration": 0.05}], r"train.jsonl:1: duration 0.05 s is shorter than one Mimi frame"),
    ]
    for lines, pattern in cases:
        with pytest.raises(DataError, match=pattern) as e:
            windows(write_jsonl(tmp_path / "train.jsonl", lines))
        assert "\n" not in str(e.value)
    (tmp_path / "good.json").write_text(json.dumps({"alignments": [["hi", [0.1], "SPEAKER_MAIN"]]}))
    with pytest.raises(DataError, match=r"good.json: alignment 0 is .* expected \[word, \[start, end\], speaker\]"):
        windows(write_jsonl(tmp_path / "train.jsonl", [good]))
    (tmp_path / "good.json").write_text(json.dumps([["hi", [0.1, 0.2], "SPEAKER_MAIN"]]))
    with pytest.raises(DataError, match=r"good.json: expected \{\"alignments\""):
        windows(write_jsonl(tmp_path / "train.jsonl", [good]))
    (tmp_path / "good.json").unlink()
    with pytest.raises(DataError, match=r"train.jsonl:1: no alignments file .*good.json"):
        windows(write_jsonl(tmp_path / "train.jsonl", [good]))
    assert read_jsonl(write_jsonl(tmp_path / "ok.jsonl", [good]))[0].wav == tmp_path / "good.wav"


def test_cli_reports_bad_data_in_one_line(tiny, tmp_path):
    jsonl = write_jsonl(tmp_path / "train.jsonl", [{"path": "missing.wav", "duration": 1.0}])
    cmd = [
        sys.executable,
        "-m",
        "moshi_mlx",
        "finetune",
        "--model",
        str(tiny),
        "--data",
        str(jsonl),
        "--out",
        str(tmp_path / "run"),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = [x for x in p.stderr.splitlines() if "error" in x]
    assert lines == [f"moshi-mlx finetune: error: {jsonl}:1: no such wav file {tmp_path / 'missing.wav'}"]


def test_resume_continues_exactly_and_interrupted_save_leaves_nothing(tiny, dataset, tmp_path, monkeypatch):
    full = finetune(config(tiny, dataset, tmp_path / "a", ckpt_freq=2))
    assert [p.name for p in full.checkpoints] == ["checkpoint_000002", "checkpoint_000004"]

    # Same run interrupted by Ctrl-C while its step-4 checkpoint is being written.
    real = ckpt_mod.write_safetensors

    def interrupt(path, weights, metadata=None):
        if "checkpoint_000004" in str(path) and path.name == "optimizer.safetensors":
            raise KeyboardInterrupt
        real(path, weights, metadata)

    monkeypatch.setattr(ckpt_mod, "write_safetensors", interrupt)
    with pytest.raises(KeyboardInterrupt):
        finetune(config(tiny, dataset, tmp_path / "b", ckpt_freq=2))
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["checkpoint_000002"]
    monkeypatch.setattr(ckpt_mod, "write_safetensors", real)

    with pytest.raises(Exception, match="already holds checkpoints; pass --resume"):
        finetune(config(tiny, dataset, tmp_path / "b", ckpt_freq=2))
    resumed = finetune(config(tiny, dataset, tmp_path / "b", ckpt_freq=2), resume=True)
    assert [log.step for log in resumed.logs] == [3, 4]
    assert [log.loss for log in resumed.logs] == pytest.approx([log.loss for log in full.logs[2:]], rel=1e-5)
    a = mx.load(str(full.checkpoints[-1] / "consolidated" / "lora.safetensors"))
    b = mx.load(str(resumed.checkpoints[-1] / "consolidated" / "lora.safetensors"))
    assert a.keys() == b.keys()
    assert max(float(mx.abs(a[k] - b[k]).max()) for k in a) <= 1e-5
    assert not any(float(mx.abs(v).max()) == 0 for k, v in a.items() if "lora_B" in k)  # it trained


def test_adapter_on_the_api_fuse_and_torch_layout(tiny, dataset, tmp_path):
    from moshi_mlx.cli.fuse import main as fuse_main
    from moshi_mlx.weights.load import load_lm
    from moshi_mlx.weights.pretrained import load_pretrained

    result = finetune(config(tiny, dataset, tmp_path / "run", max_steps=2))
    ckpt = result.checkpoints[-1]
    codes = mx.array(np.random.default_rng(0).integers(0, 300, size=(1, 17, 12)))
    base = load_pretrained(tiny).lm(codes).text_logits
    tuned = load_pretrained(tiny, adapter=ckpt).lm(codes).text_logits
    assert float(mx.abs(mx.nan_to_num(tuned - base)).max()) > 1e-3
    fuse_main(["--model", str(tiny), "--adapter", str(ckpt), str(tmp_path / "fused")])
    fused = load_pretrained(tmp_path / "fused").lm(codes).text_logits
    np.testing.assert_allclose(
        np.nan_to_num(np.array(fused.astype(mx.float32))), np.nan_to_num(np.array(tuned.astype(mx.float32))), atol=2e-2
    )
    fuse_main(["--model", str(tiny), "--adapter", str(ckpt), "--torch", "--dtype", "fp32", str(tmp_path / "torch")])
    assert {p.name for p in (tmp_path / "torch").iterdir()} >= {"model.safetensors", "config.json"}
    keys = mx.load(str(tmp_path / "torch" / "model.safetensors")).keys()
    assert "transformer.layers.0.self_attn.in_proj_weight" in keys and "out_norm.alpha" in keys
    back = load_lm(tmp_path / "torch").__call__(codes).text_logits  # our loader reads Kyutai's layout
    ref = load_pretrained(tiny, dtype=mx.float32, adapter=ckpt).lm(codes).text_logits
    np.testing.assert_allclose(np.nan_to_num(np.array(back)), np.nan_to_num(np.array(ref)), atol=1e-4)


def test_one_cycle_equals_torch():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=50, pct_start=0.2)
    ours = one_cycle(1e-3, 50, 0.2)
    for step in range(50):
        assert float(ours(mx.array(step))) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-4, abs=1e-12)
        opt.step()
        sched.step()


def test_config_yaml_and_overrides(tmp_path):
    pytest.importorskip("yaml")
    example = """\
data:
  eval_data: ''
  shuffle: true
  train_data: 'train.jsonl'
moshi_paths:
  hf_repo_id: "kyutai/moshiko-pytorch-bf16"
full_finetuning: false
lora:
  enable: true
  rank: 128
  scaling: 2.
  ft_embed: false
first_codebook_weight_multiplier: 100.
text_padding_weight: .5
duration_sec: 100
batch_size: 16
max_steps: 2000
gradient_checkpointing: true
optim:
  lr: 2e-6
  weight_decay: 0.1
  pct_start: 0.05
seed: 0
log_freq: 1
eval_freq: 100
do_eval: false
do_ckpt: true
ckpt_freq: 100
save_adapters: true
run_dir: ""
"""
    (tmp_path / "moshi_7B.yaml").write_text(example)  # moshi-finetune's example/moshi_7B.yaml
    cfg = load_yaml(tmp_path / "moshi_7B.yaml").check()
    assert (cfg.lora.rank, cfg.optim.lr, cfg.duration_sec, cfg.batch_size) == (128, 2e-6, 100.0, 16)
    set_value(cfg, "lora.rank", "16")
    set_value(cfg, "gradient_checkpointing", "false")
    assert cfg.lora.rank == 16 and cfg.gradient_checkpointing is False
    with pytest.raises(TrainConfigError, match="unknown configuration key 'lora.rnak'"):
        set_value(cfg, "lora.rnak", 3)
    with pytest.raises(TrainConfigError, match="batch_size: expected a int"):
        set_value(cfg, "batch_size", "many")
    (tmp_path / "bad.yaml").write_text("optim:\n  lrr: 1\n")
    with pytest.raises(TrainConfigError, match="bad.yaml: unknown configuration key 'optim.lrr'"):
        load_yaml(tmp_path / "bad.yaml")


def test_qlora_trains_on_a_q4_base_and_streams_with_its_adapter(tiny, dataset, tmp_path):
    from moshi_mlx.generate import LmGen
    from moshi_mlx.modules.lora import lora_modules
    from moshi_mlx.sampling import make_sampler
    from moshi_mlx.weights.load import load_lm
    from moshi_mlx.weights.pretrained import load_pretrained
    from moshi_mlx.weights.quantize import quantize_lm
    from moshi_mlx.weights.save import save_lm

    result = finetune(config(tiny, dataset, tmp_path / "run", max_steps=2, quantize=4))
    assert all(np.isfinite(log.loss) for log in result.logs)
    q4 = load_lm(tiny)
    quantize_lm(q4, 4)
    pre = load_pretrained(tiny)
    files = [pre.files.tokenizer, pre.files.mimi, pre.files.mimi_config_file]
    save_lm(q4, tmp_path / "q4", extra_files=[f for f in files if f is not None])

    def stream(adapter) -> list:
        lm = load_pretrained(tmp_path / "q4", adapter=adapter).lm
        if adapter is not None:
            assert lora_modules(lm)  # kept beside the quantized base, and LmGen calls them
        gen = LmGen(lm, make_sampler(temp=0.0), make_sampler(temp=0.0))
        steps = [gen.step(mx.zeros((1, 8), dtype=mx.int32)) for _ in range(6)]
        return [np.array(s).tolist() for s in steps if s is not None]

    assert stream(result.checkpoints[-1]) != stream(None)


def test_memory_check_refuses_before_training(tiny, dataset, tmp_path, monkeypatch):
    from moshi_mlx.train import finetune as finetune_mod

    monkeypatch.setattr(finetune_mod, "available_memory", lambda: 2**20)
    with pytest.raises(finetune_mod.MemoryCheckError, match=r"a step needs about .* GiB but 0.00 GiB is available"):
        finetune(config(tiny, dataset, tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()
