"""The HF transformers Moshi layout: a tiny random `MoshiForConditionalGeneration` (`save_pretrained`)
loads with transformers' logits, and our export (`convert --to hf`) is read by transformers and comes
back losslessly."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from conftest import require
from mlx.utils import tree_flatten

from moshi_mlx.cli.main import main
from moshi_mlx.config import ConfigError, LmConfig
from moshi_mlx.weights import load_lm
from moshi_mlx.weights.common import WeightsError
from moshi_mlx.weights.hf import check_hf_compatible, hf_lm_state, kyutai_config_from_hf
from moshi_mlx.weights.hf_folder import hf_mimi
from moshi_mlx.weights.mimi import load_mimi
from moshi_mlx.weights.tiny import make_tiny_model

torch = require("torch")
transformers = require("transformers")

K = 4  # codebooks per audio stream


def fp32_kwargs() -> dict:
    """`from_pretrained`'s fp32 argument: `dtype` from transformers 4.56, `torch_dtype` before (the
    floors venv resolves an older transformers next to huggingface_hub 0.25)."""
    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch.float32}


def tiny_hf_config() -> "transformers.MoshiConfig":
    """Moshi's structure, scaled down: grouped-query attention in the temporal decoder, a small Mimi."""
    mimi = dict(hidden_size=64, num_filters=8, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                intermediate_size=128, codebook_dim=32, num_quantizers=8, num_semantic_quantizers=1,
                upsample_groups=64, vector_quantization_hidden_dimension=32)
    depth = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64)
    return transformers.MoshiConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        ffn_dim=176, num_codebooks=K, max_position_embeddings=500, sliding_window=500,
        audio_encoder_config=mimi, depth_decoder_config=depth,
    )


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A saved random HF Moshi; the depth decoder's stacked weights (initialised at std 1 by HF) are
    scaled to std 0.2 so that logits are O(1) and a 1e-4 bound means something."""
    torch.manual_seed(0)
    model = transformers.MoshiForConditionalGeneration(tiny_hf_config()).eval()
    with torch.no_grad():
        for name, p in model.depth_decoder.named_parameters():
            if p.ndim == 3:
                p.mul_(0.2)
    folder = tmp_path_factory.mktemp("hf") / "moshi"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(hf_folder):
    return transformers.MoshiForConditionalGeneration.from_pretrained(hf_folder, **fp32_kwargs()).eval()


def random_tokens(cfg: LmConfig, B: int, T: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    text = rng.integers(0, cfg.text_card, (B, 1, T))
    return np.concatenate([text, rng.integers(0, cfg.card, (B, cfg.n_q, T))], axis=1)


def hf_forward(model, tokens: np.ndarray):
    """transformers' forward on our `[B, 1 + 2k, T]` stream layout (text, Moshi's k codebooks, the user's)."""
    k = (tokens.shape[1] - 1) // 2
    with torch.no_grad():
        t = torch.tensor(tokens)
        return model(input_ids=t[:, 0], moshi_audio_codes=t[:, 1 : 1 + k], user_audio_codes=t[:, 1 + k :])


def test_hf_folder_loads_with_transformers_logits(hf_folder, reference):
    lm = load_lm(hf_folder, dtype=mx.float32)
    assert lm.cfg.n_q == 2 * K and lm.cfg.dep_q == K and lm.cfg.transformer.kv_repeat == 2
    tokens = random_tokens(lm.cfg, B=2, T=9)
    out = hf_forward(reference, tokens)
    hidden, text_logits = lm.forward_text(mx.array(tokens))
    assert np.abs(np.array(text_logits) - out.logits.numpy()).max() <= 1e-4
    # The depformer: text token then audio codebooks 0..K-2 as inputs, over the normed hidden state.
    B, T = 2, 9
    dep_in = tokens[:, :K]
    with torch.no_grad():
        ref = reference.depth_decoder(
            input_ids=torch.tensor(dep_in.transpose(0, 2, 1).reshape(B * T, K)),
            last_hidden_state=out.last_hidden_state.reshape(B * T, 1, -1),
        ).logits.numpy()
    ours = np.array(lm.forward_depformer(mx.array(dep_in), hidden)).transpose(0, 2, 1, 3).reshape(B * T, K, -1)
    assert 0.5 < np.abs(ref).max() < 50  # O(1) logits: the bound below is meaningful
    assert np.abs(ours - ref).max() <= 1e-4


def test_greedy_text_tokens_equal_transformers(hf_folder, reference):
    """Greedy decoding of the text stream (audio given), 24 steps: the same tokens from both."""
    lm = load_lm(hf_folder, dtype=mx.float32)
    tokens = random_tokens(lm.cfg, B=2, T=25, seed=1)
    ours, theirs = tokens[:, :, :1].copy(), tokens[:, :, :1].copy()
    for t in range(1, 25):
        nxt_ours = np.array(mx.argmax(lm.forward_text(mx.array(ours))[1][:, -1], axis=-1))
        nxt_theirs = hf_forward(reference, theirs).logits[:, -1].argmax(-1).numpy()
        ours = np.concatenate([ours, tokens[:, :, t : t + 1]], axis=2)
        theirs = np.concatenate([theirs, tokens[:, :, t : t + 1]], axis=2)
        ours[:, 0, -1], theirs[:, 0, -1] = nxt_ours, nxt_theirs
    np.testing.assert_array_equal(ours, theirs)
    assert len(np.unique(ours[:, 0])) > 2  # the text stream really moved


def test_hf_mimi_encodes_and_decodes_as_transformers(hf_folder, reference):
    raw = json.loads((hf_folder / "config.json").read_text())
    state, cfg = hf_mimi(hf_folder / "model.safetensors", raw, "hf", num_codebooks=8)
    mimi = load_mimi(state, cfg)
    x = (np.random.default_rng(0).standard_normal((1, 1, 1920 * 4)) * 0.1).astype(np.float32)
    with torch.no_grad():
        codes = reference.audio_encoder.encode(torch.tensor(x), num_quantizers=8)[0]
        audio = reference.audio_encoder.decode(codes)[0].numpy()
    np.testing.assert_array_equal(np.array(mimi.encode(mx.array(x))), codes.numpy())
    assert np.abs(np.array(mimi.decode(mx.array(codes.numpy()))) - audio).max() <= 1e-4


def test_hf_to_ours_to_hf_keeps_every_lm_tensor(hf_folder):
    from moshi_mlx.weights.common import read_safetensors

    original = {k: v for k, v in read_safetensors(hf_folder / "model.safetensors").items()
                if not k.startswith("audio_encoder.")}
    back = hf_lm_state(load_lm(hf_folder))
    assert back.keys() == original.keys()
    assert all(mx.array_equal(back[k], original[k]).item() for k in back)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_convert_to_hf_is_read_by_transformers_and_comes_back_losslessly(tiny, tmp_path, capsys):
    hf_dir, back_dir = tmp_path / "hf", tmp_path / "back"
    main(["convert", str(tiny), str(hf_dir), "--to", "hf"])
    main(["convert", str(hf_dir), str(back_dir)])
    assert f"wrote {hf_dir}" in capsys.readouterr().out
    original, back = load_lm(tiny), load_lm(back_dir)
    pa, pb = dict(tree_flatten(original.parameters())), dict(tree_flatten(back.parameters()))
    assert pa.keys() == pb.keys()
    assert all(pa[k].dtype == pb[k].dtype and mx.array_equal(pa[k], pb[k]).item() for k in pa)
    assert (back_dir / "tokenizer_spm_32k_3.model").read_bytes() == (tiny / "tokenizer_spm_32k_3.model").read_bytes()

    model = transformers.MoshiForConditionalGeneration.from_pretrained(hf_dir, **fp32_kwargs()).eval()
    lm = load_lm(tiny, dtype=mx.float32)
    tokens = random_tokens(lm.cfg, B=1, T=6)
    ref = hf_forward(model, tokens).logits.numpy()
    assert np.abs(np.array(lm.forward_text(mx.array(tokens))[1]) - ref).max() <= 1e-4
    # The Mimi went along: the one rebuilt from the HF folder encodes like the original.
    state, cfg = hf_mimi(hf_dir / "model.safetensors", json.loads((hf_dir / "config.json").read_text()), "hf")
    from moshi_mlx.hub import resolve

    files = resolve(tiny)
    x = mx.array((np.random.default_rng(0).standard_normal((1, 1, 1920 * 3)) * 0.1).astype(np.float32))
    orig_mimi = load_mimi(files.mimi, files.mimi_config())
    assert mx.array_equal(load_mimi(state, cfg).encode(x), orig_mimi.encode(x)).item()


def test_convert_to_hf_refuses_what_the_layout_cannot_hold(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["convert", str(tiny), str(tmp_path / "q"), "--to", "hf", "--quantize", "4"])
    assert "holds no quantized weights" in capsys.readouterr().err
    cfg = LmConfig.from_kyutai_json(dict(json.loads((tiny / "config.json").read_text()), delays=[0] * 17))
    with pytest.raises(ConfigError, match=r"cannot be expressed in the HF transformers Moshi layout: delays"):
        check_hf_compatible(cfg)
    assert not (tmp_path / "q").exists()


def test_hf_config_errors_are_one_line():
    raw = tiny_hf_config().to_dict()
    with pytest.raises(ConfigError, match=r"hidden_act='gelu_new' is not supported"):
        kyutai_config_from_hf(dict(raw, hidden_act="gelu_new"))
    with pytest.raises(ConfigError, match=r"missing section 'depth_decoder_config'"):
        kyutai_config_from_hf({k: v for k, v in raw.items() if k != "depth_decoder_config"})


def test_hf_weights_errors_name_the_key(hf_folder, tmp_path):
    from moshi_mlx.weights.common import read_safetensors

    state = read_safetensors(hf_folder / "model.safetensors")
    del state["depth_decoder.lm_heads.weight"]
    bad = tmp_path / "bad"
    bad.mkdir()
    mx.save_safetensors(str(bad / "model.safetensors"), state)
    (bad / "config.json").write_text((hf_folder / "config.json").read_text())
    with pytest.raises(WeightsError, match=r"model.safetensors: missing key 'depth_decoder.lm_heads.weight'$"):
        load_lm(bad)


def test_an_hf_folder_runs_as_a_whole_model(tiny, tmp_path):
    """`load_pretrained` (what `run`/`chat` use) takes LM, Mimi and tokenizer from an HF folder."""
    from moshi_mlx.models.codec import BackendError
    from moshi_mlx.weights.pretrained import load_pretrained

    hf_dir = tmp_path / "hf"
    main(["convert", str(tiny), str(hf_dir), "--to", "hf"])
    theirs, ours = load_pretrained(hf_dir), load_pretrained(tiny, mimi_backend="mlx")
    x = mx.array((np.random.default_rng(1).standard_normal((1, 1, 1920 * 2)) * 0.1).astype(np.float32))
    assert mx.array_equal(theirs.mimi.encode(x), ours.mimi.encode(x)).item()
    assert theirs.tokenizer.vocab_size == ours.tokenizer.vocab_size
    with pytest.raises(BackendError, match="rustymimi cannot read the HF layout's Mimi"):
        load_pretrained(hf_dir, mimi_backend="rust")


def test_sharded_hf_checkpoint_loads_whole(reference, tmp_path):
    """Large HF models are saved in shards (`model.safetensors.index.json`); they load like one file."""
    folder = tmp_path / "sharded"
    reference.save_pretrained(folder, max_shard_size="300KB")
    assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
    lm = load_lm(folder, dtype=mx.float32)
    tokens = random_tokens(lm.cfg, B=1, T=5)
    assert np.abs(np.array(lm.forward_text(mx.array(tokens))[1]) - hf_forward(reference, tokens).logits.numpy()).max() <= 1e-4
    index = folder / "model.safetensors.index.json"
    raw = json.loads((folder / "config.json").read_text())
    load_mimi(*hf_mimi(index, raw, "sharded"))  # the Mimi comes out of the shards too
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(WeightsError, match=rf"{shard.name}: no such file"):
        load_lm(folder)
