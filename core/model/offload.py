"""Where the decoder blocks live while a model is pruned: offload ``none``, ``cpu`` or ``disk``.

* ``none``: the whole model sits on the compute device.
* ``cpu`` (default): the model is in host memory; the pipeline moves one block at a time to the
  compute device and back (see :mod:`pipeline`).
* ``disk``: the model is never fully in memory. :func:`load_model_lazy` builds it on the meta
  device, loads only what lies outside the decoder blocks (embeddings, final norm, output head)
  and attaches a :class:`DiskBlockStore`. The store materialises a block from the model's
  safetensors files (memory-mapped with ``safetensors.safe_open``) when it is needed, on the
  device it is needed on, and turns it back into meta tensors afterwards. A pruned block is
  written to its own safetensors file in a work folder and read from there from then on, so peak
  host memory is about one block plus the calibration activations plus the non-block weights, and
  a model larger than RAM (or than GPU memory) can be pruned.

Any forward pass works on such a model (evaluation, generation: slowly, each block is read when
it runs): forward hooks on every block acquire and release it. :func:`save_lazy_model` exports
it as an ordinary Hugging Face folder without ever holding more than one block.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import ModelLoadError, PruneStudioError
from . import architecture, kinds
from .compact import read_compact, write_compact
from .meta_buffers import rebuild_meta_buffers

__all__ = ["DiskBlockStore", "load_model_lazy", "store_of", "save_lazy_model", "place_outside"]

STORE_ATTR = "_prunestudio_block_store"


def store_of(model: Any) -> "DiskBlockStore | None":
    """The disk store of a model loaded with offload ``disk``, else None."""
    return getattr(model, STORE_ATTR, None)


def _set_tensor(root: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter or buffer ``name`` of ``root`` by ``value`` (no copy into the old one)."""
    mod_name, _, leaf = name.rpartition(".")
    mod = root.get_submodule(mod_name) if mod_name else root
    if leaf in mod._parameters:
        mod._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    elif leaf in mod._buffers:
        mod._buffers[leaf] = value
    else:  # pragma: no cover - names come from state_dict()
        raise KeyError(name)


def _get_tensor(root: nn.Module, name: str) -> torch.Tensor:
    mod_name, _, leaf = name.rpartition(".")
    mod = root.get_submodule(mod_name) if mod_name else root
    t = mod._parameters.get(leaf)
    return t if t is not None else mod._buffers[leaf]


class _Files:
    """Open safetensors files (memory-mapped), by path."""

    def __init__(self) -> None:
        self._open: dict[Path, Any] = {}

    def get(self, path: Path, key: str) -> torch.Tensor:
        from safetensors import safe_open

        f = self._open.get(path)
        if f is None:
            f = safe_open(str(path), framework="pt", device="cpu")
            self._open[path] = f
        return f.get_tensor(key)

    def close(self) -> None:
        self._open.clear()


def _convert(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t


class DiskBlockStore:
    """Decoder blocks kept on disk; one materialised at a time (reference-counted).

    ``sources`` maps every block tensor's full name to ``(safetensors file, key)``. Pruned blocks
    are written to ``workdir`` (``block-00007.safetensors``) by :meth:`release` with ``save=True``.
    """

    def __init__(self, model: nn.Module, blocks_path: str, blocks: nn.ModuleList,
                 sources: dict[str, tuple[Path, str]], dtype: torch.dtype, workdir: Path | None = None) -> None:
        self.blocks_path, self.blocks, self.dtype = blocks_path, blocks, dtype
        self.sources = sources
        self._files = _Files()
        self._own_workdir = workdir is None
        self._workdir = Path(workdir) if workdir is not None else None
        self.pruned: dict[int, Path] = {}
        n = len(blocks)
        self._refs = [0] * n
        self._hook_depth = [0] * n
        self.default_device = torch.device("cpu")
        self.loads = 0  # how many times a block was read (for tests and benchmarks)
        # module-relative tensor names of one block (params and persistent buffers)
        self._names = [[k for k in b.state_dict(keep_vars=True)] for b in blocks]
        self._meta: list[dict[str, tuple[torch.Size, torch.dtype]]] = [
            {k: (v.shape, v.dtype) for k, v in b.state_dict(keep_vars=True).items()} for b in blocks]
        for i, block in enumerate(blocks):
            block.register_forward_pre_hook(self._pre_hook(i), with_kwargs=True)
            block.register_forward_hook(self._post_hook(i), with_kwargs=True, always_call=True)
        self._finalizer = weakref.finalize(self, _cleanup, self._files, self._workdir if self._own_workdir else None)

    # -- work folder ------------------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            from .demo import cache_root

            base = cache_root() / "offload"
            base.mkdir(parents=True, exist_ok=True)
            self._workdir = Path(tempfile.mkdtemp(prefix="pruned-blocks-", dir=base))
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _cleanup, self._files, self._workdir)
        else:
            self._workdir.mkdir(parents=True, exist_ok=True)
        return self._workdir

    def close(self) -> None:
        """Forget open files and remove a temporary work folder (the pruned blocks go with it)."""
        self._finalizer()

    # -- hooks: any forward pass acquires the block it runs --------------------------------------
    def _pre_hook(self, i: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            dev = next((a.device for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)),
                       self.default_device)
            self.acquire(i, dev)
            self._hook_depth[i] += 1
            return None

        return hook

    def _post_hook(self, i: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if self._hook_depth[i] > 0:  # not when an earlier pre-hook (capture) stopped the call
                self._hook_depth[i] -= 1
                self.release(i)
            return None

        return hook

    # -- materialising ---------------------------------------------------------------------------
    def loaded_blocks(self) -> list[int]:
        return [i for i, r in enumerate(self._refs) if r > 0]

    def read_block(self, i: int) -> dict[str, torch.Tensor]:
        """Block ``i``'s tensors on the CPU (pruned version when there is one), module-relative names."""
        out: dict[str, torch.Tensor] = {}
        # Files are opened for this read only. safetensors' tensors are views of the file's memory
        # map: a handle kept open would keep every page ever read mapped (and counted as resident
        # memory) until the end; this way a block's pages go when the block is released.
        files = _Files()
        try:
            if i in self.pruned:
                out.update(read_compact(self.pruned[i], self._names[i]))
            else:
                prefix = f"{self.blocks_path}.{i}."
                for rel in self._names[i]:
                    path, key = self.sources[prefix + rel]
                    out[rel] = _convert(files.get(path, key), self.dtype)
        finally:
            files.close()
        return out

    def acquire(self, i: int, device: torch.device | str) -> nn.Module:
        """Make block ``i`` real on ``device`` (no-op but counted when it already is)."""
        if self._refs[i] == 0:
            device = torch.device(device)
            block = self.blocks[i]
            with torch.inference_mode(False), torch.no_grad():
                for rel, t in self.read_block(i).items():
                    _set_tensor(block, rel, t.to(device, non_blocking=False))
            self.loads += 1
        self._refs[i] += 1
        return self.blocks[i]

    def release(self, i: int, save: bool = False) -> None:
        """Drop one reference to block ``i``; ``save`` writes its current tensors as its new source.

        When the last reference goes, the block's tensors become meta tensors again.
        """
        if self._refs[i] <= 0:
            return
        if save:
            self._write(i)
        self._refs[i] -= 1
        if self._refs[i] == 0:
            block = self.blocks[i]
            for rel, (shape, dtype) in self._meta[i].items():
                _set_tensor(block, rel, torch.empty(shape, dtype=dtype, device="meta"))

    def _write(self, i: int) -> None:

        block = self.blocks[i]
        tensors: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for rel in self._names[i]:
            t = _get_tensor(block, rel).detach().to("cpu").contiguous()
            if t.data_ptr() in seen:
                t = t.clone()
            seen.add(t.data_ptr())
            tensors[rel] = t
        path = self.workdir / f"block-{i:05d}.safetensors"
        write_compact(path, tensors)
        self.pruned[i] = path

    def pruned_bytes(self, sparsity: float) -> int:
        """About how many bytes the pruned blocks take in the work folder at ``sparsity``
        (matrices stored compactly: kept values plus one bit per weight)."""
        total = 0
        for meta in self._meta:
            for shape, dtype in meta.values():
                numel = shape.numel()
                size = (self.dtype if dtype.is_floating_point else dtype).itemsize
                if len(shape) >= 2 and dtype.is_floating_point:
                    total += min(numel * size, int(numel * size * (1 - sparsity)) + numel // 8)
                else:
                    total += numel * size
        return total

    def check_space(self, sparsity: float) -> None:
        """Refuse, in one sentence, a run whose pruned blocks would not fit where they are written."""
        from .memory import format_bytes

        need = self.pruned_bytes(sparsity) - sum(p.stat().st_size for p in self.pruned.values() if p.exists())
        folder = self.workdir
        free = shutil.disk_usage(folder).free
        if free < need + _SPACE_MARGIN:
            raise PruneStudioError(
                f"Disk offload writes the pruned blocks to {folder}, which needs about {format_bytes(need)} "
                f"there, but only {format_bytes(free)} is free.",
                hint="Free some space or choose another offload folder (--offload-dir).")

    def block_state_items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(full name, CPU tensor)`` of every block tensor, one block at a time (for export)."""
        for i in range(len(self.blocks)):
            for rel, t in self.read_block(i).items():
                yield f"{self.blocks_path}.{i}.{rel}", t


_SPACE_MARGIN = 256 * 2**20


def _cleanup(files: _Files, workdir: Path | None) -> None:
    files.close()
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
def _index_safetensors(folder: Path) -> dict[str, Path]:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(
            f"Disk offload reads safetensors files, and {folder.name} has none.",
            hint="Convert the model to safetensors, or use offload cpu.")
    where: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as h:
            for k in h.keys():
                where[k] = f
    return where


def _file_key(name: str, where: dict[str, Path], base_prefix: str) -> str | None:
    if name in where:
        return name
    if base_prefix and name.startswith(base_prefix + ".") and name[len(base_prefix) + 1:] in where:
        return name[len(base_prefix) + 1:]
    if base_prefix and f"{base_prefix}.{name}" in where:
        return f"{base_prefix}.{name}"
    return None


def load_model_lazy(folder: str | os.PathLike, dtype: torch.dtype = torch.float32,
                    trust_remote_code: bool = False, workdir: str | os.PathLike | None = None) -> nn.Module:
    """A causal LM whose decoder blocks stay on disk until used (offload ``disk``).

    Everything outside the blocks is loaded into host memory in ``dtype``; the blocks are meta
    tensors backed by a :class:`DiskBlockStore` (see :func:`store_of`). Raises
    :class:`ModelLoadError` when a block tensor is missing from the files (e.g. checkpoints whose
    tensor names transformers converts while loading): use offload ``cpu`` for those.
    """
    from transformers import AutoConfig

    folder = Path(folder)
    where = _index_safetensors(folder)
    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = kinds.auto_class(config).from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises many types
        raise ModelLoadError(f"Could not build the model in {folder.name} for disk offload: {e}") from e
    path, blocks = architecture.find_blocks(model)
    prefix = path + "."
    base_prefix = getattr(model, "base_model_prefix", "") or ""
    names = list(model.state_dict(keep_vars=True).keys())
    files = _Files()
    sources: dict[str, tuple[Path, str]] = {}
    missing_blocks: list[str] = []
    with torch.no_grad():
        for name in names:
            key = _file_key(name, where, base_prefix)
            if name.startswith(prefix):
                if key is None:
                    missing_blocks.append(name)
                else:
                    sources[name] = (where[key], key)
            elif key is not None:
                _set_tensor(model, name, _convert(files.get(where[key], key), dtype))
    files.close()
    if missing_blocks:
        raise ModelLoadError(
            f"Disk offload: the files in {folder.name} have no tensor named {missing_blocks[0]} "
            f"({len(missing_blocks)} block tensors not found under their model names).",
            hint="This checkpoint needs its tensor names converted while loading; use offload cpu.")
    if getattr(model.config, "tie_word_embeddings", False) or getattr(getattr(model.config, "get_text_config", lambda: None)(), "tie_word_embeddings", False):
        model.tie_weights()
    rebuild_meta_buffers(model)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta and not name.startswith(prefix):
            raise ModelLoadError(f"Disk offload: no tensor for {name} in {folder.name}.")
    for bi, block in enumerate(blocks):
        for bname, buf in block.named_buffers():
            if buf.is_meta and f"{prefix}{bi}.{bname}" not in sources:
                raise ModelLoadError(f"Disk offload cannot rebuild the buffer {bname} of this architecture's "
                                     "blocks; use offload cpu.")
    store = DiskBlockStore(model, path, blocks, sources, dtype, Path(workdir) if workdir else None)
    setattr(model, STORE_ATTR, store)
    model.eval()
    return model


def move_outside(model: nn.Module, blocks_path: str, device: torch.device) -> dict[str, torch.device]:
    """Move every parameter and buffer not inside the blocks to ``device``; return where they were."""
    prefix = blocks_path + "."
    where: dict[str, torch.device] = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name.startswith(prefix):
            continue
        where[name] = t.device
        if t.device != device:
            t.data = t.data.to(device)
    return where


def restore_outside(model: nn.Module, where: dict[str, torch.device]) -> None:
    """Undo :func:`move_outside`: every tensor back on the device it was on."""
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    for name, dev in where.items():
        t = tensors.get(name)
        if t is not None and t.device != dev:
            t.data = t.data.to(dev)


def place_outside(model: nn.Module, device: torch.device) -> None:
    """Put everything outside the blocks on ``device``; blocks will be materialised there."""
    store = store_of(model)
    if store is None:
        model.to(device)
        return
    move_outside(model, store.blocks_path, device)
    store.default_device = device


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------
def save_lazy_model(model: nn.Module, folder: str | os.PathLike, max_shard_bytes: int = 2 * 2**30) -> None:
    """Write a disk-offloaded model as a Hugging Face folder (config + sharded safetensors).

    At most one block (plus one shard being filled) is in memory at a time. Tensors sharing
    storage outside the blocks (tied embeddings) are written once, as ``save_pretrained`` does.
    """
    from safetensors.torch import save_file

    store = store_of(model)
    if store is None:
        raise PruneStudioError("save_lazy_model needs a model loaded with disk offload.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        try:
            gen.save_pretrained(folder)
        except Exception:  # noqa: BLE001 - a generation config is optional
            pass
    prefix = store.blocks_path + "."

    def outside() -> Iterator[tuple[str, torch.Tensor]]:
        seen: set[int] = set()
        persistent = set(model.state_dict(keep_vars=True).keys())
        for name in persistent:
            if name.startswith(prefix):
                continue
            t = _get_tensor(model, name).detach()
            if t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            yield name, t.to("cpu").contiguous()

    shards: list[list[str]] = []
    weight_map: dict[str, str] = {}
    total = 0
    current: dict[str, torch.Tensor] = {}
    size = 0
    tmp_names: list[Path] = []

    def flush() -> None:
        nonlocal current, size
        if not current:
            return
        p = folder / f".shard-{len(tmp_names):05d}.tmp"
        save_file(current, str(p), metadata={"format": "pt"})
        tmp_names.append(p)
        shards.append(list(current))
        current, size = {}, 0

    def items() -> Iterator[tuple[str, torch.Tensor]]:
        yield from outside()
        yield from store.block_state_items()

    for name, t in items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > max_shard_bytes:
            flush()
        current[name] = t
        size += nbytes
        total += nbytes
    flush()
    if len(tmp_names) == 1:
        os.replace(tmp_names[0], folder / "model.safetensors")
        return
    n = len(tmp_names)
    for k, (p, keys) in enumerate(zip(tmp_names, shards)):
        final = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        os.replace(p, folder / final)
        for key in keys:
            weight_map[key] = final
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n",
        encoding="utf-8")
