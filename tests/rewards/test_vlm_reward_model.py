import json
import random

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mmalign.adapters.base import LoraSettings
from mmalign.cli import main
from mmalign.data import validate_record
from mmalign.data.pairs import DataError
from mmalign.rewards.vlm_reward_model import VLMRewardModel, load_vlm_reward_model
from mmalign.utils.metrics import read_metrics

from ..conftest import write_jsonl

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# Qwen2-VL's chat template, without its default system turn.
TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_qwen2_vl(tokens: dict[str, int], vocab: int) -> dict:
    """A tiny Qwen2-VL: 2 text layers (hidden 32), 1 vision block, 4-pixel patches (16x16 image = 4 tokens)."""
    return {
        "model_type": "qwen2_vl",
        "text_config": {"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
                        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0},
                        "bos_token_id": None, "eos_token_id": tokens["<|im_end|>"],
                        "pad_token_id": tokens["<|endoftext|>"]},
        "vision_config": {"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2,
                          "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2},
        "image_token_id": tokens["<|image_pad|>"], "video_token_id": tokens["<|video_pad|>"],
        "vision_start_token_id": tokens["<|vision_start|>"], "vision_end_token_id": tokens["<|vision_end|>"],
    }


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    """A random tiny Qwen2-VL saved like the hub checkpoint (``...ForConditionalGeneration`` + processor),
    with a byte-level BPE tokenizer trained here; returns ``(directory, config dict)``."""
    from transformers import (AutoConfig, Qwen2Tokenizer, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    from mmalign.utils.tiny_diffusers import train_tokenizer

    out = tmp_path_factory.mktemp("tiny-qwen2-vl")
    tok = train_tokenizer(Qwen2Tokenizer, vocab_size=400)
    tok.add_special_tokens({"additional_special_tokens": SPECIALS})
    tok.pad_token = "<|endoftext|>"
    kw = {"patch_size": 4, "temporal_patch_size": 2, "merge_size": 2, "min_pixels": 8 * 8, "max_pixels": 32 * 32}
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**kw),
                                 video_processor=Qwen2VLVideoProcessor(**kw, cap_pixels_per_frame=False),
                                 tokenizer=tok, chat_template=TEMPLATE)
    config = tiny_qwen2_vl({t: tok.convert_tokens_to_ids(t) for t in SPECIALS + ["<|endoftext|>"]}, len(tok))
    torch.manual_seed(0)
    cfg = dict(config)
    Qwen2VLForConditionalGeneration(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).save_pretrained(out)
    processor.save_pretrained(out)
    return out, config


def shade(path, level: float, rng: random.Random, size: int = 16):
    """A noisy RGB image of mean brightness ``level`` in [0, 1]."""
    arr = np.clip(level + np.random.default_rng(rng.randrange(2**31)).normal(0, 0.08, (size, size, 3)), 0, 1)
    Image.fromarray((arr * 255).astype(np.uint8)).save(path)
    return path.name


def bright_dark_pairs(root, n: int, seed: int) -> list[dict]:
    """Each pair shows one bright (0.6-0.9) and one dark (0.1-0.4) image; the prompt asks for one of them
    (dimension 'TA'), so neither brightness alone nor the prompt alone says which is chosen."""
    rng = random.Random(seed)
    (root / "img").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        bright = shade(root / "img" / f"{seed}_{i}_b.png", rng.uniform(0.6, 0.9), rng)
        dark = shade(root / "img" / f"{seed}_{i}_d.png", rng.uniform(0.1, 0.4), rng)
        want_bright = rng.random() < 0.5
        chosen, rejected = (bright, dark) if want_bright else (dark, bright)
        subject = rng.choice(["cat", "dog", "tree"])
        rows.append({"prompt": f"a {'bright' if want_bright else 'dark'} photo of a {subject}",
                     "chosen": f"img/{chosen}", "rejected": f"img/{rejected}",
                     "labels": {"TA": "chosen"}})
    return rows


def record(row: dict, data_file, line: int = 1):
    pair = validate_record(row, str(data_file), line)
    pair.data_file = str(data_file)
    return pair


def test_score_shapes_and_reward_token_positions(tiny_vlm, tmp_path):
    path, _ = tiny_vlm
    rm = VLMRewardModel(pretrained=str(path), dims=["VQ", "TA"], modality="image")
    assert rm.reward_token_ids == [len(rm.processor.tokenizer) - 2, len(rm.processor.tokenizer) - 1]
    rows = [{**r, "labels": {}} for r in bright_dark_pairs(tmp_path, 2, 0)]
    records = [record(r, tmp_path / "d.jsonl", i + 1) for i, r in enumerate(rows)]
    records[1].prompt = "a much longer prompt about a dog running near the river"
    batch = rm.collate([rm.encode(r) for r in records])
    assert batch["labels"].tolist() == [[1, 1], [1, 1]]
    scores = rm.score(batch)
    assert scores.shape == (4, 2) and scores.dtype == torch.float32
    assert not torch.allclose(scores[:2], scores[2:])  # chosen and rejected rows differ
    # Each dimension is read at its own reward token: the two positions differ, and hold those tokens.
    pos = batch["positions"]
    assert pos.shape == (4, 2) and bool((pos[:, 1] == pos[:, 0] + 1).all())
    ids = batch["input_ids"].gather(1, pos)
    assert ids.tolist() == [rm.reward_token_ids] * 4
    # Head d reads only token d's hidden state.
    hidden = rm.model.backbone(**{k: batch[k] for k in batch["input_keys"]}, use_cache=False).last_hidden_state
    w, b = rm.model.heads.proj.weight, rm.model.heads.proj.bias
    expect = torch.stack([hidden[torch.arange(4), pos[:, d]] @ w[d] + b[d] for d in range(2)], dim=1)
    torch.testing.assert_close(scores, expect)
    # "last" pooling: one position (the last real token) for every head.
    last = VLMRewardModel(pretrained=str(path), dims=["VQ", "TA"], modality="image", pooling="last")
    lb = last.collate([last.encode(r) for r in records])
    assert lb["positions"].shape == (4, 1)
    assert lb["positions"][:, 0].tolist() == (lb["attention_mask"].sum(1) - 1).tolist()  # right padding
    right = last.score(lb)
    assert right.shape == (4, 2)
    last.processor.tokenizer.padding_side = "left"  # pooling and M-RoPE positions follow the attention mask
    lb = last.collate([last.encode(r) for r in records])
    assert lb["positions"][:, 0].tolist() == [lb["input_ids"].shape[1] - 1] * 4
    torch.testing.assert_close(last.score(lb), right, atol=1e-4, rtol=1e-4)


def test_encode_errors_name_the_record(tiny_vlm, tmp_path):
    rm = VLMRewardModel(pretrained=str(tiny_vlm[0]), dims=["TA"], modality="image", max_length=30)
    rows = bright_dark_pairs(tmp_path, 1, 0)
    bad = record({**rows[0], "rejected": "img/missing.png"}, tmp_path / "d.jsonl", 3)
    with pytest.raises(DataError, match=r"d.jsonl:3: field 'rejected': .*missing.png: file not found"):
        rm.encode(bad)
    with pytest.raises(DataError, match=r"d.jsonl:4: field 'chosen': \d+ tokens .* exceed max_length 30"):
        rm.encode(record(rows[0], tmp_path / "d.jsonl", 4))
    with pytest.raises(DataError, match=r"d.jsonl:6: field 'prompt': contains a reward token"):
        rm.encode(record({**rows[0], "prompt": "a <|TA_reward|> photo"}, tmp_path / "d.jsonl", 6))
    with pytest.raises(DataError, match="dimensions"):
        VLMRewardModel(pretrained=str(tiny_vlm[0]), dims=["VQ"], modality="image").encode(
            record(rows[0], tmp_path / "d.jsonl", 5))


def test_video_reward_and_lora_round_trips(tiny_vlm, tmp_path):
    path, config = tiny_vlm
    video = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    for kind, source in (("adapter", {"pretrained": str(path)}), ("full", {"config": config, "processor": str(path)})):
        torch.manual_seed(0)
        rm = VLMRewardModel(**source, dims=["VQ", "MQ", "TA"], modality="video", num_frames=4, lora=LoraSettings(r=4))
        with torch.no_grad():  # trained-looking adapters, so the round trip is not trivially the base model
            for name, p in rm.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
        want = rm.reward(["a cat", "a dog"], video)
        assert want.shape == (2, 3)
        rm.save_pretrained(tmp_path / kind)
        meta = json.loads((tmp_path / kind / "reward_model.json").read_text())
        assert meta["type"] == "vlm_reward_model" and meta["weights"] == kind
        weights = "adapter_model.safetensors" if kind == "adapter" else "model.safetensors"
        assert (tmp_path / kind / "backbone" / weights).is_file()
        back = load_vlm_reward_model(tmp_path / kind)
        assert back.modality == "video" and back.dims == ("VQ", "MQ", "TA")
        torch.testing.assert_close(back.reward(["a cat", "a dog"], video), want)
    with pytest.raises(ValueError, match=r"expects samples \[B, 3, F, H, W\]"):
        back.reward(["a cat"], torch.zeros(1, 3, 16, 16))


def test_learns_prompt_dependent_preference_via_cli(tiny_vlm, tmp_path):
    path, _ = tiny_vlm
    train = write_jsonl(tmp_path / "train.jsonl", bright_dark_pairs(tmp_path, 64, 0))
    held = write_jsonl(tmp_path / "eval.jsonl", bright_dark_pairs(tmp_path, 32, 1))
    cfg = {
        "recipe": "reward_model", "seed": 0, "output_dir": str(tmp_path / "rm"),
        "adapter": {"name": "vlm_reward_model", "pretrained": str(path), "dims": ["TA"], "modality": "image",
                    "resolution": 16},
        "objective": {"name": "bradley_terry"},
        "data": {"name": "preference_pairs", "path": str(train), "eval_path": str(held)},
        "optim": {"name": "adamw", "lr": 1e-2},  # seeds 0-3 reach 1.0 held-out accuracy by step 15
        "train": {"max_steps": 20, "batch_size": 16, "eval_every": 10, "save_every": 20, "progress": False,
                  "plot": False, "lr_scheduler": "constant"},
        "accelerate": {"log_with": []},
    }
    (tmp_path / "rm.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "rm.yaml")]) == 0
    evals = [r for r in read_metrics(tmp_path / "rm" / "metrics.jsonl") if r["split"] == "eval"]
    assert evals[0]["accuracy/TA"] <= 0.75, evals  # the random model is near chance: this has to be learned
    assert evals[-1]["accuracy/TA"] >= 0.9, evals
    assert evals[-1]["loss"] < evals[0]["loss"], evals
    znorm = json.loads((tmp_path / "rm" / "final" / "znorm.json").read_text())
    assert set(znorm["mean"]) == {"TA"} and znorm["n"] == 64
    # Loaded back as a reward on generated images (another size): it prefers whatever the prompt asks for.
    rm = load_vlm_reward_model(tmp_path / "rm" / "final")
    levels = torch.tensor([0.8, 0.2, 0.8, 0.2]).view(4, 1, 1, 1)
    images = (levels + 0.05 * torch.randn(4, 3, 24, 24)).clamp(0, 1) * 2 - 1
    prompts = ["a bright photo of a tree"] * 2 + ["a dark photo of a cat"] * 2
    scores = rm.reward(prompts, images)
    assert scores.shape == (4, 1)
    assert scores[0, 0] > scores[1, 0] and scores[3, 0] > scores[2, 0], scores
    # ... and through the reward registry, z-normalised.
    from mmalign.registry import build

    reward = build("reward", {"name": "reward_model", "path": str(tmp_path / "rm" / "final"), "device": "cpu"})
    assert reward.modality == "image" and reward.dims == ("TA",)
    z = reward(images, prompts)
    assert z.shape == (4, 1) and z[0, 0] > z[1, 0] and z[3, 0] > z[2, 0]
