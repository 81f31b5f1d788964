"""Building a run's calibration set from its :class:`~prunestudio.core.config.CalibConfig`."""

from __future__ import annotations

import time
from typing import Callable, Generator

from ..calib.calibset import CalibrationSet
from ..config import CalibConfig
from ..events import Event, PhaseDone, PhaseStarted
from ..model.loading import LoadedModel
from .checks import check_seqlen
from .load import place_model

StopFn = Callable[[], bool]


def _never() -> bool:
    return False


def build_calibration(loaded: LoadedModel, cal: CalibConfig,
                      should_stop: StopFn = _never) -> Generator[Event, None, CalibrationSet]:
    """Calibration set for ``cal``: self-generated, sampled from text, or a saved set."""
    check_seqlen(loaded, cal.seqlen, "calibration")
    if cal.is_selfgen:
        from ..calib.selfgen import GenerationSettings, iter_generate
        from ..calib.textsources import iter_texts

        # windows protocol: n samples before filtering, so that nsamples remain; paper protocol:
        # n is the number of windows cut from the joined samples
        n = cal.nsamples if cal.drop_top == 0 or cal.protocol == "paper" else _n_before_filter(cal.nsamples,
                                                                                                cal.drop_top)
        settings = GenerationSettings(
            n=n, seqlen=cal.seqlen, prefix_tokens=cal.prefix_tokens, temperature=cal.temperature,
            top_p=cal.top_p, top_k=cal.top_k, repetition_penalty=cal.repetition_penalty,
            drop_top=cal.drop_top, seed=cal.seed, protocol=cal.protocol)
        prefixes = iter_texts(cal.prefix_source) if cal.prefix_source else None
        place_model(loaded)
        cs = yield from iter_generate(loaded.model, loaded.tokenizer, settings, prefixes,
                                      should_stop=should_stop, source_name=cal.source)
        return cs
    from ..calib.sampling import sample_calibration

    t0 = time.perf_counter()
    yield PhaseStarted("calibrate", total=1)
    cs = sample_calibration(loaded.tokenizer, cal.source, cal.nsamples, cal.seqlen, cal.seed,
                            cal.mode, should_stop=should_stop)
    yield PhaseDone("calibrate", time.perf_counter() - t0)
    return cs


def _n_before_filter(n_keep: int, drop: float) -> int:
    """Generate enough that ``n_keep`` remain after dropping the ``drop`` fraction (floor)."""
    n = n_keep
    while n - int(n * drop) < n_keep:
        n += 1
    return n
