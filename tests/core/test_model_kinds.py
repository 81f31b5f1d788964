"""Models that are not decoder-only language models.

A vision-language model has its language model pruned and its vision tower left dense, and says
so; an encoder-decoder model is refused with one sentence and nothing is written. The tiny VLMs
give their vision tower more layers than their language model, so a search of the whole model
for its longest list of blocks would find the vision tower.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import CORPUS, byte_tokenizer
from prunestudio.core.cli.commands import EXIT_ERROR, main
from prunestudio.core.errors import ModelLoadError
from prunestudio.core.model import architecture, kinds
from safetensors.torch import load_file

TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=300, max_position_embeddings=128, head_dim=8)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
              image_size=32, patch_size=8)
MROPE = {"type": "mrope", "mrope_section": [1, 1, 2]}

# model type -> (config arguments, where its language model's blocks are)
VLMS = {
    "llava": (dict(text_config=dict(model_type="llama", **TEXT), image_token_index=299,
                   vision_config=dict(model_type="clip_vision_model", **VISION)),
              "model.language_model.layers"),
    "gemma3": (dict(text_config=dict(model_type="gemma3_text", **TEXT), mm_tokens_per_image=4,
                    vision_config=dict(model_type="siglip_vision_model", **VISION),
                    image_token_index=299, boi_token_index=297, eoi_token_index=298),
               "model.language_model.layers"),
    "qwen2_vl": (dict(text_config=dict(model_type="qwen2_vl_text", rope_scaling=MROPE, **TEXT),
                      vision_config=dict(depth=5, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2,
                                         patch_size=4, spatial_merge_size=2),
                      image_token_id=299, video_token_id=298, vision_start_token_id=297),
                 "model.language_model.layers"),
    "qwen2_5_vl": (dict(text_config=dict(model_type="qwen2_5_vl_text", rope_scaling=MROPE, **TEXT),
                        vision_config=dict(depth=5, hidden_size=32, intermediate_size=64, num_heads=4,
                                           out_hidden_size=32, patch_size=4, spatial_merge_size=2,
                                           fullatt_block_indexes=[1]),
                        image_token_id=299, video_token_id=298, vision_start_token_id=297),
                   "model.language_model.layers"),
}


def tiny_vlm(model_type: str, seed: int = 0):
    from transformers import AutoConfig, AutoModelForImageTextToText

    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(AutoConfig.for_model(model_type, **VLMS[model_type][0])).eval()


# ---- which part is searched ---------------------------------------------------------------------

@pytest.mark.parametrize("model_type", sorted(VLMS))
def test_the_blocks_of_a_vlm_are_its_language_models(model_type):
    model = tiny_vlm(model_type)
    vision_lists = [n for n, m in model.named_modules()
                    if isinstance(m, torch.nn.ModuleList) and len(m) == 5]
    assert vision_lists, "the vision tower should have the longest list"
    path, blocks = architecture.find_blocks(model)
    assert path == VLMS[model_type][1]
    assert blocks is model.get_submodule(path) and len(blocks) == 2
    kind = kinds.kind_of(model.config, type(model).__name__)
    assert kind.kind == kinds.MULTIMODAL
    assert kind.pruned_part == "language model (the vision tower stays dense)"


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "gemma3_text", "qwen3_next", "lfm2", "falcon_h1",
                                        "granitemoehybrid", "gpt2", "opt", "mpt", "dbrx"])
def test_decoder_only_configs_are_decoders(model_type):
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(model_type)
    assert kinds.kind_of(cfg).kind == kinds.DECODER
    assert kinds.auto_class(cfg).__name__ == "AutoModelForCausalLM"


@pytest.mark.parametrize("model_type, auto", [
    ("llava", "AutoModelForImageTextToText"), ("qwen2_vl", "AutoModelForImageTextToText"),
    ("gemma3", "AutoModelForImageTextToText"),
    # AutoModelForCausalLM would build these without their vision tower (MllamaForCausalLM, ...)
    ("mllama", "AutoModelForImageTextToText"), ("llama4", "AutoModelForImageTextToText"),
])
def test_a_vlm_is_loaded_whole(model_type, auto):
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(model_type)
    assert kinds.kind_of(cfg).kind == kinds.MULTIMODAL
    assert kinds.auto_class(cfg).__name__ == auto


@pytest.mark.parametrize("model_type", ["t5", "bart", "whisper", "mbart"])
def test_encoder_decoder_configs_are_refused(model_type):
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(model_type)
    cfg.architectures = ["XForConditionalGeneration"]
    with pytest.raises(ModelLoadError, match=r"^XForConditionalGeneration is an encoder-decoder model; Prune "
                       r"Studio prunes decoder-only language models \(and the language model of a "
                       r"vision-language model\)\.$"):
        kinds.check_supported(cfg)


def test_a_vlm_whose_language_model_cannot_be_found_is_refused():
    model = tiny_vlm("llava")
    model.model.language_model.config = copy.deepcopy(model.model.language_model.config)
    for m in model.model.language_model.modules():
        if hasattr(m, "config"):
            m.config = model.model.language_model.config
    with pytest.raises(ModelLoadError, match="cannot tell which modules belong to the language model"):
        architecture.find_blocks(model)


def _toy_own_language_model(vision_config_on_tower: bool):
    """A model that is its own language model (like Phi-4-multimodal): a vision tower of 4 blocks
    built from ``config.vision_config`` beside 2 decoder blocks."""
    from torch import nn
    from transformers import PretrainedConfig

    class ToyConfig(PretrainedConfig):
        model_type = "toy_omni"
        sub_configs = {"vision_config": PretrainedConfig}

    class Block(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.fc = nn.Linear(4, 4)

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = ToyConfig(vision_config=PretrainedConfig())
            tower_config = self.config.vision_config if vision_config_on_tower else PretrainedConfig()
            self.vision = nn.Module()
            self.vision.config = tower_config
            self.vision.blocks = nn.ModuleList(Block(tower_config) for _ in range(4))
            self.layers = nn.ModuleList(Block(self.config) for _ in range(2))

    return Toy()


def test_a_model_that_is_its_own_language_model_leaves_its_vision_tower_out():
    model = _toy_own_language_model(vision_config_on_tower=True)
    assert architecture.find_blocks(model) == ("layers", model.layers)
    with pytest.raises(ModelLoadError, match="cannot tell which modules belong to the language model"):
        architecture.find_blocks(_toy_own_language_model(vision_config_on_tower=False))


# ---- through the command line ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def vlm_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("vlm") / "tiny-llava"
    tiny_vlm("llava").save_pretrained(d)
    tok = byte_tokenizer(300)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 32}}))
    return d


@pytest.fixture
def text(tmp_path):
    p = tmp_path / "calib.txt"
    p.write_text((CORPUS + "\n") * 30, encoding="utf-8")
    return p


def _prune(model, calib, out):
    return main(["prune", "--model", str(model), "--method", "wanda", "--sparsity", "0.5",
                 "--calibration", str(calib), "--nsamples", "2", "--seqlen", "16",
                 "--device", "cpu", "--dtype", "fp32", "--out", str(out)])


def test_a_vlm_has_its_language_model_pruned_and_its_vision_tower_untouched(vlm_folder, text, tmp_path, capsys):
    out = tmp_path / "pruned"
    code = _prune(vlm_folder, text, out)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "prunes its language model (the vision tower stays dense)" in err

    before = load_file(vlm_folder / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    lm_blocks = {k for k in after if ".layers." in k and "language_model" in k
                 and k.endswith(".weight") and after[k].dim() == 2}
    assert len(lm_blocks) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 blocks
    for k in lm_blocks:
        assert (after[k] == 0).float().mean().item() == pytest.approx(0.5), k
    untouched = [k for k in after if k not in lm_blocks]
    assert any(k.startswith("vision_tower.") for k in untouched)
    for k in untouched:  # vision tower, projector, embeddings, norms, head: bit for bit
        assert torch.equal(before[k], after[k]), k

    report = json.loads((out / "prunestudio.json").read_text())
    assert report["model"]["pruned_part"] == "language model (the vision tower stays dense)"
    assert report["model"]["kind"] == "multimodal"
    assert report["model"]["blocks"] == 2
    assert report["model"]["loads_with"] == "AutoModelForImageTextToText"
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "Pruned part: the language model (the vision tower stays dense)." in card
    assert "`AutoModelForImageTextToText.from_pretrained(this_folder)`" in card
    assert (out / "preprocessor_config.json").exists() and (out / "chat_template.jinja").exists()

    from transformers import AutoModelForImageTextToText

    reloaded = AutoModelForImageTextToText.from_pretrained(str(out))
    assert type(reloaded).__name__ == "LlavaForConditionalGeneration"
    w = reloaded.model.language_model.layers[1].mlp.down_proj.weight
    assert (w == 0).float().mean().item() == pytest.approx(0.5)
    vision = reloaded.get_submodule("model.vision_tower.encoder.layers.4.mlp.fc2").weight
    assert (vision != 0).all()


@pytest.mark.parametrize("model_type", ["t5", "bart"])
def test_an_encoder_decoder_is_refused_and_nothing_is_written(model_type, text, tmp_path, capsys):
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    cfg = AutoConfig.for_model(model_type, vocab_size=300, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
                               encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                               max_position_embeddings=64)
    folder = tmp_path / f"tiny-{model_type}"
    AutoModelForSeq2SeqLM.from_config(cfg).save_pretrained(folder)
    byte_tokenizer(300).save_pretrained(folder)
    arch = json.loads((folder / "config.json").read_text())["architectures"][0]
    out = tmp_path / "pruned"
    code = _prune(folder, text, out)
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert lines == [f"error: {arch} is an encoder-decoder model; Prune Studio prunes decoder-only language "
                     "models (and the language model of a vision-language model)."], err
    assert "Traceback" not in err
    assert not out.exists()
    assert not list(tmp_path.glob(".pruned*"))
