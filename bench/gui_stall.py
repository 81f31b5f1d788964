"""How long does the GUI event loop stall while Prune Studio works? (target: < 100 ms)

Starts the real window offscreen, loads a model, builds a calibration set and runs a pruning run
through the widgets (as a user would), while a 10 ms QTimer records the actual interval between
its ticks. A stall is how much longer than 10 ms an interval took; it is what a user feels as a
frozen window. Prints worst / p99 / median stall per phase next to the target.

    python bench/gui_stall.py                      # random Llama, ~25M parameters, Wanda 50 %
    python bench/gui_stall.py --method sparsegpt --nsamples 64
    python bench/gui_stall.py --demo               # the demo model (downloaded once)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TARGET_MS = 100.0
TICK_MS = 10

WORDS = ("pruning removes weights that matter least calibration data decides which weights look "
         "important the model writes text and we keep samples it finds likely a quick brown fox jumps "
         "over the lazy dog numbers like one two three appear in text too").split()


def make_model_dir(root: Path, hidden: int, layers: int) -> Path:
    """A random Llama with a small BPE tokenizer, saved as a Hugging Face folder."""
    import random

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(400)]
    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=int(hidden * 2.6875),
                      num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
                      num_key_value_heads=max(hidden // 256, 1), max_position_embeddings=2048,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    d = root / "bench-llama"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    (root / "corpus.txt").write_text("\n".join(corpus * 4), encoding="utf-8")
    return d


class StallMeter:
    def __init__(self) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.phase = "idle"
        self.samples: dict[str, list[float]] = {}

    def start(self) -> None:
        self.last = time.perf_counter()
        self.timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        stall = max(0.0, (now - self.last) * 1000 - TICK_MS)
        self.samples.setdefault(self.phase, []).append(stall)
        self.last = now


def instrument_gui_handlers() -> list[float]:
    """Time spent on the GUI thread handling worker events (our own share of any stall), in ms."""
    from prunestudio.gui import worker as worker_mod

    spans: list[float] = []
    original = worker_mod.Worker._drain

    def timed(self):  # noqa: ANN001
        t0 = time.perf_counter()
        try:
            original(self)
        finally:
            spans.append((time.perf_counter() - t0) * 1000)

    worker_mod.Worker._drain = timed
    return spans


def wait_for(app, worker, timeout_s: float = 3600) -> None:
    from PySide6.QtCore import QEventLoop, QTimer

    if worker is None:
        return
    loop = QEventLoop()
    worker.finished.connect(loop.quit)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    if worker.is_running:
        loop.exec()
    app.processEvents()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", action="store_true", help="use the demo model instead of a random one")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--method", default="wanda", choices=("magnitude", "wanda", "sparsegpt", "dsnot"))
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=256)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="prunestudio-bench-"))
    os.environ.setdefault("PRUNESTUDIO_DATA", str(tmp / "data"))
    os.environ.setdefault("PRUNESTUDIO_SETTINGS", str(tmp / "settings.ini"))

    from prunestudio.gui import errors
    from prunestudio.gui.app import configure_application
    from prunestudio.gui.main_window import MainWindow
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    configure_application(app)
    handling = instrument_gui_handlers()
    failures: list[str] = []
    errors.show_dialog = lambda parent, rep: failures.append(f"{rep.text}\n{rep.details}")  # no modal boxes

    corpus = None
    if not args.demo:
        t0 = time.perf_counter()
        folder = make_model_dir(tmp, args.hidden, args.layers)
        corpus = tmp / "corpus.txt"
        print(f"made a random Llama ({args.layers} blocks, hidden {args.hidden}) in {time.perf_counter() - t0:.1f} s")

    win = MainWindow()
    win.resize(1280, 820)
    win.show()
    meter = StallMeter()
    meter.start()

    mp = win.model_panel
    if args.demo:
        mp.radio["demo"].setChecked(True)
    else:
        mp.folder.setText(str(folder))
        mp.radio["folder"].setChecked(True)
    mp.device.setCurrentText("cpu")
    meter.phase = "load"
    mp.load_button.click()
    wait_for(app, mp.job.worker)
    if win.state.loaded is None:
        print("the model did not load:", *failures, sep="\n")
        return 2
    print(f"loaded {win.state.loaded.name}: {win.state.loaded.info['parameters'] / 1e6:.1f}M parameters")

    cp = win.calib_panel
    form = cp.form
    if corpus is not None:
        form.kind.setCurrentIndex(form.kind.findData("file"))
        form.path.setText(str(corpus))
    else:
        form.kind.setCurrentIndex(form.kind.findData("selfgen"))
    form.nsamples.setValue(args.nsamples)
    form.seqlen.setValue(args.seqlen)
    meter.phase = "calibrate"
    win.show_step(1)
    cp.go.click()
    wait_for(app, cp.job.worker)

    pp = win.prune_panel
    pp.method.setCurrentIndex(pp.method.findData(args.method))
    pp.sparsity.setValue(50.0)
    rp = win.run_panel
    rp.eval_dense.setChecked(False)
    rp.eval_pruned.setChecked(False)
    meter.phase = "prune"
    win.show_step(3)
    t0 = time.perf_counter()
    if not rp.start():
        print("the run did not start:", rp.status.text.text())
        return 2
    wait_for(app, rp.job.worker)
    run_s = time.perf_counter() - t0
    meter.timer.stop()
    if failures:
        print("errors:", *failures, sep="\n")
        return 2
    print(f"run: {win.state.run_status} in {run_s:.1f} s ({args.method}, {args.nsamples} x {args.seqlen} tokens)\n")

    print(f"{'phase':<10} {'ticks':>6} {'worst':>9} {'p99':>9} {'median':>9} {'target':>9}  verdict")
    worst_all = 0.0
    for phase in ("load", "calibrate", "prune"):
        v = meter.samples.get(phase, [])
        if not v:
            continue
        worst = max(v)
        worst_all = max(worst_all, worst)
        ok = "ok" if worst < TARGET_MS else "STALLS"
        print(f"{phase:<10} {len(v):>6} {worst:>7.1f}ms {pct(v, 0.99):>7.1f}ms {statistics.median(v):>7.1f}ms "
              f"{TARGET_MS:>7.0f}ms  {ok}")
    allv = [x for p in ("load", "calibrate", "prune") for x in meter.samples.get(p, [])]
    print(f"{'all':<10} {len(allv):>6} {max(allv):>7.1f}ms {pct(allv, 0.99):>7.1f}ms {statistics.median(allv):>7.1f}ms "
          f"{TARGET_MS:>7.0f}ms  {'ok' if worst_all < TARGET_MS else 'STALLS'}")
    if handling:
        print(f"\nGUI-thread handling of worker events: {len(handling)} drains, worst {max(handling):.1f} ms, "
              f"p99 {pct(handling, 0.99):.1f} ms, median {statistics.median(handling):.2f} ms")
    try:
        load1 = os.getloadavg()[0]
        cores = os.cpu_count() or 1
        note = "  <- other processes compete for the CPU: stalls include their share" if load1 > cores else ""
        print(f"machine load (1 min) {load1:.1f} on {cores} cores{note}")
    except OSError:
        pass
    win.close()
    return 0 if worst_all < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
