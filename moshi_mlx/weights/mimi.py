"""Kyutai torch Mimi checkpoints -> our MLX `Mimi` parameters.

The key table is built from the config (`mimi_key_table`): each torch key maps to one of
ours, with conv weights transposed to MLX layout (`[out, in, k]` -> `[out, k, in]`;
transposed convs `[in, out / groups, k]` -> `[out / groups, k, in]`; 1x1 quantizer
projections -> Linear `[out, in]`) and each codebook computed as
`embedding_sum / max(cluster_usage, 1e-5)`. Attention projections are accepted in both
spellings: published (`in_proj_weight`, `out_proj.weight`) and torch 0.2.13 `state_dict()`
(`in_projs.0.weight`, `out_projs.0.weight`). Every codebook level of the file must be
present (32 for the published Mimi); only `cfg.num_codebooks` are loaded.

`save_mimi` goes the other way: our `Mimi` -> a checkpoint in the published spelling, which
torch moshi (`get_mimi`), rustymimi (published architecture only) and `load_mimi` read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from ..config import MimiConfig
from ..files import atomic_path
from ..hub import check_safetensors
from ..models.codec import BackendError, MimiLike, RustMimi, check_backend, default_backend
from ..models.mimi import Mimi
from .common import WeightsError, read_safetensors, strict_load

Array = mx.array | np.ndarray


@dataclass(frozen=True)
class _Entry:
    ours: str | None  # None: expected in the file but not loaded (unused codebook levels)
    kind: str  # "copy", "conv", "convtr", "proj", "codebook_sum", "codebook_usage", "codebook_flag"
    groups: int = 1


def _conv_keys(table: dict[str, _Entry], torch_prefix: str, ours: str, kind: str, bias: bool = True) -> None:
    inner = "conv.conv" if kind == "conv" else "convtr.convtr"
    table[f"{torch_prefix}.{inner}.weight"] = _Entry(f"{ours}.weight", kind)
    if bias:
        table[f"{torch_prefix}.{inner}.bias"] = _Entry(f"{ours}.bias", "copy")


def _seanet_keys(table: dict[str, _Entry], cfg: MimiConfig, side: str) -> None:
    sc = cfg.seanet
    n_res, n_stages = sc.n_residual_layers, len(sc.ratios)
    t, o = f"{side}.model", side
    _conv_keys(table, f"{t}.0", f"{o}.init_conv", "conv")
    for i in range(n_stages):
        start = 1 + i * (n_res + 2)
        res_start = start if side == "encoder" else start + 2
        for j in range(n_res):
            for c in range(2):
                _conv_keys(table, f"{t}.{res_start + j}.block.{2 * c + 1}", f"{o}.stages.{i}.residuals.{j}.convs.{c}", "conv")
        if side == "encoder":
            _conv_keys(table, f"{t}.{start + n_res + 1}", f"{o}.stages.{i}.downsample", "conv")
        else:
            _conv_keys(table, f"{t}.{start + 1}", f"{o}.stages.{i}.upsample", "convtr")
    _conv_keys(table, f"{t}.{1 + n_stages * (n_res + 2) + 1}", f"{o}.final_conv", "conv")


def _transformer_keys(table: dict[str, _Entry], cfg: MimiConfig, side: str) -> None:
    for i in range(cfg.transformer.num_layers):
        t, o = f"{side}_transformer.transformer.layers.{i}", f"{side}_transformer.layers.{i}"
        names = ["self_attn.in_projs.0.weight", "self_attn.out_projs.0.weight", "linear1.weight", "linear2.weight"]
        names += [f"{n}.{p}" for n in ("norm1", "norm2") for p in ("weight", "bias")]
        names += ["layer_scale_1.scale", "layer_scale_2.scale"]
        for n in names:
            table[f"{t}.{n}"] = _Entry(f"{o}.{n}", "copy")


def _quantizer_keys(table: dict[str, _Entry], cfg: MimiConfig) -> None:
    n_sem = cfg.n_q_semantic
    for name, first, count in (("rvq_first", 0, n_sem), ("rvq_rest", n_sem, cfg.quantizer_n_q - n_sem)):
        t, o = f"quantizer.{name}", f"quantizer.{name}"
        table[f"{t}.input_proj.weight"] = _Entry(f"{o}.input_proj.weight", "proj")
        table[f"{t}.output_proj.weight"] = _Entry(f"{o}.output_proj.weight", "proj")
        for i in range(count):
            used = first + i < cfg.num_codebooks
            ours = f"{o}.codebooks.{i}.embedding" if used else None
            cb = f"{t}.vq.layers.{i}._codebook"
            table[f"{cb}.embedding_sum"] = _Entry(ours, "codebook_sum")
            table[f"{cb}.cluster_usage"] = _Entry(ours, "codebook_usage")
            table[f"{cb}._initialized"] = _Entry(None, "codebook_flag")


def mimi_key_table(cfg: MimiConfig) -> dict[str, _Entry]:
    """Every key of a Kyutai torch Mimi checkpoint (torch 0.2.13 spelling) and where it goes."""
    table: dict[str, _Entry] = {}
    for side in ("encoder", "decoder"):
        _seanet_keys(table, cfg, side)
        _transformer_keys(table, cfg, side)
    _quantizer_keys(table, cfg)
    table["downsample.conv.conv.conv.weight"] = _Entry("downsample.weight", "conv")
    table["upsample.convtr.convtr.convtr.weight"] = _Entry("upsample.weight", "convtr", cfg.seanet.dimension)
    return table


def _normalise_key(key: str) -> str:
    """Published spelling -> torch 0.2.13 `state_dict()` spelling."""
    if key.endswith(".self_attn.in_proj_weight"):
        return key[: -len("in_proj_weight")] + "in_projs.0.weight"
    if key.endswith(".self_attn.out_proj.weight"):
        return key[: -len("out_proj.weight")] + "out_projs.0.weight"
    return key


def _convtr_weight(w: np.ndarray, groups: int) -> np.ndarray:
    """torch `[in, out / g, k]` -> ours `[out, k, in / g]` (group-major channels on both sides)."""
    c_in, opg, k = w.shape
    if c_in % groups:
        return w  # wrong shape; reported by the strict shape check
    ipg = c_in // groups
    return w.reshape(groups, ipg, opg, k).transpose(0, 2, 3, 1).reshape(groups * opg, k, ipg)


_TRANSFORMS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "copy": lambda w, g: w,
    "conv": lambda w, g: w.transpose(0, 2, 1),
    "convtr": _convtr_weight,
    "proj": lambda w, g: w[..., 0],
}


def _torch_shape(entry: _Entry, ours: tuple[int, ...]) -> tuple[int, ...]:
    """The checkpoint shape that gives our parameter shape `ours`."""
    if entry.kind == "conv":
        return (ours[0], ours[2], ours[1])
    if entry.kind == "convtr":
        out, k, ipg = ours
        return (entry.groups * ipg, out // entry.groups, k)
    if entry.kind == "proj":
        return (*ours, 1)
    if entry.kind == "codebook_usage":
        return ours[:1]
    return ours


def _to_numpy(value: Array) -> np.ndarray:
    if isinstance(value, mx.array):
        value = value.astype(mx.float32)  # numpy has no bfloat16
    return np.asarray(value, dtype=np.float32)


def convert_mimi_torch(
    state: Mapping[str, Array],
    cfg: MimiConfig,
    source: str = "checkpoint",
    expected: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[dict[str, mx.array], dict[str, str]]:
    """Maps a Kyutai torch Mimi state dict to our names; also returns our key -> checkpoint key.

    With `expected` (our parameter shapes), every loaded tensor's shape is checked in the
    checkpoint's own layout, so errors quote the shapes as they appear in the file.
    """
    table = mimi_key_table(cfg)
    by_key: dict[str, tuple[str, Array]] = {}
    for src, value in state.items():
        key = _normalise_key(src)
        if key not in table:
            raise WeightsError(f"{source}: unexpected key {src!r}")
        if key in by_key:
            raise WeightsError(f"{source}: key {src!r} duplicates {by_key[key][0]!r}")
        by_key[key] = (src, value)
    for key in table:
        if key not in by_key:
            spelled = key.replace("in_projs.0.weight", "in_proj_weight").replace("out_projs.0.weight", "out_proj.weight")
            raise WeightsError(f"{source}: missing key {spelled!r}")

    out: dict[str, mx.array] = {}
    origin: dict[str, str] = {}
    sums: dict[str, tuple[str, np.ndarray]] = {}
    usages: dict[str, np.ndarray] = {}
    for key, entry in table.items():
        src, value = by_key[key]
        if entry.ours is None:
            continue
        if expected is not None and entry.ours in expected:
            want = _torch_shape(entry, tuple(expected[entry.ours]))
            if tuple(value.shape) != want:
                raise WeightsError(f"{source}: key {src!r} has shape {tuple(value.shape)}, expected {want}")
        w = _to_numpy(value)
        if entry.kind == "codebook_sum":
            sums[entry.ours] = (src, w)
            continue
        if entry.kind == "codebook_usage":
            usages[entry.ours] = w
            continue
        if entry.kind in ("conv", "convtr", "proj") and w.ndim != 3:
            raise WeightsError(f"{source}: key {src!r} has shape {w.shape}, expected a 3-d conv weight")
        out[entry.ours] = mx.array(np.ascontiguousarray(_TRANSFORMS[entry.kind](w, entry.groups)))
        origin[entry.ours] = src
    for ours, (src, emb_sum) in sums.items():
        usage = usages[ours]
        if emb_sum.ndim != 2 or usage.shape != emb_sum.shape[:1]:
            raise WeightsError(
                f"{source}: key {src!r} has shape {emb_sum.shape} but its cluster_usage has shape {usage.shape}"
            )
        out[ours] = mx.array(emb_sum / np.maximum(usage, np.float32(1e-5))[:, None])
        origin[ours] = src
    return out, origin


def load_mimi(path_or_state: str | Path | Mapping[str, Array], cfg: MimiConfig | None = None) -> Mimi:
    """Builds `Mimi(cfg)` (default: the published config, 8 codebooks) and strictly loads torch weights."""
    cfg = MimiConfig.mimi_202407() if cfg is None else cfg
    if isinstance(path_or_state, (str, Path)):
        source = str(path_or_state)
        state: Mapping[str, Array] = read_safetensors(path_or_state)
    else:
        source, state = "state dict", path_or_state
    model = Mimi(cfg)
    expected = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    weights, origin = convert_mimi_torch(state, cfg, source, expected)
    strict_load(model, weights, source, origin)
    mx.eval(model.parameters())
    return model


def is_published(cfg: MimiConfig) -> bool:
    """Whether `cfg` is the published Mimi architecture (any number of codebooks in use)."""
    return dataclasses.replace(cfg, num_codebooks=8) == MimiConfig.mimi_202407()


def load_mimi_backend(
    path: str | Path, backend: str | None = None, num_codebooks: int = 8, cfg: MimiConfig | None = None
) -> MimiLike:
    """A Mimi from a Kyutai torch checkpoint, computed by MLX (`"mlx"`) or rustymimi (`"rust"`).

    `cfg` is the checkpoint's architecture (default: the published Mimi); `num_codebooks` replaces
    its count in use. rustymimi runs only the published architecture: for another, `None` picks
    `"mlx"` and `"rust"` is refused; otherwise `None` picks `moshi_mlx.models.codec.default_backend()`.
    """
    cfg = MimiConfig.mimi_202407(num_codebooks) if cfg is None else dataclasses.replace(cfg, num_codebooks=num_codebooks)
    if not is_published(cfg):
        if backend == "rust":
            raise BackendError(
                f"{path}: this Mimi is not the published architecture (see its mimi_config_name file); "
                "rustymimi cannot run it: use --mimi-backend mlx"
            )
        backend = backend or "mlx"
    backend = check_backend(backend or default_backend())
    if backend == "mlx":
        return load_mimi(path, cfg)
    check_safetensors(path, "a Mimi weights file")  # rustymimi's own errors name neither file nor cause
    return RustMimi(path, num_codebooks)


def _from_ours(entry: _Entry, w: np.ndarray) -> np.ndarray:
    """Inverse of `_TRANSFORMS`: our parameter -> the checkpoint's layout."""
    if entry.kind == "conv":
        return w.transpose(0, 2, 1)
    if entry.kind == "convtr":
        out, k, ipg = w.shape
        g = entry.groups
        return w.reshape(g, out // g, k, ipg).transpose(0, 3, 1, 2).reshape(g * ipg, out // g, k)
    if entry.kind == "proj":
        return w[..., None]
    return w


def mimi_torch_state(model: Mimi) -> dict[str, np.ndarray]:
    """`model`'s weights as a Kyutai torch checkpoint (published spelling, fp32, unit cluster usage).

    The model must hold every codebook level of its config (`num_codebooks == quantizer_n_q`)."""
    cfg = model.cfg
    if cfg.num_codebooks != cfg.quantizer_n_q:
        raise ValueError(
            f"a Mimi checkpoint holds all {cfg.quantizer_n_q} codebook levels; this model has {cfg.num_codebooks}"
        )
    ours = {k: np.asarray(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}
    state: dict[str, np.ndarray] = {}
    for key, entry in mimi_key_table(cfg).items():
        name = key.replace("self_attn.in_projs.0.weight", "self_attn.in_proj_weight")
        name = name.replace("self_attn.out_projs.0.weight", "self_attn.out_proj.weight")
        if entry.kind == "codebook_flag":
            state[name] = np.ones((1,), np.float32)
        elif entry.kind == "codebook_usage":
            state[name] = np.ones(ours[entry.ours].shape[:1], np.float32)
        else:
            state[name] = np.ascontiguousarray(_from_ours(entry, ours[entry.ours]))
    return state


def save_mimi(model: Mimi, path: str | Path) -> Path:
    """Writes `model` as a Kyutai torch Mimi safetensors file, atomically (a temporary file renamed)."""
    path = Path(path)
    state = {k: mx.array(v) for k, v in mimi_torch_state(model).items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        mx.save_safetensors(f, state)  # a file object: MLX would append ".safetensors" to a name
    return path
