"""Tiny, randomly initialised diffusers pipelines, built offline, for tests and examples.

``build_tiny_pipeline(family, out_dir)`` assembles a complete pipeline (denoiser, VAE, scheduler,
text encoders and *locally trained* tokenizers) a few hundred KB in size, saves it with
``save_pretrained`` and returns ``out_dir``; ``DiffusionPipeline.from_pretrained(out_dir)`` loads it
back without the hub. Configs follow diffusers' own ``get_dummy_components`` where they exist;
schedulers and VAE normalisation constants copy the real checkpoints' configs.

Tokenizers are the real transformers classes (``CLIPTokenizer``, ``T5Tokenizer``, ...) built from a
vocabulary trained here with ``tokenizers`` on a small caption corpus, using each class's own
normaliser and pre-tokenizer, so a saved tokenizer reloads identically with its class.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

FAMILIES = ("sd3", "flux", "wan", "ltx", "sd15", "sd15_v", "stable_audio", "audioldm", "hunyuan_video")

PIPELINE_CLASS = {
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
    "wan": "WanPipeline",
    "ltx": "LTXPipeline",
    "sd15": "StableDiffusionPipeline",
    "sd15_v": "StableDiffusionPipeline",
    "stable_audio": "StableAudioPipeline",
    "audioldm": "AudioLDMPipeline",
    "hunyuan_video": "HunyuanVideoPipeline",
}

# Keyword arguments for a tiny pipeline call, and the output shape they give with output_type="pt"
# (images [B, C, H, W], videos [B, F, C, H, W], Stable Audio [B, channels, samples], AudioLDM [B, samples]).
CALL_KWARGS = {
    "sd3": dict(height=16, width=16, max_sequence_length=16),
    "flux": dict(height=16, width=16, max_sequence_length=16),
    "wan": dict(height=32, width=32, num_frames=9, max_sequence_length=16),
    "ltx": dict(height=32, width=32, num_frames=9, max_sequence_length=16),  # LTX needs H, W % 32 == 0
    "sd15": dict(height=16, width=16),
    "sd15_v": dict(height=16, width=16),
    "stable_audio": dict(audio_end_in_s=1.0),
    "audioldm": dict(audio_length_in_s=0.008),
    "hunyuan_video": dict(height=16, width=16, num_frames=9, max_sequence_length=16,
                          prompt_template={"template": "{}", "crop_start": 0}),
}
OUTPUT_SHAPE = {
    "sd3": (1, 3, 16, 16), "flux": (1, 3, 16, 16), "sd15": (1, 3, 16, 16), "sd15_v": (1, 3, 16, 16),
    "wan": (1, 9, 3, 32, 32), "ltx": (1, 9, 3, 32, 32), "hunyuan_video": (1, 9, 3, 16, 16),
    "stable_audio": (1, 2, 64), "audioldm": (1, 128),
}

# Verified by tests/utils/test_tiny_diffusers.py: the pipeline has a LoRA loader mixin
# (``load_lora_weights``), and the denoiser is a diffusers ``PeftAdapterMixin`` (``add_adapter``,
# ``load_lora_adapter``). StableAudioDiTModel has neither; peft's ``inject_adapter_in_model`` still works on it.
LORA_SUPPORT = {f: {"pipeline_loader": True, "denoiser_peft": True} for f in FAMILIES}
LORA_SUPPORT["stable_audio"] = {"pipeline_loader": False, "denoiser_peft": False}
LORA_SUPPORT["audioldm"] = {"pipeline_loader": False, "denoiser_peft": True}

_ADJ = ("red green blue yellow small big old young happy sad bright dark wooden metal soft loud quiet fast slow "
        "tiny").split()
_NOUN = ("cat dog bird fox horse car tree house river mountain drum piano guitar violin voice rain wind ocean city "
         "forest").split()
_VERB = "running jumping singing playing eating flying sleeping dancing walking swimming".split()
CAPTIONS = [
    f"a {a} {n} {v} near the {b} {m}"
    for (a, n, v), (b, m) in zip(itertools.product(_ADJ, _NOUN, _VERB), itertools.cycle(itertools.product(_ADJ, _NOUN)))
] + [
    "A painting of a squirrel eating a burger.", "A photo of an astronaut riding a horse on the moon.",
    "dance monkey", "A hammer hitting a wooden surface.", "The sound of rain on a window, then thunder.",
    "A video of waves at sunset; the camera pans slowly (4k, high quality).",
    "The quick brown fox jumps over the lazy dog? 0 1 2 3 4 5 6 7 8 9 + - * = ! , : ' \" / _ # @ & %",
]


def train_tokenizer(cls, vocab_size: int = 1000, corpus=CAPTIONS, **kwargs):
    """Build transformers tokenizer class ``cls`` (BPE or Unigram) from a vocabulary made from ``corpus``.

    The vocabulary is made with ``cls``'s own normaliser and pre-tokenizer, so ``cls.from_pretrained`` of the
    saved tokenizer (which rebuilds it from the vocabulary) tokenizes exactly as the returned one. BPE merges
    are trained with ``tokenizers``; a Unigram vocabulary is every corpus word and character, scored by
    log-frequency (``tokenizers``' UnigramTrainer keeps almost no whole words on a corpus this small).
    """
    import math
    from collections import Counter

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    proto = cls(**kwargs)
    backend = proto.backend_tokenizer
    spec = json.loads(backend.to_str())["model"]
    specials = sorted(set(proto.all_special_tokens), key=proto.convert_tokens_to_ids)
    pre = backend.pre_tokenizer
    if isinstance(pre, pre_tokenizers.Metaspace) and not pre.split:  # learn pieces within words, as sentencepiece
        pre = pre_tokenizers.Metaspace(replacement=pre.replacement, prepend_scheme=pre.prepend_scheme, split=True)
    if spec["type"] == "BPE":
        opts = {k: spec[k] for k in ("unk_token", "end_of_word_suffix", "byte_fallback", "fuse_unk") if spec.get(k)}
        tok = Tokenizer(models.BPE(**opts))
        tok.normalizer, tok.pre_tokenizer = backend.normalizer, pre
        targs = dict(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
        if "ByteLevel" in backend.to_str():
            targs["initial_alphabet"] = pre_tokenizers.ByteLevel.alphabet()
        if spec.get("end_of_word_suffix"):
            targs["end_of_word_suffix"] = spec["end_of_word_suffix"]
        tok.train_from_iterator(list(corpus), trainer=trainers.BpeTrainer(**targs))
        model = json.loads(tok.to_str())["model"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        out = cls(vocab=model["vocab"], merges=merges, **kwargs)
    else:
        counts = Counter()
        for line in corpus:
            text = backend.normalizer.normalize_str(line) if backend.normalizer else line
            for word, _ in pre.pre_tokenize_str(text):
                counts[word] += 1
                counts.update(word)
        total = sum(counts.values())
        pieces = [(w, math.log(c / total)) for w, c in counts.most_common(vocab_size - len(specials))]
        out = cls(vocab=[(s, 0.0) for s in specials] + pieces, **kwargs)
    assert len(out) > 100, f"{cls.__name__} built with only {len(out)} tokens"
    return out


def _clip(hidden: int, projection: int | None = None, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tok = train_tokenizer(CLIPTokenizer, model_max_length=77)
    cfg = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=projection or hidden,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg), tok


def _t5(d_model: int = 32, model_max_length: int = 512, umt5: bool = False):
    from transformers import T5Config, T5EncoderModel, T5Tokenizer, UMT5Config, UMT5EncoderModel

    tok = train_tokenizer(T5Tokenizer, extra_ids=0, model_max_length=model_max_length)
    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    cfg = config_cls(
        vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, feed_forward_proj="gated-gelu",
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
    )
    return model_cls(cfg), tok


def _image_vae(latent_channels: int, scaling_factor: float, shift_factor: float | None, quant_conv: bool, channels=3):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=channels, out_channels=channels, latent_channels=latent_channels, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=16, scaling_factor=scaling_factor,
        shift_factor=shift_factor, use_quant_conv=quant_conv, use_post_quant_conv=quant_conv,
    )


def _flow_scheduler(**config):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**config)


def _sd3():
    import diffusers as d

    te, tok = _clip(16, 16, with_projection=True)
    te2, tok2 = _clip(16, 16, with_projection=True)
    te3, tok3 = _t5(32)
    transformer = d.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
        pos_embed_max_size=16,
    )
    return d.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=_flow_scheduler(shift=3.0),
        vae=_image_vae(16, 1.5305, 0.0609, quant_conv=False),
        text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2, text_encoder_3=te3, tokenizer_3=tok3,
    )


def _flux():
    import diffusers as d

    te, tok = _clip(16)
    te2, tok2 = _t5(32)
    transformer = d.FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    scheduler = _flow_scheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                base_image_seq_len=256, max_image_seq_len=4096)
    return d.FluxPipeline(
        transformer=transformer, scheduler=scheduler, vae=_image_vae(16, 0.3611, 0.1159, quant_conv=False),
        text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2,
    )


def _wan():
    import diffusers as d

    te, tok = _t5(32, umt5=True)
    vae = d.AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                             temperal_downsample=[False, True, True])
    transformer = d.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    return d.WanPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=_flow_scheduler(shift=3.0),
                         transformer=transformer)


def _ltx():
    import diffusers as d

    te, tok = _t5(32, model_max_length=128)
    scaling = (True, True, False, False)
    vae = d.AutoencoderKLLTXVideo(
        latent_channels=8, block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
        layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 5, spatio_temporal_scaling=scaling,
        decoder_spatio_temporal_scaling=scaling, decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4, patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    )
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    transformer = d.LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, num_layers=1, caption_channels=32,
    )
    scheduler = _flow_scheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                                base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1)
    return d.LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=te, tokenizer=tok, transformer=transformer)


def _sd15(prediction_type: str):
    import diffusers as d

    te, tok = _clip(32)
    unet = d.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    scheduler = d.DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )
    return d.StableDiffusionPipeline(
        vae=_image_vae(4, 0.18215, None, quant_conv=True), text_encoder=te, tokenizer=tok, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def _stable_audio():
    import importlib.util

    import diffusers as d

    if importlib.util.find_spec("torchsde") is None:  # CosineDPMSolverMultistepScheduler imports it
        raise ImportError("the stable_audio family needs `torchsde` (pip install torchsde)")

    te, tok = _t5(32, model_max_length=64)
    transformer = d.StableAudioDiTModel(
        sample_size=16, in_channels=8, out_channels=8, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        num_key_value_attention_heads=1, cross_attention_dim=16, time_proj_dim=16, global_states_input_dim=32,
        cross_attention_input_dim=16,
    )
    vae = d.AutoencoderOobleck(encoder_hidden_size=16, downsampling_ratios=[2, 2], channel_multiples=[1, 2],
                               decoder_channels=8, decoder_input_channels=8, audio_channels=2, sampling_rate=64)
    scheduler = d.CosineDPMSolverMultistepScheduler(
        sigma_min=0.3, sigma_max=500, sigma_data=1.0, sigma_schedule="exponential", solver_order=2,
        prediction_type="v_prediction",
    )
    projection = d.StableAudioProjectionModel(text_encoder_dim=32, conditioning_dim=16, min_value=0, max_value=32)
    return d.StableAudioPipeline(vae=vae, text_encoder=te, projection_model=projection, tokenizer=tok,
                                 transformer=transformer, scheduler=scheduler)


def _audioldm():
    import diffusers as d
    from transformers import (ClapTextConfig, ClapTextModelWithProjection, RobertaTokenizer, SpeechT5HifiGan,
                              SpeechT5HifiGanConfig)

    tok = train_tokenizer(RobertaTokenizer, model_max_length=77)
    te = ClapTextModelWithProjection(ClapTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=80, projection_dim=32, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    ))
    unet = d.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=(16, 32), attention_head_dim=8, norm_num_groups=8, class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=32, class_embeddings_concat=True,
    )
    scheduler = d.DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=16, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[2, 2],
        upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
        normalize_before=False,
    ))
    return d.AudioLDMPipeline(vae=_image_vae(4, 0.9227, None, quant_conv=True, channels=1), text_encoder=te,
                              tokenizer=tok, unet=unet, scheduler=scheduler, vocoder=vocoder)


def _hunyuan_video():
    import diffusers as d
    from transformers import LlamaConfig, LlamaModel, LlamaTokenizer

    tok = train_tokenizer(LlamaTokenizer, pad_token="<pad>", add_bos_token=True, padding_side="right",
                          model_max_length=512)  # right: the pipeline crops the template from the front
    te = LlamaModel(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    ))
    te2, tok2 = _clip(8)
    transformer = d.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    )
    vae = d.AutoencoderKLHunyuanVideo(
        latent_channels=4, block_out_channels=(8,) * 4, layers_per_block=1, norm_num_groups=4,
        scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
    )
    return d.HunyuanVideoPipeline(text_encoder=te, tokenizer=tok, transformer=transformer, vae=vae,
                                  scheduler=_flow_scheduler(shift=7.0), text_encoder_2=te2, tokenizer_2=tok2)


_BUILDERS = {
    "sd3": _sd3, "flux": _flux, "wan": _wan, "ltx": _ltx, "sd15": lambda: _sd15("epsilon"),
    "sd15_v": lambda: _sd15("v_prediction"), "stable_audio": _stable_audio, "audioldm": _audioldm,
    "hunyuan_video": _hunyuan_video,
}


def tiny_pipeline(family: str, seed: int = 0):
    """The tiny random pipeline of ``family`` in memory (fp32, CPU, progress bar off)."""
    import torch

    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    torch.manual_seed(seed)
    pipe = _BUILDERS[family]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_pipeline(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Save the tiny random pipeline of ``family`` to ``out_dir`` and return it (``Path``).

    Load it back with ``DiffusionPipeline.from_pretrained(out_dir)``; no network is needed.
    """
    out_dir = Path(out_dir)
    tiny_pipeline(family, seed).save_pretrained(out_dir, safe_serialization=True)
    return out_dir
