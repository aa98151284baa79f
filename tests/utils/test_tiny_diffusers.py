"""Every tiny diffusers family builds offline, reloads from disk, samples, and has the LoRA support we record."""

from __future__ import annotations

import pytest
import torch

from mmalign.utils.tiny_diffusers import (
    CALL_KWARGS,
    FAMILIES,
    LORA_SUPPORT,
    OUTPUT_SHAPE,
    PIPELINE_CLASS,
    build_tiny_pipeline,
    tiny_pipeline,
    train_tokenizer,
)

PROMPT = "a red cat running near the blue river"


def _needs(family):
    if family == "stable_audio":
        pytest.importorskip("torchsde")  # CosineDPMSolverMultistepScheduler imports it


def _denoiser(pipe):
    return pipe.transformer if getattr(pipe, "transformer", None) is not None else pipe.unet


@pytest.mark.parametrize("family", FAMILIES)
def test_build_load_and_sample(family, tmp_path):
    import diffusers
    from diffusers import DiffusionPipeline

    _needs(family)
    out = build_tiny_pipeline(family, tmp_path / family)
    assert out == tmp_path / family and (out / "model_index.json").is_file()
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size < 4_000_000, f"{family} is {size / 1e6:.1f} MB on disk"

    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe).__name__ == PIPELINE_CLASS[family]
    assert type(getattr(diffusers, PIPELINE_CLASS[family]).from_pretrained(out)) is type(pipe)
    tokenizers = [c for n, c in pipe.components.items() if n.startswith("tokenizer") and c is not None]
    assert tokenizers and all(len(t) > 100 for t in tokenizers)

    pipe.set_progress_bar_config(disable=True)
    output_type = "np" if family == "audioldm" else "pt"  # AudioLDM returns torch only without output_type
    result = pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type=output_type, **CALL_KWARGS[family])
    sample = torch.as_tensor(result[0])
    assert tuple(sample.shape) == OUTPUT_SHAPE[family]
    assert torch.isfinite(sample).all()


def test_seed_fixes_the_weights():
    a, b, c = (_denoiser(tiny_pipeline("sd3", seed=s)).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="unknown family 'sdxl'.*sd3"):
        tiny_pipeline("sdxl")


@pytest.mark.parametrize("cls_name, kwargs", [
    ("CLIPTokenizer", {}), ("T5Tokenizer", {"extra_ids": 0}), ("RobertaTokenizer", {}),
    ("LlamaTokenizer", {"pad_token": "<pad>", "padding_side": "right"}),
])
def test_trained_tokenizer_round_trips_with_its_class(cls_name, kwargs, tmp_path):
    import transformers

    cls = getattr(transformers, cls_name)
    tok = train_tokenizer(cls, model_max_length=32, **kwargs)
    assert len(tok) > 100
    ids = tok(PROMPT).input_ids
    words = [t.strip("▁Ġ").removesuffix("</w>") for t in tok.convert_ids_to_tokens(ids)]
    assert {"red", "cat", "river"} <= set(words), words  # whole words, not characters
    tok.save_pretrained(tmp_path)
    again = cls.from_pretrained(tmp_path)
    assert again(PROMPT).input_ids == ids and len(again) == len(tok) and again.model_max_length == 32
    padded = again(PROMPT, padding="max_length", max_length=32).input_ids
    assert len(padded) == 32 and padded[-1] == again.pad_token_id


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_support_is_what_we_record(family, tmp_path):
    from diffusers import DiffusionPipeline
    from diffusers.loaders.peft import PeftAdapterMixin
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    _needs(family)
    pipe = tiny_pipeline(family)
    denoiser = _denoiser(pipe)
    support = LORA_SUPPORT[family]
    assert hasattr(type(pipe), "load_lora_weights") == support["pipeline_loader"]
    assert isinstance(denoiser, PeftAdapterMixin) == support["denoiser_peft"]

    config = LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False)
    if support["denoiser_peft"]:
        denoiser.add_adapter(config)
    else:
        inject_adapter_in_model(config, denoiser)
    lora = get_peft_model_state_dict(denoiser)
    assert lora and all("lora_" in k for k in lora)
    if not support["pipeline_loader"]:
        return
    key = "unet_lora_layers" if hasattr(pipe, "unet") else "transformer_lora_layers"
    type(pipe).save_lora_weights(tmp_path / "lora", **{key: lora})
    reloaded = DiffusionPipeline.from_pretrained(build_tiny_pipeline(family, tmp_path / "base"))
    reloaded.load_lora_weights(tmp_path / "lora", adapter_name="default")
    loaded = get_peft_model_state_dict(_denoiser(reloaded))
    assert loaded.keys() == lora.keys()
    assert all(torch.equal(loaded[k], lora[k]) for k in lora)
