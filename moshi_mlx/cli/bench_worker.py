"""One side of `moshi-mlx bench`, run in its own process: ours, Kyutai's moshi_mlx 0.3.0, or the
bandwidth probe. `moshi-mlx bench` passes this file's source to `python -c` with one JSON argument
and reads one JSON line back. It imports nothing from our package at module level, because
Kyutai's package has the same import name and its process must not see ours.

Measured per process (so each side's peak memory is its own): milliseconds per `LmGen.step`
until its tokens are evaluated; the graph nodes one steady-state step builds in Python; peak
memory (ru_maxrss and `mx.get_peak_memory()`, read right after the timed steps); and each
component timed alone between `mx.eval` barriers (temporal transformer step, the depformer's
codebook steps, the samplers, Mimi encode and decode of one frame, MLX Mimi with random weights).

Graph nodes: every array the step passes to `mx.eval`/`mx.async_eval`, or reads back through
`item`, `tolist`, `bool`, `int` or `float`, and every array it leaves in the generator's state
or returns, is exported with `mx.export_to_dot` just before it is evaluated; the primitives
(`shape=rectangle` nodes) in that export are the nodes not yet evaluated. Each is counted once,
because an exported graph is evaluated right after. That is `graph_nodes`. A call of an
`mx.compile`d function replays its whole traced graph from C++; `python_nodes` counts each such
call as one node (the nodes it adds, measured around the call, are taken out): the nodes Python
builds op by op.
"""

from __future__ import annotations

import collections
import io
import json
import re
import resource
import sys
import time

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

# ------------------------------------------------------------------------------------------------
# Graph node counting


def _arrays(obj, seen: set[int], out: list) -> None:
    """Appends the mx arrays reachable from `obj` (lists, dicts, plain objects; not modules)."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, mx.array):
        out.append(obj)
    elif isinstance(obj, nn.Module):
        return  # weights: evaluated before the step
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            _arrays(x, seen, out)
    elif isinstance(obj, dict):
        for x in obj.values():
            _arrays(x, seen, out)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type) and not callable(obj):
        for x in vars(obj).values():
            _arrays(x, seen, out)


def unevaluated_nodes(*roots) -> int:
    """Primitives not yet evaluated in the graphs of the arrays reachable from `roots`."""
    return sum(unevaluated_primitives(*roots).values())


def unevaluated_primitives(*roots) -> collections.Counter:
    """`unevaluated_nodes` by primitive name (fused elementwise nodes as `Compiled...`)."""
    arrays: list = []
    seen: set[int] = set()
    for r in roots:
        _arrays(r, seen, arrays)
    if not arrays:
        return collections.Counter()
    f = io.StringIO()
    mx.export_to_dot(f, *arrays)
    return collections.Counter(re.findall(r'label ="([^"]*)", shape=rectangle', f.getvalue()))


_ACTIVE: list["NodeCounter"] = []


def count_compiled_calls() -> None:
    """Makes every function compiled from now on report, while a `NodeCounter` is active, how
    many nodes each call added to the graph (call before the code under test is imported)."""
    compile_ = mx.compile

    def compile_counted(fn, *args, **kwargs):
        compiled = compile_(fn, *args, **kwargs)

        def call(*a, **k):
            if not _ACTIVE:
                return compiled(*a, **k)
            before = unevaluated_nodes(list(a), k)
            out = compiled(*a, **k)
            _ACTIVE[-1].compiled_nodes += unevaluated_nodes(list(a), k, out) - before
            _ACTIVE[-1].compiled_calls += 1
            return out

        return call

    mx.compile = compile_counted


class NodeCounter:
    """While active, counts the nodes of every graph evaluated through the usual entry points."""

    _METHODS = ("item", "tolist", "__bool__", "__int__", "__float__")

    def __init__(self) -> None:
        self.nodes = 0
        self.compiled_nodes = 0
        self.compiled_calls = 0
        self._saved: dict[str, object] = {}

    @property
    def python_nodes(self) -> int:
        return self.nodes - self.compiled_nodes + self.compiled_calls

    def _wrap(self, fn):
        def counted(*args, **kwargs):
            self.nodes += unevaluated_nodes(list(args), kwargs)
            return fn(*args, **kwargs)

        return counted

    def __enter__(self) -> "NodeCounter":
        for name in ("eval", "async_eval"):
            self._saved[name] = getattr(mx, name)
            setattr(mx, name, self._wrap(self._saved[name]))
        for name in self._METHODS:
            self._saved["array." + name] = getattr(mx.array, name)
            setattr(mx.array, name, self._wrap(getattr(mx.array, name)))
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)
        for name, fn in self._saved.items():
            if name.startswith("array."):
                setattr(mx.array, name[6:], fn)
            else:
                setattr(mx, name, fn)


# ------------------------------------------------------------------------------------------------
# Shared measurement helpers


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def timed(fn, n: int, warmup: int = 2, budget_s: float | None = None) -> list[float]:
    """Milliseconds of `n` calls of `fn` (which must evaluate what it builds), after `warmup` calls;
    with `budget_s`, fewer once that many seconds are spent (at least 3 calls)."""
    for _ in range(warmup):
        fn()
    out: list[float] = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - start))
        if budget_s is not None and len(out) >= 3 and sum(out) > 1000 * budget_s:
            break
    return out


def memory() -> dict:
    """Peak resident set (MB, ru_maxrss) and MLX's peak allocation (MB) of this process so far."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    peak = getattr(mx, "get_peak_memory", None)
    return {"rss_mb": rss_mb, "mlx_peak_mb": peak() / 2**20 if peak else None}


def mlx_quantize(model, group_size: int, bits: int, predicate) -> None:
    """MLX's own quantization (`nn.quantize`), as Kyutai's package uses it."""
    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=predicate)


def prepare(model, args: dict, quantize=mlx_quantize) -> dict:
    """Casts and quantizes `model` as asked (`quantize(model, group_size, bits, predicate)`: each
    side's own quantization), evaluates its weights; returns what it did. Layers
    whose input width the group size does not divide (micro's 176-wide feed-forward output) stay
    unquantized, on both sides alike. Each weight is evaluated alone, so that neither side's peak
    memory holds several fp32 random initialisations at once (an artefact of random weights: a
    checkpoint is loaded in its own dtype); nor are freed initialisations kept in MLX's buffer cache."""
    limit = mx.set_cache_limit(0)
    model.set_dtype(getattr(mx, args["dtype"]))
    _eval_each(model)
    kept = []
    if args["bits"]:
        group = args["group_size"]

        def quantizable(path: str, m) -> bool:
            if not hasattr(m, "to_quantized"):
                return False
            if m.weight.shape[-1] % group:
                kept.append(path)
                return False
            return True

        quantize(model, group, args["bits"], quantizable)
        _eval_each(model)
    mx.set_cache_limit(limit)
    return {"param_bytes": sum(v.nbytes for _, v in tree_flatten(model.parameters())), "unquantized_layers": len(kept)}


def _eval_each(model) -> None:
    for _, v in tree_flatten(model.parameters()):
        mx.eval(v)


def weights_read_bytes(model) -> int:
    """Bytes of weights one step reads: all parameters except embedding tables (a step reads one
    row of each, which is left out)."""
    total = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    tables = 0
    for _, m in model.named_modules():
        if isinstance(m, (nn.Embedding, nn.QuantizedEmbedding)):
            tables += sum(v.nbytes for _, v in tree_flatten(m.parameters()))
    return total - tables


def run_steps(step, state_roots, args: dict) -> dict:
    """Times `step` (warm-up first), counts one steady-state step's nodes, reads peak memory."""
    times = timed(step, args["steps"], args["warmup"])
    with NodeCounter() as counter:
        out = step(count=True)
        counter.nodes += unevaluated_nodes(out, *state_roots())
    mx.eval(out, *[a for r in state_roots() for a in _flat(r)])
    return {"step_ms": times, "graph_nodes": counter.nodes, "python_nodes": counter.python_nodes,
            "compiled_calls": counter.compiled_calls, **memory()}


def _flat(root) -> list:
    arrays: list = []
    _arrays(root, set(), arrays)
    return arrays


def time_mimi(mimi_cls, cfg, n: int, num_codebooks: int) -> dict:
    """Encode and decode of one 80 ms frame by an MLX Mimi with random weights."""
    mimi = mimi_cls(cfg)
    mx.eval(mimi.parameters())
    pcm = mx.zeros((1, 1, 1920), dtype=mx.float32)
    codes = mx.zeros((1, num_codebooks, 1), dtype=mx.int32)
    enc = timed(lambda: mx.eval(mimi.encode_step(pcm)), n)
    dec = timed(lambda: mx.eval(mimi.decode_step(codes)), n)
    return {"mimi_encode": _median(enc), "mimi_decode": _median(dec)}


# ------------------------------------------------------------------------------------------------
# Ours


def ours(args: dict) -> dict:
    import inspect

    from moshi_mlx.config import LmConfig, MimiConfig
    from moshi_mlx.generate import LmGen
    from moshi_mlx.models.lm import Lm
    from moshi_mlx.modules.quantized import quantize_modules

    after_imports = memory()["rss_mb"]
    model = Lm(LmConfig.from_kyutai_json(args["config"]))
    prepared = prepare(model, args, quantize_modules)
    mx.random.seed(0)
    kwargs = {}
    if args.get("compiled") is not None:
        if "compiled" not in inspect.signature(LmGen).parameters:
            raise SystemExit("this LmGen has no `compiled` switch")
        kwargs["compiled"] = args["compiled"]
    gen = LmGen(model, **kwargs)  # global random state, as Kyutai's samplers use
    cfg = model.cfg
    user = mx.zeros((1, cfg.n_q - cfg.dep_q), dtype=mx.int32)

    def step(count: bool = False):
        out = gen.step(user)
        if count:
            return out
        if out is not None:
            out.tolist()  # read back, as Kyutai's side reads its text token
        else:
            mx.eval(gen.tokens)

    result = run_steps(step, lambda: [gen], args)
    result["rss_after_imports_mb"] = after_imports
    result.update(prepared)
    result["weights_read_bytes"] = weights_read_bytes(model)
    result["module"] = inspect.getfile(LmGen)

    # Components, each alone between evaluation barriers.
    n = args["component_steps"]
    cache = model.make_cache()
    tokens = model.initial_tokens(1)
    hidden, text_logits = model.step(tokens, cache)
    mx.eval(hidden, text_logits)
    comp = {"temporal": _median(timed(lambda: mx.eval(model.step(tokens, cache)), n))}
    dcache = model.make_depformer_cache()
    prev = mx.zeros((1,), dtype=mx.int32)

    def depformer():
        for c in dcache:
            c.reset()
        logits = [model.depformer_step(k, prev, hidden, dcache) for k in range(cfg.dep_q)]
        mx.eval(logits)
        return logits

    comp["depformer"] = _median(timed(depformer, n))
    dlogits = depformer()
    text_s, audio_s = gen.text_sampler, gen.audio_sampler

    def sampling():
        toks = [text_s(text_logits[:, 0].astype(mx.float32), None)]
        toks += [audio_s(lg.astype(mx.float32), None) for lg in dlogits]
        mx.eval(toks)

    comp["sampling"] = _median(timed(sampling, n))
    if args["mimi"]:  # imported here: Mimi's modules (numpy) are no part of the LM's memory
        from moshi_mlx.models.mimi import Mimi

        comp.update(time_mimi(Mimi, MimiConfig.mimi_202407(num_codebooks=cfg.dep_q), n, cfg.dep_q))
    result["components_ms"] = comp
    return result


# ------------------------------------------------------------------------------------------------
# Kyutai's moshi_mlx 0.3.0

KYUTAI_PACKAGE = "moshi_mlx"  # Kyutai's import name, the same as ours


def kyutai(args: dict) -> dict:
    import importlib

    # Kyutai's package, by name: it is not ours (ours is kept off this process's path).
    package = importlib.import_module(KYUTAI_PACKAGE)
    try:
        models = importlib.import_module(KYUTAI_PACKAGE + ".models")
        utils = importlib.import_module(KYUTAI_PACKAGE + ".utils")
        models.LmGen, utils.Sampler  # noqa: B018
    except (ImportError, AttributeError):
        raise SystemExit(f"{package.__file__} is not Kyutai's moshi_mlx 0.3.0 (no models.LmGen, utils.Sampler)")
    after_imports = memory()["rss_mb"]
    cfg = models.LmConfig.from_config_dict(args["config"])
    model = models.Lm(cfg)
    prepared = prepare(model, args)
    text_sampler = utils.Sampler(temp=0.7, top_k=25)
    audio_sampler = utils.Sampler(temp=0.8, top_k=250)
    total = args["warmup"] + args["steps"] + 1
    gen = models.LmGen(model=model, max_steps=total + 5, text_sampler=text_sampler, audio_sampler=audio_sampler)
    user = mx.zeros((1, cfg.other_codebooks), dtype=mx.int32)

    def step(count: bool = False):
        text = gen.step(user)
        if count:
            return [text, gen.last_audio_tokens()]
        text[0].item()
        audio = gen.last_audio_tokens()
        if audio is not None:
            mx.eval(audio)

    result = run_steps(step, lambda: [gen, model.transformer_cache, model.depformer_cache], args)
    result["module"] = package.__file__
    result["rss_after_imports_mb"] = after_imports
    result.update(prepared)

    n = args["component_steps"]
    cache = model.transformer.make_rot_cache()
    text_tok = mx.full((1, 1), cfg.text_out_vocab_size, dtype=mx.int32)
    audio_toks = [mx.array([[cfg.audio_padding_token]]) for _ in model.audio_embs]

    def temporal():
        xs = model.text_emb(text_tok)
        for tok, emb in zip(audio_toks, model.audio_embs):
            xs = xs + emb(tok).transpose(1, 0, 2)
        out = model.out_norm(model.transformer(xs, cache=cache))
        logits = model.text_linear(out)
        mx.eval(out, logits)
        return out, logits

    hidden, text_logits = temporal()
    comp = {"temporal": _median(timed(temporal, n))}
    prev = mx.zeros((1, 1), dtype=mx.int32)

    def depformer():
        for c in model.depformer_cache:
            c.reset()
        logits = []
        for sl in model.depformer.slices:
            xs = sl.linear_in(hidden) + sl.emb(prev)
            xs = sl.transformer(xs, cache=model.depformer_cache)
            logits.append(sl.linear_out(xs))
        mx.eval(logits)
        return logits

    comp["depformer"] = _median(timed(depformer, n))
    dlogits = depformer()

    def sampling():
        toks = [text_sampler(text_logits)[0]] + [audio_sampler(lg)[0] for lg in dlogits]
        mx.eval(toks)

    comp["sampling"] = _median(timed(sampling, n))
    if args["mimi"]:
        mimi = importlib.import_module(KYUTAI_PACKAGE + ".models.mimi")
        ncb = cfg.depformer.num_slices
        comp.update(time_mimi(mimi.Mimi, mimi.mimi_202407(32), n, ncb))
    result["components_ms"] = comp
    return result


# ------------------------------------------------------------------------------------------------
# Bandwidth probe


def bandwidth(args: dict) -> dict:
    """GB/s of a plain matrix-vector product over `bytes` of weights (at most 1 GiB: far past any
    cache, and one kernel launch of a 7B's whole weights is too large for CUDA) in the same
    dtype/quantization; quantized, as `quantized_product` computes it (on the CPU, MLX's product
    of bf16 rows accumulated in fp32, several times faster than in bf16); unquantized, the faster of the two weight layouts (`[out, in]`, as
    `nn.Linear` stores it, and row-major `[in, out]`, which the CPU's fp32 BLAS reads faster). On
    the CPU, also the product split by output rows across its cores (one stream each, as ours
    splits large products) when that is faster."""
    from moshi_mlx.models.products import cpu_cores, cpu_streams  # runs in our side's environment
    from moshi_mlx.modules.quantized import quantized_product

    dtype = getattr(mx, args["dtype"])
    bits, group = args["bits"], args["group_size"]
    read = min(args["bytes"], 2**30)
    cols = 4096 if read >= 2**26 else 1024
    per_row = cols * (bits / 8 + 2 * 2 / group if bits else dtype.size)  # packed + scales/biases
    rows = max(group or 1, int(read / per_row) // 64 * 64 or 64)
    w = mx.random.normal((rows, cols), dtype=dtype)
    x = mx.random.normal((1, cols), dtype=dtype)
    cores = cpu_cores() if mx.default_device().type == mx.cpu else 1
    on_cpu = cores > 1  # then also the product split by rows across the cores, one stream each
    blocks = [(i * rows // cores, (i + 1) * rows // cores, s) for i, s in enumerate(cpu_streams(cores))]
    if bits:
        wq, scales, biases = mx.quantize(w, group_size=group, bits=bits)
        del w
        mx.eval(wq, scales, biases)
        nbytes = wq.nbytes + scales.nbytes + biases.nbytes

        def qmm(a: int, b: int, s=None) -> mx.array:
            return quantized_product(x, wq[a:b], scales[a:b], biases[a:b], group, bits, stream=s)

        products = [lambda: mx.eval(qmm(0, rows))]
        if on_cpu:
            products.append(lambda: mx.eval([qmm(a, b, s) for a, b, s in blocks]))
    else:
        mx.eval(w)
        nbytes = w.nbytes
        xr = mx.random.normal((1, rows), dtype=dtype)
        products = [lambda: mx.eval(x @ w.T), lambda: mx.eval(xr @ w)]
        if on_cpu:
            products.append(lambda: mx.eval([mx.matmul(x, w[a:b].T, stream=s) for a, b, s in blocks]))

    # CPU q8/q4 products of 1 GiB take seconds
    ms = min(_median(timed(product, args["steps"], 1, budget_s=5.0)) for product in products)
    return {"bytes": nbytes, "ms": ms, "gb_per_s": nbytes / ms / 1e6}


def main() -> None:
    args = json.loads(sys.argv[1])
    count_compiled_calls()
    side = {"ours": ours, "kyutai": kyutai, "bandwidth": bandwidth}[args["side"]]
    print(json.dumps(side(args)))


if __name__ == "__main__":
    main()
