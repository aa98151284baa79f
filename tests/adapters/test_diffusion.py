"""Diffusers adapters end to end: tiny random pipelines of each family, saved and loaded back through
``pretrained:``, trained for a few steps through the CLI, their LoRA loaded into the stock pipeline."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mmalign.adapters import DiffusionAdapter, LoraSettings
from mmalign.cli import main
from mmalign.data import load_pairs
from mmalign.data.media import save_audio
from mmalign.utils.metrics import read_metrics
from mmalign.utils.tiny_diffusers import CALL_KWARGS

# tiny-pipeline name -> (modality, adapter arguments, preference objective)
FAMILIES = {
    "sd3": ("image", {"resolution": 16}, "flow_dpo"),
    "flux": ("image", {"resolution": 16}, "flow_dpo"),
    "sd15": ("image", {"resolution": 16}, "diffusion_dpo"),
    "sd15_v": ("image", {"resolution": 16}, "diffusion_dpo"),
    "wan": ("video", {"resolution": 32, "num_frames": 9}, "flow_dpo"),
    "ltx": ("video", {"resolution": 32, "num_frames": 9}, "flow_dpo"),
    "hunyuan_video": ("video", {"resolution": 16, "num_frames": 9}, "flow_dpo"),
    "stable_audio": ("audio", {"seconds": 1.0}, "diffusion_dpo"),
    "audioldm": ("audio", {"seconds": 0.008}, "diffusion_dpo"),
}
AUDIO_RATES = {"stable_audio": (64, 2), "audioldm": (16000, 1)}


@pytest.fixture(scope="module")
def pipelines(tiny_pipelines):
    return tiny_pipelines


def write_media(name: str, root: Path, n_pairs: int = 4, seed: int = 0, with_rewards: bool = False) -> Path:
    """``n_pairs`` pairs of random media for family ``name`` and their JSONL (relative paths)."""
    modality, args, _ = FAMILIES[name]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_pairs):
        row = {"prompt": f"sample number {i}"}
        for k in ("chosen", "rejected"):
            if modality == "image":
                path = f"{i}_{k}.png"
                Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8")).save(root / path)
            elif modality == "video":
                path = f"{i}_{k}.gif"
                size = args["resolution"]
                frames = [Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")) for _ in range(9)]
                frames[0].save(root / path, save_all=True, append_images=frames[1:], duration=100)
            else:
                rate, channels = AUDIO_RATES[name]
                path = f"{i}_{k}.wav"
                samples = int(rate * args["seconds"])
                save_audio(torch.from_numpy(rng.uniform(-0.5, 0.5, (channels, samples))).float(), root / path, rate)
            row[k] = path
        if with_rewards:
            row["reward_chosen"], row["reward_rejected"] = float(rng.random()), float(rng.random())
        rows.append(row)
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def write_config(name: str, pipe_dir: Path, data: Path, root: Path, *, objective: str | None = None, **sections) -> Path:
    _, args, default_objective = FAMILIES[name]
    cfg = {
        "recipe": "offline_preference",
        "output_dir": str(root / "out"),
        "adapter": {"name": "diffusion", "pretrained": str(pipe_dir), "lora": {"r": 4, "alpha": 4}, **args},
        "objective": {"name": objective or default_objective},
        "data": {"name": "preference_pairs", "path": str(data)},
        "optim": {"name": "adamw", "lr": 1e-2},
        "train": {"max_steps": 2, "batch_size": 2, "progress": False, "plot": False},
        "accelerate": {"log_with": []},
        "sample": {"prompts": ["sample number 0"], "num_inference_steps": 2, **_sample_size(name)},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _sample_size(name: str) -> dict:
    kw = CALL_KWARGS[name]
    out = {k: kw[k] for k in ("height", "width", "num_frames") if k in kw}
    if "audio_end_in_s" in kw or "audio_length_in_s" in kw:
        out["seconds"] = kw.get("audio_end_in_s", kw.get("audio_length_in_s"))
    return out


def dir_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def stock_output(name: str, pipe_dir: Path, lora_dir: Path | None):
    from mmalign.adapters.diffusion_families import detect_family
    from mmalign.recipes.sample import load_diffusion_pipeline

    pipe = load_diffusion_pipeline(str(pipe_dir), detect_family(str(pipe_dir)), lora_dir)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("sample number 0", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np", **CALL_KWARGS[name])
    for field in ("images", "frames", "audios"):
        if hasattr(out, field):
            return np.asarray(getattr(out, field))
    raise AssertionError(type(out))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_preference_steps_via_cli_train_lora_only_and_load_into_stock_pipeline(name, pipelines, tmp_path):
    pipe_dir = pipelines(name)
    digest = dir_digest(pipe_dir)
    data = write_media(name, tmp_path)
    cfg = write_config(name, pipe_dir, data, tmp_path)
    assert main(["train", str(cfg)]) == 0
    out = tmp_path / "out"
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    assert len(losses) == 2 and losses[0] == pytest.approx(0.6931, abs=1e-4)  # LoRA starts at the reference
    assert dir_digest(pipe_dir) == digest  # the base is untouched
    final = out / "final"
    lora_files = list(final.glob("*.safetensors"))
    assert lora_files
    from safetensors.torch import load_file

    lora = load_file(str(lora_files[0]))
    lora_b = [v for k, v in lora.items() if "lora_B" in k or "lora_up" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: it was trained
    base, tuned = stock_output(name, pipe_dir, None), stock_output(name, pipe_dir, final)
    assert base.shape == tuned.shape and np.isfinite(tuned).all()
    assert np.array_equal(base, stock_output(name, pipe_dir, None))  # sampling is deterministic...
    assert np.abs(base - tuned).max() > 1e-5 * np.abs(base).max(), "the LoRA did not change the stock pipeline's output"


@pytest.mark.parametrize("name", ["sd3", "wan", "stable_audio"])
def test_rwr_and_sft_steps_via_cli(name, pipelines, tmp_path):
    data = write_media(name, tmp_path, with_rewards=True)
    for objective in ("rwr", "sft"):
        cfg = write_config(name, pipelines(name), data, tmp_path, objective=objective,
                           output_dir=str(tmp_path / objective))
        assert main(["train", str(cfg)]) == 0
        rows = read_metrics(tmp_path / objective / "metrics.jsonl")
        assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)


@pytest.mark.parametrize("name", ["sd3", "wan", "stable_audio"])
def test_encoding_cache_gives_the_same_losses_without_vae_or_text_encoders(name, pipelines, tmp_path):
    from mmalign.config import load_config
    from mmalign.recipes.offline_preference import OfflinePreference

    data = write_media(name, tmp_path)
    plain = write_config(name, pipelines(name), data, tmp_path, output_dir=str(tmp_path / "plain"))
    assert main(["train", str(plain)]) == 0
    cached = write_config(name, pipelines(name), data, tmp_path, output_dir=str(tmp_path / "cached"),
                          adapter={"cache_dir": str(tmp_path / "cache")})
    assert main(["cache", str(cached)]) == 0
    assert (tmp_path / "cache" / "index.json").is_file()
    recipe = OfflinePreference(load_config(cached))
    recipe.run()
    assert recipe.adapter.pipe is None  # VAE and text encoders never loaded
    # The cache holds what the VAE and text encoders give for the same records...
    from mmalign.adapters.diffusion import EncodingCache, record_key

    fresh = DiffusionAdapter(str(pipelines(name)), resolution=FAMILIES[name][1].get("resolution"),
                             num_frames=FAMILIES[name][1].get("num_frames"), seconds=FAMILIES[name][1].get("seconds"),
                             reference_copy=False)
    pairs = load_pairs(data)
    encoded = fresh.encode_batch(fresh.collate([fresh.encode(p) for p in pairs]))
    cache = EncodingCache(tmp_path / "cache")
    for i, pair in enumerate(pairs):
        item = cache.get(record_key(pair))
        torch.testing.assert_close(item["chosen"], encoded["latents"][i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(item["rejected"], encoded["latents"][len(pairs) + i], rtol=1e-4, atol=1e-5)
        for k, v in encoded["cond"].items():
            torch.testing.assert_close(item[f"cond.{k}"], v[i].float(), rtol=1e-4, atol=1e-5)
    # ...so training from it follows the same losses (to float noise from batching, amplified by beta).
    loss = lambda d: [r["loss"] for r in read_metrics(tmp_path / d / "metrics.jsonl") if r["split"] == "train"]
    assert loss("cached") == pytest.approx(loss("plain"), rel=1e-3)


@pytest.mark.parametrize("name", ["sd3", "wan", "stable_audio", "sd15"])
def test_sample_command_writes_media(name, pipelines, tmp_path):
    data = write_media(name, tmp_path)
    cfg = write_config(name, pipelines(name), data, tmp_path)
    assert main(["sample", str(cfg), "sample.weights=base"]) == 0
    files = sorted(p.name for p in (tmp_path / "out" / "samples").iterdir())
    expected = {"image": ["0000_0.png", "grid.png"], "video": ["0000_0.gif", "0000_0.mp4"],
                "audio": ["0000_0.wav", "0000_0_spec.png"]}[FAMILIES[name][0]]
    assert files == expected


def test_noise_and_timestep_are_shared_by_the_pair_and_by_policy_and_reference(pipelines, tmp_path):
    data = write_media("sd3", tmp_path)
    adapter = DiffusionAdapter(str(pipelines("sd3")), lora=LoraSettings(r=4), resolution=16)
    pairs = load_pairs(data)
    same = pairs[0]
    same.rejected = same.chosen  # a pair of identical images must score identically
    batch = adapter.collate([adapter.encode(p) for p in [same, pairs[1]]])
    aux = adapter.prepare(batch, torch.Generator().manual_seed(0))
    assert torch.equal(aux["noise"][:2], aux["noise"][2:]) and torch.equal(aux["t"][:2], aux["t"][2:])
    assert not torch.equal(aux["noise"][0], aux["noise"][1])  # but differ between pairs
    with torch.no_grad():
        policy = adapter.score(batch, aux)
        with adapter.reference():
            ref = adapter.score(batch, aux)
    assert policy[0].item() == policy[2].item()
    torch.testing.assert_close(policy, ref)  # LoRA B = 0 at the start: policy == reference exactly
    with torch.no_grad():
        for n, p in adapter.model.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)
        moved = adapter.score(batch, aux)
        with adapter.reference():
            torch.testing.assert_close(adapter.score(batch, aux), ref)  # the reference did not move
    assert not torch.allclose(moved, ref)


def test_flow_score_and_flow_dpo_loss_equal_a_hand_computation(pipelines):
    from mmalign.objectives import FlowDPO

    adapter = DiffusionAdapter(str(pipelines("sd3")), lora=LoraSettings(r=4), resolution=16)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 16, 8, 8, generator=g)
    cond = {"encoder_hidden_states": torch.randn(1, 5, 32, generator=g), "pooled_projections": torch.randn(1, 32, generator=g)}
    noise = torch.randn(1, 16, 8, 8, generator=g).repeat(2, 1, 1, 1)
    t = torch.tensor([0.3, 0.3])
    batch, aux = {"latents": x0, "cond": cond}, {"noise": noise, "t": t}
    with torch.no_grad():
        scores = adapter.score(batch, aux)
        for n, p in adapter.model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
        policy = adapter.score(batch, aux)
        with adapter.reference():
            ref = adapter.score(batch, aux)
        # by hand: x_t = 0.7 x0 + 0.3 eps, target eps - x0, timestep 300
        x_t = 0.7 * x0 + 0.3 * noise
        pred = adapter.model(hidden_states=x_t, timestep=torch.tensor([300.0, 300.0]),
                             encoder_hidden_states=cond["encoder_hidden_states"].repeat(2, 1, 1),
                             pooled_projections=cond["pooled_projections"].repeat(2, 1), return_dict=False)[0]
        by_hand = -((pred - (noise - x0)) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(policy, by_hand)
    torch.testing.assert_close(ref, scores)
    loss, _ = FlowDPO(beta=50.0)(policy, ref)
    margin = (policy[0] - policy[1]) - (ref[0] - ref[1])
    assert loss.item() == pytest.approx(-torch.nn.functional.logsigmoid(50.0 * margin).item(), rel=1e-5)


def test_max_sequence_length_sets_the_t5_tokens_of_the_prompt_encoding(pipelines):
    """Train with the text length you sample with: the option reaches ``pipe.encode_prompt``."""
    default = DiffusionAdapter(str(pipelines("sd3")), resolution=16, reference_copy=False)
    short = DiffusionAdapter(str(pipelines("sd3")), resolution=16, reference_copy=False, max_sequence_length=8)
    pipe = default.pipeline()
    media = torch.zeros(1, 3, 16, 16)
    n_default = default.encode_batch({"media": media, "prompts": ["a cat"]})["cond"]["encoder_hidden_states"].shape[1]
    n_short = short.encode_batch({"media": media, "prompts": ["a cat"]})["cond"]["encoder_hidden_states"].shape[1]
    clip_tokens = pipe.tokenizer.model_max_length
    assert (n_default, n_short) == (clip_tokens + 256, clip_tokens + 8)
    with pytest.raises(ValueError, match="max_sequence_length"):
        DiffusionAdapter(str(pipelines("stable_audio")), seconds=0.5, max_sequence_length=8)


def test_bad_media_fails_with_record_line_and_path(pipelines, tmp_path):
    data = write_media("sd3", tmp_path)
    rows = data.read_text().splitlines()
    rows[2] = json.dumps({"prompt": "p", "chosen": "missing.png", "rejected": "0_chosen.png"})
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows[3] = json.dumps({"prompt": "p", "chosen": "0_chosen.png", "rejected": "broken.png"})
    data.write_text("\n".join(rows) + "\n")
    cfg = write_config("sd3", pipelines("sd3"), data, tmp_path)
    from mmalign.data import DataError

    adapter = DiffusionAdapter(str(pipelines("sd3")), resolution=16, reference_copy=False)
    pairs = load_pairs(data)
    with pytest.raises(DataError, match=r"pairs.jsonl:3: field 'chosen': .*missing.png: file not found"):
        adapter.encode(pairs[2])
    with pytest.raises(DataError, match=r"pairs.jsonl:4: field 'rejected': .*broken.png"):
        adapter.encode(pairs[3])
    assert main(["train", str(cfg)]) == 2


def test_full_finetuning_saves_a_denoiser_the_stock_pipeline_loads(pipelines, tmp_path):
    from mmalign.config import load_config
    from mmalign.recipes.offline_preference import OfflinePreference

    pipe_dir = pipelines("sd15")
    data = write_media("sd15", tmp_path)
    cfg = write_config("sd15", pipe_dir, data, tmp_path, adapter={"lora": None}, optim={"lr": 1e-3})
    recipe = OfflinePreference(load_config(cfg))
    recipe.run()
    from diffusers import UNet2DConditionModel

    initial = UNet2DConditionModel.from_pretrained(pipe_dir, subfolder="unet").state_dict()
    ref = recipe.adapter.ref_model.state_dict()
    assert all(torch.equal(ref[k], initial[k]) for k in initial)  # the frozen copy never moved
    trained = UNet2DConditionModel.from_pretrained(tmp_path / "out" / "final" / "unet").state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)
    base, tuned = stock_output("sd15", pipe_dir, None), stock_output("sd15", pipe_dir, tmp_path / "out" / "final")
    assert np.abs(base - tuned).max() > 1e-5


def test_bf16_mixed_precision_keeps_frozen_parts_in_bf16(pipelines, tmp_path):
    from mmalign.config import load_config
    from mmalign.recipes.offline_preference import OfflinePreference

    data = write_media("sd3", tmp_path)
    cfg = write_config("sd3", pipelines("sd3"), data, tmp_path, accelerate={"mixed_precision": "bf16", "log_with": []},
                       adapter={"gradient_checkpointing": True})
    recipe = OfflinePreference(load_config(cfg))
    recipe.run()
    adapter = recipe.adapter
    assert adapter.pipe.vae.dtype == torch.bfloat16 and adapter.pipe.text_encoder.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in adapter.model.parameters() if p.requires_grad)
    assert any(p.dtype == torch.bfloat16 for p in adapter.model.parameters() if not p.requires_grad)
    losses = [r["loss"] for r in read_metrics(tmp_path / "out" / "metrics.jsonl") if r["split"] == "train"]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_gradient_checkpointing_gives_the_same_gradients(pipelines, tmp_path):
    data = write_media("sd3", tmp_path)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        adapter = DiffusionAdapter(str(pipelines("sd3")), lora=LoraSettings(r=4), resolution=16,
                                   gradient_checkpointing=checkpointing)
        with torch.no_grad():
            for n, p in adapter.model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(n)))
        adapter.model.train()
        batch = adapter.collate([adapter.encode(p) for p in load_pairs(data)[:2]])
        aux = adapter.prepare(batch, torch.Generator().manual_seed(0))
        adapter.score(batch, aux).sum().backward()
        grads.append({n: p.grad.clone() for n, p in adapter.model.named_parameters() if p.requires_grad})
    assert adapter.model.is_gradient_checkpointing
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6)


def test_encode_keeps_paths_not_pixels_and_sees_files_change(pipelines, tmp_path):
    import os

    data = write_media("sd3", tmp_path)
    adapter = DiffusionAdapter(str(pipelines("sd3")), resolution=16, reference_copy=False)
    pair = load_pairs(data)[0]
    enc = adapter.encode(pair)
    assert not any(isinstance(v, torch.Tensor) for v in enc.values())  # nothing decoded is held
    Image.new("RGB", (16, 16), (9, 9, 9)).save(tmp_path / pair.chosen)
    os.utime(tmp_path / pair.chosen, ns=(1, 1))
    assert adapter.encode(pair)["stat"] != enc["stat"]  # the reference-score cache fingerprint moves
    batch = adapter.collate([adapter.encode(pair)])
    assert batch["media"].shape == (2, 3, 16, 16)
    assert torch.allclose(batch["media"][0], torch.full((3, 16, 16), 9 / 127.5 - 1), atol=1e-2)
