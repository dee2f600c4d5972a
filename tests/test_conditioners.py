"""Conditioned family members vs torch moshi: a random torch `LMModel` built by Kyutai's loader from a
scaled-down config of each kind (Moshi with a LUT condition, Hibiki's summed description with a
depformer schedule, STT's extra heads without a depformer, TTS's cross-attention to speaker tensors
plus a summed LUT), saved in Kyutai's published spelling, loaded by us: teacher-forced logits agree
to 1e-4 in fp32, batch 1 and 2, with the conditions set, absent (the CFG contrast) and mixed."""

from __future__ import annotations

import copy
import json

import mlx.core as mx
import numpy as np
import pytest
from conftest import require
from lm_reference import MOSHI_LIKE, published_state_dict, random_codes

from moshi_mlx.config import LmConfig
from moshi_mlx.errors import InvalidArgument
from moshi_mlx.models.conditioners import null_attributes
from moshi_mlx.weights import load_lm

torch = require("torch")
require("moshi")

QUALITY = ["very_bad", "bad", "neutral", "good", "very_good"]
LUT = {"type": "lut", "lut": {"n_bins": 5, "dim": 16, "tokenizer": "noop", "possible_values": QUALITY}}

FAMILY: dict[str, dict] = {
    # Moshi 2B / Helium-based Moshi: a `description` LUT summed into every step.
    "moshi_conditioned": {**MOSHI_LIKE, "conditioners": {"description": LUT}, "fuser": {"sum": ["description"]}},
    # Hibiki: the same conditioning, a depformer schedule, 0/2 delays, model_type metadata.
    "hibiki": {
        **MOSHI_LIKE, "n_q": 8, "dep_q": 4, "delays": [0, 0, 2, 2, 2, 0, 2, 2, 2],
        "depformer_weights_per_step_schedule": [0, 1, 2, 2], "model_type": "hibiki",
        "conditioners": {"description": LUT}, "fuser": {"sum": ["description"]},
        "lm_gen_config": {"cfg_coef": 3.0},
    },
    # Kyutai STT: text only out (no depformer), end-of-speech extra heads on the hidden state.
    "stt": {
        **{k: v for k, v in MOSHI_LIKE.items() if not k.startswith("depformer")},
        "n_q": 4, "dep_q": 0, "delays": [0, 0, 0, 0, 0], "extra_heads_num_heads": 4, "extra_heads_dim": 6,
        "model_type": "stt", "stt_config": {"audio_silence_prefix_seconds": 1.0, "audio_delay_seconds": 0.5},
    },
    # Kyutai TTS: cross-attention to speaker embeddings (with positions), a summed `cfg` LUT.
    "tts": {
        **MOSHI_LIKE, "n_q": 4, "dep_q": 4, "delays": [0, 0, 2, 2, 2], "cross_attention": True,
        "conditioners": {
            "speaker_wavs": {"type": "tensor", "tensor": {"dim": 24}},
            "cfg": {"type": "lut", "lut": {"n_bins": 3, "dim": 8, "tokenizer": "noop",
                                           "possible_values": ["1.0", "2.0", "3.0"]}},
        },
        "fuser": {"cross": ["speaker_wavs"], "sum": ["cfg"], "cross_attention_pos_emb": True,
                  "cross_attention_pos_emb_scale": 1.0},
        "model_type": "tts", "tts_config": {"audio_delay": 2},
    },
}


def build_torch(config: dict, seed: int = 0):
    """Kyutai's loader builds the model (conditioners and fuser included); every weight then random."""
    from moshi.models.loaders import get_moshi_lm

    torch.manual_seed(seed)
    kwargs = {k: v for k, v in copy.deepcopy(config).items()
              if k not in ("model_type", "lm_gen_config", "stt_config", "tts_config")}
    model = get_moshi_lm(None, lm_kwargs=kwargs, device="cpu", dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and p.shape[-1] > 1:
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[-1]))
            else:
                p.copy_(p + 0.2 * torch.randn(p.shape, generator=gen))
    return model


def as_kyutai_loads_it(model, config: dict):
    """What Kyutai's `CheckpointInfo.get_moshi` changes after loading: Hibiki's EOS embedding := PAD's."""
    if config.get("model_type") == "hibiki":
        with torch.no_grad():
            model.text_emb.weight.data[2] = model.text_emb.weight.data[3]
    return model


def save_folder(model, config: dict, folder):
    from safetensors.torch import save_file

    folder.mkdir()
    state = published_state_dict(model)
    for key in [k for k in state if ".cross_attention.in_projs." in k or ".cross_attention.out_projs." in k]:
        kind = "in_proj_weight" if ".in_projs." in key else "out_proj.weight"
        state[key.split(".cross_attention.")[0] + f".cross_attention.{kind}"] = state.pop(key)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def attributes(name: str, batch: int, absent: str) -> list[dict]:
    """Condition values for `batch` items; `absent`: "none" (all set), "all" (null), "mixed" (second absent)."""
    rng = np.random.default_rng(len(name) + batch)
    items = []
    for b in range(batch):
        if name == "tts":
            T = 5 + 2 * b
            item = {"speaker_wavs": mx.array(rng.standard_normal((1, T, 24)).astype(np.float32)),
                    "cfg": ["1.0", "3.0"][b % 2]}
        elif name == "stt":
            item = {}
        else:
            item = {"description": QUALITY[(4 - b) % 5]}
        items.append(item)
    if absent == "all":
        return null_attributes(items)
    if absent == "mixed" and batch > 1:
        items[1] = null_attributes(items[1:2])[0]
    return items


def torch_conditions(model, items: list[dict]):
    from moshi.conditioners import ConditionAttributes, TensorCondition

    if model.condition_provider is None:
        return None
    attrs = []
    for item in items:
        text = {k: v for k, v in item.items() if not isinstance(v, mx.array) and k != "speaker_wavs"}
        tensor = {}
        if "speaker_wavs" in item:
            v = item["speaker_wavs"]
            tensor["speaker_wavs"] = (
                TensorCondition(torch.zeros(1, 1, 24), torch.zeros(1, 1, dtype=torch.bool)) if v is None
                else TensorCondition.from_tensor(torch.tensor(np.array(v))))
        attrs.append(ConditionAttributes(text=text, tensor=tensor))
    return model.condition_provider.prepare_and_provide(attrs)


@pytest.fixture(scope="module", params=list(FAMILY))
def member(request, tmp_path_factory):
    name = request.param
    model = build_torch(FAMILY[name])
    folder = save_folder(model, FAMILY[name], tmp_path_factory.mktemp(name) / "model")
    return name, as_kyutai_loads_it(model, FAMILY[name]), load_lm(folder, dtype=mx.float32)


@pytest.mark.parametrize("batch,absent", [(1, "none"), (2, "mixed"), (2, "all")])
def test_teacher_forced_logits_match_torch(member, batch, absent):
    name, model, lm = member
    config = FAMILY[name]
    codes = random_codes(config, batch=batch, steps=7, seed=batch)
    items = attributes(name, batch, absent)
    if not lm.cfg.dep_q:  # torch's `forward` needs a depformer: compare the temporal pass itself
        with torch.no_grad():
            hidden, ref_text = model.forward_text(torch.tensor(codes))
        ours_hidden, ours_text = lm.forward_text(mx.array(codes))
        assert np.abs(np.array(ours_text) - ref_text[:, 0].numpy()).max() <= 1e-4
        assert np.abs(np.array(ours_hidden) - hidden.numpy()).max() <= 1e-4
        return
    with torch.no_grad():
        ref = model(torch.tensor(codes), condition_tensors=torch_conditions(model, items))
    ours = lm(mx.array(codes), lm.conditions(items) if lm.fuser is not None else None)
    text_mask = ref.text_mask.numpy()
    diff = np.abs(np.array(ours.text_logits) - ref.text_logits.numpy())[text_mask]
    assert diff.max() <= 1e-4
    if lm.cfg.dep_q:
        mask = ref.mask.numpy()
        assert np.array_equal(np.array(ours.mask), mask)
        assert np.abs(np.array(ours.logits) - ref.logits.numpy())[mask].max() <= 1e-4


def test_extra_heads_match_torch(member):
    name, model, lm = member
    if name != "stt":
        pytest.skip("only STT has extra heads")
    codes = random_codes(FAMILY[name], batch=2, steps=5)
    with torch.no_grad():
        hidden, _ = model.forward_text(torch.tensor(codes))
        ref = [torch.softmax(head(hidden), dim=-1).numpy() for head in model.extra_heads]
    ours = lm.extra_head_probs(lm.forward_text(mx.array(codes))[0])
    assert len(ours) == 4
    for a, b in zip(ours, ref):
        assert np.abs(np.array(a) - b).max() <= 1e-5


def test_conditioned_model_needs_its_conditions(member):
    name, _, lm = member
    codes = mx.array(random_codes(FAMILY[name], batch=1, steps=3))
    if lm.fuser is None:
        with pytest.raises(InvalidArgument, match="takes no conditions"):
            lm.conditions([{"description": "good"}])
        return
    with pytest.raises(InvalidArgument, match="this model is conditioned"):
        lm(codes)
    key = next(iter(lm.condition_provider.conditioners))
    with pytest.raises(InvalidArgument, match=f"condition {key!r} is missing"):
        lm.conditions([{}])
    if name != "tts":
        with pytest.raises(InvalidArgument, match="'excellent' is not one of"):
            lm.conditions([{"description": "excellent"}])


def test_config_checks_the_fuser_against_the_conditioners():
    from moshi_mlx.config import ConfigError

    raw = dict(FAMILY["hibiki"], fuser={"sum": ["speaker"]})
    with pytest.raises(ConfigError, match="fuser 'sum' names 'speaker'"):
        LmConfig.from_kyutai_json(raw)


def test_conditions_change_the_output_and_steps_equal_the_forward(member):
    """Each condition reaches the model (set vs absent differ), and a streamed pass with a cache gives
    the teacher-forced pass's logits (cross-attention and summed conditions included)."""
    name, _, lm = member
    tokens = mx.array(random_codes(FAMILY[name], batch=2, steps=6, seed=3))
    items = attributes(name, 2, "none")
    fused = lm.fuse(lm.conditions(items)) if lm.fuser is not None else (None, None)
    _, full = lm.forward_text(tokens, None, *fused)
    if lm.fuser is not None:
        _, null = lm.forward_text(tokens, None, *lm.fuse(lm.conditions(null_attributes(items))))
        assert np.abs(np.array(full) - np.array(null)).max() > 1e-3
    cache = lm.make_cache()
    steps = [lm.step(tokens[:, :, t : t + 1], cache, *fused)[1] for t in range(6)]
    assert np.abs(np.array(mx.concatenate(steps, axis=1)) - np.array(full)).max() <= 1e-4


def test_conditioned_weights_survive_our_format_and_kyutai_mlx_names(member, tmp_path):
    """`save_lm` keeps conditioners, cross-attention and extra heads (conditioners stay fp32 in a bf16
    model, as torch keeps them); Kyutai's MLX spelling (same names for those parts) loads too."""
    from mlx.utils import tree_flatten

    from moshi_mlx.weights.kyutai_mlx import module_table
    from moshi_mlx.weights.load import build_lm
    from moshi_mlx.weights.save import save_lm

    name, _, lm = member
    ours = dict(tree_flatten(lm.parameters()))
    back = load_lm(save_lm(lm, tmp_path / "saved"), dtype=mx.float32)
    assert all(mx.array_equal(v, dict(tree_flatten(back.parameters()))[k]).item() for k, v in ours.items())
    half = load_lm(tmp_path / "saved", dtype=mx.bfloat16)
    for key, value in tree_flatten(half.parameters()):
        assert value.dtype == (mx.float32 if key.startswith("condition_provider.") else mx.bfloat16), key
    if lm.cfg.transformer.cross_attention:
        return  # Kyutai's MLX package has no cross-attention LM files
    kyutai = {}
    for theirs, module in module_table(lm.cfg).items():
        for key, value in ours.items():
            if key.rpartition(".")[0] == module:
                kyutai[f"{theirs}.{key.rpartition('.')[2]}"] = value
    loaded = dict(tree_flatten(build_lm(kyutai, lm.cfg, "kyutai-mlx", mx.float32).parameters()))
    assert loaded.keys() == ours.keys() and all(mx.array_equal(loaded[k], ours[k]).item() for k in ours)


def test_hibiki_reads_an_early_eos_as_padding(member):
    """Kyutai's loader gives Hibiki's text EOS (2) the embedding of PAD (3); ours does too, and only for Hibiki."""
    name, model, lm = member
    rows = np.array(lm.text_emb.weight[2:4])
    assert np.array_equal(rows[0], rows[1]) == (name == "hibiki")
    if name == "hibiki":  # the file has distinct rows; the torch reference got the change after saving
        codes = np.full((1, 1 + lm.cfg.n_q, 4), 5)
        codes[0, 0] = 2  # EOS on the text stream
        items = attributes(name, 1, "none")
        with torch.no_grad():
            ref = model(torch.tensor(codes), condition_tensors=torch_conditions(model, items)).text_logits.numpy()
        ours = np.array(lm(mx.array(codes), lm.conditions(items)).text_logits)
        assert np.abs(ours - ref)[~np.isnan(ref)].max() <= 1e-4
