"""Loading the model a run works on: where it comes from, how its blocks are held, and the events
that announce it (the demo model's download, "Loaded ...", the slow-bf16 warning)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Generator

from ..config import OFFLOAD_MODES, Recipe
from ..errors import Cancelled, ConfigError
from ..events import Event, Message, PhaseDone, PhaseStarted
from ..model.devices import slow_dtype_warning
from ..model.loading import LoadedModel, load_model

StopFn = Callable[[], bool]


def _never() -> bool:
    return False


@dataclass(frozen=True)
class LoadArgs:
    """What to load and how: the model spec, the compute device and dtype, and the offload mode.

    ``offload`` is a :attr:`PruneConfig.offload_mode <prunestudio.core.config.PruneConfig.offload_mode>`
    (``none``, ``cpu`` or ``disk``); only ``disk`` changes the load itself: the decoder blocks stay in
    the model's safetensors files (pruned ones go to ``offload_dir``), so the model may exceed RAM.
    """

    spec: str
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    offload: str = "cpu"
    offload_dir: str | None = None

    def __post_init__(self) -> None:
        if self.offload not in OFFLOAD_MODES:
            raise ConfigError(f"Offload must be one of {', '.join(OFFLOAD_MODES)}, got '{self.offload}'.")

    @classmethod
    def of_recipe(cls, recipe: Recipe) -> "LoadArgs":
        """The load a recipe asks for (its model, device, dtype and its pruning's offload mode)."""
        return cls(recipe.model, recipe.device, recipe.dtype, recipe.trust_remote_code,
                   recipe.prune.offload_mode, recipe.prune.offload_dir)

    @property
    def on_disk(self) -> bool:
        return self.offload == "disk"


def held_on_disk(loaded: LoadedModel) -> bool:
    """Whether ``loaded`` keeps its blocks in files (loaded with disk offload)."""
    from ..model.offload import store_of

    return store_of(loaded.model) is not None


def iter_load(args: LoadArgs, should_stop: StopFn = _never) -> Generator[Event, None, LoadedModel]:
    """Load ``args`` (fetching a catalogue model first when it is asked for and missing), as events.

    Cancellable between the steps (``should_stop``): raises :class:`Cancelled`.
    """
    t0 = time.perf_counter()
    yield PhaseStarted("load", total=1)
    yield Message(f"Loading {args.spec} (device {args.device}, dtype {args.dtype}"
                  + (", blocks left on disk)" if args.on_disk else ")"))
    if should_stop():
        raise Cancelled()
    from ..model.catalog import CATALOG, iter_fetch_model

    if args.spec in CATALOG:  # demo or another catalogue model: fetched once, with progress, cancellable
        yield from iter_fetch_model(args.spec, should_stop=should_stop)
    loaded = load_model(args.spec, args.device, args.dtype, args.trust_remote_code, should_stop=should_stop,
                        offload=args.offload, offload_dir=args.offload_dir)
    yield PhaseDone("load", time.perf_counter() - t0)
    info = loaded.info
    yield Message(f"Loaded {loaded.name}: {info.get('architecture')}, {info.get('blocks')} blocks, "
                  f"{info.get('parameters', 0) / 1e6:.1f}M parameters, on {loaded.device}")
    if info.get("pruned_part"):  # a vision-language (multimodal) model: see model/kinds.py
        yield Message(f"{info.get('architecture')} is a {info.get('kind')} model: Prune Studio prunes its "
                      f"{info['pruned_part']}; calibration and evaluation use text only.")
    slow = slow_dtype_warning(loaded.device, loaded.dtype)
    if slow:
        yield Message(slow, "warning")
    return loaded


def place_model(loaded: LoadedModel) -> None:
    """Put the whole model on the compute device when it is not the CPU (generation, evaluation)."""
    if loaded.device.type != "cpu":
        from ..model.offload import place_outside

        place_outside(loaded.model, loaded.device)  # a disk-offloaded model keeps its blocks on disk
