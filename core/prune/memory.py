"""A rough, documented estimate of the memory a pruning run needs (no Qt, no model required).

The pipeline (see :mod:`pipeline`) keeps the whole model in host memory and moves one decoder
block at a time to the compute device. What it needs on top of the weights:

* **calibration activations**: the hidden states entering the current block for every sample,
  plus the block's outputs while they are replayed: ``nsamples * seqlen * hidden * dtype_bytes * 2``;
* **statistics** for the current block, float32, one accumulator per *distinct* module input
  (q/k/v share one input, gate/up share one), as the method declares (its ``StatsNeeds``): ``in``
  floats for squared norms (Wanda), two more for mean and variance (DSnoT), a Hessian of
  ``in * in`` floats (SparseGPT, and DSnoT on SparseGPT's mask); fused experts have one per expert
  and input (their routed tokens, and the activation their ``down_proj`` reads), so a SparseGPT
  run on an MoE block holds one Hessian per expert and input, plus one over all the block's tokens
  (``info["expert_counts"]``; the statistics of experts short of tokens, gathered on every token,
  come on top and are not counted);
* **one block's working set**: the block's weights, a float32 copy of the largest module plus its
  scores and mask while it is pruned (and, for a method that works with a Hessian, the damped
  copy, its factor and inverse), and one calibration batch going through the block
  (MLP intermediate and attention scores).

The GUI uses it to warn *before* a run that cannot fit. Nothing here is exact: module shapes are
taken from ``info["module_shapes"]`` (see :func:`module_shapes`) or guessed from the hidden size and
the prunable parameter count, shared-input grouping follows common module names (unknown names
count as distinct inputs, the larger estimate), and allocator overhead, fragmentation and framework
buffers are covered by a flat 10% margin. That margin holds when freed memory goes back to the
system at once, which a CPU run asks of the allocator when its working set is over half of the
memory available (:func:`host_memory_tight`); with more room it keeps freed blocks for reuse, which
is faster and may peak higher (a one-pass SparseGPT run on the demo model: 1.4x).
"""

from __future__ import annotations

from typing import Any

from ..config import PruneConfig
from ..model.memory import available_memory, format_bytes
from .methods import registry
from .needs import StatsNeeds

__all__ = ["estimate_run_memory", "one_pass_fits", "module_shapes"]

# modules that read the very same input tensor (the pipeline shares one accumulator for them)
_SHARED_INPUT_GROUPS = (
    ("q_proj", "k_proj", "v_proj"),
    ("query", "key", "value"),
    ("gate_proj", "up_proj"),
    ("w1", "w3"),
)
# modules whose input is the MLP's intermediate activation (wider than the hidden size)
_INTERMEDIATE_INPUT = ("down_proj", "fc2", "w2", "mlp.c_proj", "dense_4h_to_h")
_MARGIN = 0.10


def module_shapes(model: Any) -> dict[str, tuple[int, int]]:
    """``{relative name: (out_features, in_features)}`` of the blocks' prunable modules.

    Every block's modules, in first-seen order; where a name's shape differs between blocks (a
    hybrid's full-attention layers with wider heads) the largest is kept. On a model whose blocks
    differ in kind the statistics are then summed over the union of their modules: an upper bound.
    Optional: put the result in ``info["module_shapes"]`` to make the estimate exact on shapes.
    """
    from ..model import architecture

    lay = architecture.layout(model)
    shapes: dict[str, tuple[int, int]] = {}
    for bi, block in enumerate(lay.blocks):
        for name in lay.names_of(bi):
            shape = architecture.weight_shape(block, name)  # one expert's, for every expert's
            old = shapes.get(name)
            if old is None or shape[0] * shape[1] > old[0] * old[1]:
                shapes[name] = shape
    return shapes


def _guess_shapes(info: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Shapes from the facts in ``models.describe`` when the real shapes are not given.

    Every module is taken as ``hidden x hidden`` except the intermediate-input ones, whose
    ``in`` is solved from the per-block prunable parameter count (rounded up).
    """
    names = list(info.get("modules_per_block") or [])
    h = int(info.get("hidden_size") or 0)
    blocks = max(int(info.get("blocks") or 1), 1)
    per_block = int(info.get("prunable_parameters") or 0) / blocks
    if not names or h <= 0:
        return {}
    wide = [n for n in names if any(n.endswith(s) or s in n for s in _INTERMEDIATE_INPUT)]
    narrow = [n for n in names if n not in wide]
    mlp_up = [n for n in narrow if n.startswith(("mlp", "feed_forward")) or n.endswith(("fc1", "c_fc"))]
    # parameters left for the MLP once the attention-like modules are h*h each
    rest = max(per_block - h * h * (len(narrow) - len(mlp_up)), 0)
    n_mlp = len(mlp_up) + len(wide)
    inter = int(rest / (h * n_mlp)) + 1 if n_mlp else 4 * h
    inter = max(inter, h)
    shapes = {}
    for n in names:
        if n in wide:
            shapes[n] = (h, inter)
        elif n in mlp_up:
            shapes[n] = (inter, h)
        else:
            shapes[n] = (h, h)
    return shapes


def _distinct_inputs(shapes: dict[str, tuple[int, int]], copies: dict[str, int] | None = None) -> list[int]:
    """``in_features`` of each distinct module input (shared groups counted once); a name standing
    for every expert's matrix (``copies[name]`` experts) counts once per expert, and its experts
    module once more for the input of all its tokens (``core/prune/experts.py``)."""
    copies = copies or {}
    seen_groups: set[tuple[str, int]] = set()
    ins: list[int] = []
    all_tokens: set[str] = set()
    for name, (_out, n_in) in shapes.items():
        leaf = name.rsplit(".", 1)[-1]
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        group = next((g for g in _SHARED_INPUT_GROUPS if leaf in g), None)
        if group is not None:
            key = (parent + "|" + ",".join(group), n_in)
            if key in seen_groups:
                continue
            seen_groups.add(key)
        count = int(copies.get(name, 1))
        ins.extend([n_in] * count)
        if count > 1 and leaf != "down_proj" and parent not in all_tokens:
            all_tokens.add(parent)
            ins.append(n_in)
    return ins


def estimate_run_memory(
    info: dict[str, Any],
    nsamples: int,
    seqlen: int,
    method: str | PruneConfig,
    dtype_bytes: int,
    batch_size: int = 8,
    owl: bool = False,
    offload: str = "cpu",
    one_pass: bool = True,
) -> dict[str, int]:
    """Bytes a run needs, by part. ``info`` is ``LoadedModel.info`` (``models.describe``).

    ``method``: the run's :class:`PruneConfig`, or a method's name (with the default settings);
    what the method gathers and whether it works with a Hessian come from the method registry,
    for a refinement (DSnoT) together with the method whose mask it refines. ``owl``: OWL on top
    (a ``PruneConfig``'s own ``owl`` counts too).

    Returns ``weights`` (resident weights: the whole model, or with ``offload="disk"`` what lies
    outside the blocks plus the one block being pruned), ``activations``, ``statistics``,
    ``block`` (the working set of the block being pruned: one batch's forward intermediates and
    the temporaries of pruning its largest module), ``margin``, ``total`` (the sum), and
    ``device`` / ``host``: what must fit on the compute device (the block's weights, the
    weights outside the blocks, which stay on the device during the run, activations,
    statistics, working set; with ``offload="none"`` all weights) and in host memory when the
    compute device is the CPU (``total``). ``one_pass`` (``PruneConfig.one_pass``): every batch
    but the one computing waits inside the block, holding what it needs at the module it waits at.
    """
    cfg = method if isinstance(method, PruneConfig) else PruneConfig(method=(method or "wanda").lower())
    owl = owl or cfg.owl
    needs = registry.stats_needs(cfg)
    if needs is None and owl:
        needs = StatsNeeds(sq_norm=True)  # OWL scores every block with Wanda's norms
    hessian = registry.builds_hessian(cfg)
    params = int(info.get("parameters") or 0)
    blocks = max(int(info.get("blocks") or 1), 1)
    hidden = int(info.get("hidden_size") or 0)
    shapes = dict(info.get("module_shapes") or _guess_shapes(info))
    nsamples, seqlen, batch_size = max(int(nsamples), 0), max(int(seqlen), 0), max(int(batch_size), 1)

    prunable = int(info.get("prunable_parameters") or 0)
    block_params = prunable // blocks
    outside = max(params - prunable, 0)  # embeddings, output head, norms (norms are tiny)
    if offload == "disk":
        weights = (outside + block_params) * dtype_bytes
    else:
        weights = params * dtype_bytes
    needs_data = needs is not None
    # the hidden states entering the current block for every sample, and its outputs as they are
    # replayed (an upper bound: each batch's output replaces its input as soon as it is computed)
    activations = nsamples * seqlen * hidden * dtype_bytes * 2 if needs_data else 0

    ins = _distinct_inputs(shapes, info.get("expert_counts"))
    statistics = 0
    if needs is not None:
        statistics = sum(i * 4 * needs.vectors for i in ins)
        if needs.hessian:
            statistics += sum(i * i * 4 for i in ins)

    largest = max((o * i for o, i in shapes.values()), default=0)
    widest = max((max(o, i) for o, i in shapes.values()), default=4 * hidden)
    widest_in = max((i for _o, i in shapes.values()), default=hidden)
    batch = min(batch_size, nsamples) if needs_data else 0
    tokens = batch * seqlen
    # one batch through the block: three intermediate-width tensors alive in the MLP plus a few
    # hidden-width ones, and the float32 square of the widest module input (statistics hook)
    forward = tokens * (widest * 3 + hidden * 4) * dtype_bytes + (tokens * widest_in * 4 if needs_data else 0)
    counts = info.get("expert_counts") or {}
    k = int(info.get("experts_per_token") or 0)
    if counts and k and needs_data:
        # the model's own experts forward (the output pass) works on tokens x top-k rows: with
        # transformers' grouped kernels four [tokens*k, hidden] tensors are alive at its peak
        # (measured on a Qwen3-MoE block, bench/moe_prune.py)
        h = max((shapes[n][1] for n in counts if n.endswith(".gate_proj") or n.endswith(".up_proj")
                 if n in shapes), default=hidden)
        inter = max((shapes[n][1] for n in counts if n.endswith(".down_proj") if n in shapes), default=hidden)
        forward = max(forward, tokens * k * max(4 * h, h + 4 * inter) * dtype_bytes)
    if one_pass and needs_data and nsamples > batch:
        # one pass: the other batches wait at a module's hook; the worst is the MLP's output
        # projection, where each holds the intermediate-width input plus the residual and the MLP's
        # input (hidden width)
        forward += (nsamples - batch) * seqlen * (widest + 2 * hidden) * dtype_bytes
    # pruning the largest module: float32 weight copy, new weight, scores, top-k indices, mask
    prune_temps = largest * (4 + 4 + 4 + 4 + 1)
    if hessian:
        prune_temps += 3 * widest_in * widest_in * 4  # Hessian copy, its Cholesky factor, inverse
    block = forward + prune_temps

    subtotal = weights + activations + statistics + block
    margin = int(subtotal * _MARGIN)
    on_device_weights = (params if offload == "none" else outside + block_params) * dtype_bytes
    device = on_device_weights + activations + statistics + block
    device += int(device * _MARGIN)
    return {
        "weights": int(weights),
        "activations": int(activations),
        "statistics": int(statistics),
        "block": int(block),
        "margin": margin,
        "total": int(subtotal + margin),
        "device": int(device),
        "host": int(subtotal + margin),
    }


def one_pass_fits(info: dict[str, Any], nsamples: int, seqlen: int, method: str | PruneConfig, dtype_bytes: int,
                  batch_size: int, owl: bool, offload: str, device: str,
                  avail: dict[str, int | None] | None = None) -> tuple[bool, str]:
    """Whether one pass per block is expected to fit where the activations live, and if not, why.

    One pass keeps every batch's activations inside the block at once (see ``core/prune/lockstep.py``);
    when that is expected not to fit (90% of what is free: host memory on the CPU, the GPU's free
    memory on CUDA) but two passes would, the pipeline takes two passes. Unknown free memory: fits.
    """
    kw = dict(batch_size=batch_size, owl=owl, offload=offload)
    one = estimate_run_memory(info, nsamples, seqlen, method, dtype_bytes, one_pass=True, **kw)
    two = estimate_run_memory(info, nsamples, seqlen, method, dtype_bytes, one_pass=False, **kw)
    avail = avail if avail is not None else available_memory(device)
    if str(device).startswith("cuda"):
        free, need_one, need_two, where = avail.get("device_free"), one["device"], two["device"], str(device)
    else:  # the weights are in memory already: what matters is the rest
        free, where = avail.get("host_available"), "host memory"
        need_one, need_two = one["total"] - one["weights"], two["total"] - two["weights"]
    if free is None or need_one <= 0.9 * free or need_two > 0.9 * free:
        return True, ""
    return False, (f"One pass per block needs about {format_bytes(need_one)} of {where}, "
                   f"{format_bytes(free)} is free; two passes need {format_bytes(need_two)}.")


def host_memory_tight(info: dict[str, Any], nsamples: int, seqlen: int, method: str | PruneConfig, dtype_bytes: int,
                      batch_size: int, owl: bool, offload: str, one_pass: bool,
                      avail: dict[str, int | None] | None = None) -> bool:
    """Whether a CPU run's working set (what it needs besides the weights already loaded) is over
    half of the host memory available now. Then the pipeline has the allocator hand freed blocks
    back at once (:func:`~prunestudio.core.model.devices.limit_host_allocator_retention`), which
    costs time; otherwise freed blocks are kept for reuse. Unknown free memory: not tight."""
    est = estimate_run_memory(info, nsamples, seqlen, method, dtype_bytes, batch_size=batch_size, owl=owl,
                              offload=offload, one_pass=one_pass)
    free = (avail if avail is not None else available_memory("cpu")).get("host_available")
    return free is not None and est["total"] - est["weights"] > 0.5 * free
