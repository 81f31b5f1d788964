"""``prunestudio-gui --self-test``: a tiny prune end to end inside the (installed or frozen) app.

It builds a small random Llama and a byte-level tokenizer in a temporary folder, then drives the
app's own task generators on its own worker thread — load, self-generated calibration, Wanda 50%,
export — and checks that plain transformers loads the export with half of every pruned row zero.
Exit status 0 means the bundle carries everything a real run needs (torch, transformers, Qt, the
worker, the resources).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Generator

from ..core.config import CalibConfig, PruneConfig, Recipe
from ..core.events import Event, Message
from ..core.run.load import LoadArgs, iter_load
from . import tasks

log = logging.getLogger(__name__)

_TEXT = ("Pruning removes the weights that matter least. Calibration data decides which weights "
         "look important, so the choice of data matters. ") * 8


def _tiny_model_folder(folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([_TEXT], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def self_test(workdir: str, should_stop: Any = lambda: False) -> Generator[Event, None, str]:
    work = Path(workdir)
    folder = _tiny_model_folder(work / "tiny-model")
    args = LoadArgs(spec=str(folder), device="cpu", dtype="fp32")
    loaded = yield from iter_load(args, should_stop)
    cal = CalibConfig(source="selfgen", nsamples=4, seqlen=32, seed=0)
    calib = yield from tasks.calibrate(loaded, args, cal, should_stop)
    recipe = Recipe(model=str(folder), prune=PruneConfig(method="wanda", sparsity=0.5), calibration=cal,
                    device=args.device, dtype=args.dtype)
    outcome = yield from tasks.run(tasks.RunRequest(recipe, loaded, calib), should_stop)
    exported = yield from tasks.export(outcome, str(work / "export"), False, should_stop)

    from transformers import AutoModelForCausalLM

    from ..core.model import architecture

    back = AutoModelForCausalLM.from_pretrained(exported.path)
    lay = architecture.layout(back)
    for bi, block in enumerate(lay.blocks):
        for name in lay.names_of(bi):
            w = architecture.get_weight_2d(block.get_submodule(name))
            if not bool(((w == 0).sum(1) == w.shape[1] // 2).all()):
                raise AssertionError(f"exported {name} is not 50% sparse per row")
    yield Message("self-test: load, self-generated calibration, Wanda 50%, export and reload all passed")
    return str(exported.path)


def run_self_test(app: Any) -> int:
    """Run :func:`self_test` on a worker inside ``app``'s event loop; return the exit status."""
    from .worker import Worker

    status = {"code": 1}
    tmp = tempfile.TemporaryDirectory(prefix="prunestudio-selftest-")
    worker = Worker(self_test, tmp.name, name="self-test", report_errors=False)

    def ok(path: Any) -> None:
        log.info("self-test passed: %s", path)
        status["code"] = 0

    def failed(info: Any) -> None:
        log.error("self-test failed: %s", getattr(info, "traceback", info))

    worker.returned.connect(ok)
    worker.errored.connect(failed)
    worker.finished.connect(app.quit)
    worker.start()
    app.exec()
    tmp.cleanup()
    return status["code"]
