"""The chords gym world (audio): shipped base pipeline, ground-truth reward, prompts, exemplars (assets/gym/chords)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from mmalign import registry
from mmalign.gym.base import get_world
from mmalign.gym.chords import (EVAL_TEMPLATES, NUM_SAMPLES, SAMPLE_RATE, TRAIN_TEMPLATES, Chords, ChordsReward,
                                add_noise, all_contents, chord_features, chord_prompt, hard_clip, parse_prompt,
                                synth_clip)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def world() -> Chords:
    return get_world("chords")


@pytest.fixture(scope="module")
def reward() -> ChordsReward:
    return ChordsReward()


@pytest.fixture(scope="module")
def clean(world):
    """One clean synthesised clip (random partial phases) per held-out prompt: ``[126, 1, 2048]``."""
    g = torch.Generator().manual_seed(0)
    prompts = world.prompts("eval")
    return torch.stack([synth_clip(*parse_prompt(p), generator=g) for p in prompts]), prompts


@pytest.fixture(scope="module")
def base_samples(world):
    from diffusers import DiffusionPipeline

    torch.set_num_threads(1)
    pipe = DiffusionPipeline.from_pretrained(world.base_path)
    pipe.set_progress_bar_config(disable=True)
    prompts = world.prompts("eval", 84, seed=0)  # every (root, quality, timbre) twice
    out = pipe(prompts, generator=torch.Generator().manual_seed(0), output_type="np", **world.sample_kwargs)
    return type(pipe).__name__, torch.as_tensor(out.audios).float(), prompts


def test_base_is_a_stock_stable_audio_pipeline_and_samples_the_world_shape(base_samples, world):
    name, samples, prompts = base_samples
    assert name == "StableAudioPipeline"
    assert samples.shape == (len(prompts), 1, NUM_SAMPLES)  # [B, C, T] mono at 4 kHz
    assert world.sample_rate == SAMPLE_RATE and world.modality == "audio"
    assert samples.abs().amax(-1).median() > 0.1  # sounds, not silence


def test_reward_is_registered_and_shaped(world, reward, clean):
    built = registry.build("reward", {"name": "gym_chords"})
    assert isinstance(built, ChordsReward) and isinstance(world.reward(), ChordsReward)
    assert reward.dims == world.dims == ("pitch", "quality", "timbre") and reward.modality == "audio"
    audio, prompts = clean
    r = reward(audio[:5], prompts[:5])
    assert r.shape == (5, 3) and ((r >= 0) & (r <= 1)).all()
    with pytest.raises(ValueError, match="one prompt per sample"):
        reward(audio[:5], None)


def test_clean_chords_score_high_and_wrong_notes_noise_clipping_silence_low(reward, clean):
    audio, prompts = clean
    right = reward(audio, prompts)
    assert (right > 0.95).all(), right.min(0)
    # each prompt asked of another content's clip: a different root, or quality, or timbre
    shifted = prompts[1:] + prompts[:1]
    wrong = reward(audio, shifted)
    asks_other_notes = torch.tensor([parse_prompt(a)[0] != parse_prompt(b)[0] for a, b in zip(prompts, shifted)])
    asks_other_timbre = torch.tensor([parse_prompt(a)[1] != parse_prompt(b)[1] for a, b in zip(prompts, shifted)])
    assert (wrong[asks_other_notes, 0] < 0.7).all() and (wrong[asks_other_timbre, 2] < 0.05).all()
    g = torch.Generator().manual_seed(1)
    noisy = reward(torch.stack([add_noise(x, 10.0, g) for x in audio]), prompts)
    clipped = reward(torch.stack([hard_clip(x, 4.0) for x in audio]), prompts)
    silent = reward(torch.zeros_like(audio[:4]), prompts[:4])
    assert noisy[:, 1].max() < 0.2 and clipped[:, 1].mean() < 0.5 and (silent == 0).all()
    assert (noisy[:, 0] > 0.9).all()  # noise does not hide the notes from the pitch term


@pytest.mark.parametrize("prompt, notes, timbre", [
    ("a C major chord, soft", (48, 52, 55), "soft"), ("bright A minor chord", (57, 60, 64), "bright"),
    ("a B note, soft tone", (59,), "soft"), ("play a G major chord, bright timbre", (55, 59, 62), "bright"),
    ("A soft F note", (53,), "soft"), ("an F# minor chord", (54, 57, 61), None), ("a Bb note, Bright", (58,), "bright"),
])
def test_parse_prompt(prompt, notes, timbre):
    assert parse_prompt(prompt) == (notes, timbre)


@pytest.mark.parametrize("prompt", ["a soft chord", "c major chord", "A chord"])
def test_parse_prompt_refuses_prompts_without_a_note(prompt):
    with pytest.raises(ValueError, match="no note or chord"):
        parse_prompt(prompt)


def test_reward_resamples_other_rates(reward, clean):
    audio, prompts = clean
    at_16k = F.interpolate(audio[:12], scale_factor=4, mode="linear", align_corners=False)
    at_4k = reward(audio[:12], prompts[:12])
    assert torch.allclose(reward(at_16k, prompts[:12], sample_rate=16000), at_4k, atol=0.03)
    assert torch.allclose(reward(audio[:12].expand(-1, 2, -1), prompts[:12]), at_4k, atol=1e-5)  # stereo → mono


def test_base_is_imperfect_but_sounds_like_chords(reward, clean, base_samples):
    _, samples, prompts = base_samples
    audio, clean_prompts = clean
    base = reward(samples, prompts)
    real = reward(audio, clean_prompts).mean(0)
    mean = base.mean(0)
    assert 0.4 < mean[0] < real[0] - 0.2  # pitch: room to align (built at ≈ 0.6)
    assert 0.4 < mean[1] < real[1] - 0.1  # quality: some clips are noisy or clipped
    assert mean[2] < real[2] - 0.05  # timbre: sometimes the other timbre
    assert reward(audio, clean_prompts).sum(1).min() > base.sum(1).mean() + 0.3


def test_train_and_eval_prompts_are_disjoint(world):
    train, evaluation = world.prompts("train"), world.prompts("eval")
    assert len(train) == 42 * len(TRAIN_TEMPLATES) and len(evaluation) == 42 * len(EVAL_TEMPLATES)
    assert not set(train) & set(evaluation) and not set(TRAIN_TEMPLATES) & set(EVAL_TEMPLATES)
    contents = {(parse_prompt(p)) for p in evaluation}
    assert contents == {parse_prompt(p) for p in train} and len(contents) == 42


def test_sampled_prompts_are_seeded_and_balanced(world):
    a = world.prompts("train", 84, seed=0)
    assert a == world.prompts("train", 84, seed=0) and a != world.prompts("train", 84, seed=1)
    assert set(a) <= set(world.prompts("train"))
    counts = {c: 0 for c in all_contents()}
    for p in a:
        counts[next(c for c in all_contents() if parse_prompt(chord_prompt(*c)) == parse_prompt(p))] += 1
    assert set(counts.values()) == {2}
    assert set(world.prompts("eval", 500)) == set(world.prompts("eval"))
    with pytest.raises(ValueError, match="split"):
        world.prompts("test")


def test_exemplars_exist_load_and_are_the_target_style(world, reward):
    from mmalign.data import media

    folder = world.exemplar_dir
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    wavs = sorted(folder.glob("*.wav"))
    assert len(wavs) == len(rows) == 16 and sum(p.stat().st_size for p in wavs) < 200_000
    audio = torch.stack([media.load_audio(folder / r["file_name"], SAMPLE_RATE) for r in rows])
    assert audio.shape == (16, 1, NUM_SAMPLES)
    for r in rows:  # soft major chords
        notes, timbre = parse_prompt(r["prompt"])
        assert timbre == "soft" and [m - notes[0] for m in notes] == [0, 4, 7]
    assert (reward(audio, [r["prompt"] for r in rows]) > 0.95).all()


def test_features_for_diversity_and_as_a_dragon_embedder(world, clean):
    from mmalign.rewards.exemplar import ExemplarReward

    audio, prompts = clean
    feats = world.features(audio[:10])
    assert feats.shape == (10, 24) and torch.isfinite(feats).all()
    assert torch.allclose(chord_features(audio[:10]), feats)
    dragon = ExemplarReward(embedder={"type": "callable", "fn": "mmalign.gym.chords:chord_features",
                                      "modality": "audio"}, exemplars=str(world.exemplar_dir), mode="kernel")
    soft_major = [i for i, p in enumerate(prompts) if "major" in p and "soft" in p]
    bright_minor = [i for i, p in enumerate(prompts) if "minor" in p and "bright" in p]
    on_style = dragon(audio[soft_major], sample_rate=SAMPLE_RATE)[:, 0]
    off_style = dragon(audio[bright_minor], sample_rate=SAMPLE_RATE)[:, 0]
    assert on_style.mean() > off_style.mean() + 0.2


@pytest.mark.slow
def test_generate_train_and_eval_loop_via_cli(world, tmp_path, capsys):
    """A few steps of the whole loop: pairs from the base (WAVs), Diffusion-DPO with LoRA, eval (~60 s)."""
    from mmalign.cli import main
    from mmalign.data import load_pairs

    cfg = {
        "recipe": "offline_preference", "output_dir": str(tmp_path / "run"),
        "adapter": {"name": "diffusion", "pretrained": str(world.base_path), "lora": {"r": 4, "alpha": 4},
                    "seconds": world.seconds},
        "objective": {"name": "diffusion_dpo", "beta": 500.0},
        "data": {"name": "generated_pairs", "world": "chords", "num_prompts": 4, "candidates": 3,
                 "eval_fraction": 0.25},
        "optim": {"name": "adamw", "lr": 1e-3},
        "train": {"max_steps": 3, "batch_size": 2, "progress": False, "plot": False},
        "accelerate": {"log_with": []},
        "eval": {"world": "chords", "num_prompts": 2, "samples_per_prompt": 2},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    pairs = load_pairs(tmp_path / "run" / "generated" / "pairs.jsonl")
    assert len(pairs) == 4 * 3 and str(pairs[0].chosen).endswith(".wav")
    result = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    assert result["n_samples"] == 4 and set(result["reward"]) == {"pitch", "quality", "timbre"}
    assert 0 <= result["win_rate"] <= 1 and result["vendi"]["base"] >= 1
