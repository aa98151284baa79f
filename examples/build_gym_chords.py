"""Rebuild the "chords" gym world under ``assets/gym/chords/``: base pipeline and DRAGON exemplars.

1. ``base/``: a complete tiny stock ``StableAudioPipeline`` (4 kHz mono, 0.512 s clips):

   - **VAE**: an ``AutoencoderOobleck`` (hop 2048 = one latent frame per clip, 40 latent channels)
     whose weights are *set*, not trained: its Snake activations are the identity (α = e⁻³⁰), its
     residual units are switched off (zero output convolutions), its strided convolutions move
     samples into channels (space-to-depth, 8 × 4 × 64) and the last one holds a dictionary of 40
     "atoms": the 19 notes MIDI 48..66 in each timbre (soft: a sine; bright: odd harmonics at 1/n),
     each with its timbre's envelope (:data:`mmalign.gym.chords.ENVELOPES`) and every partial at phase
     0, plus two fixed white-noise atoms (RMS 10× below a note's, so that the transformer's small
     errors on those channels stay faint). The decoder is ``audio = Σ_c z_c · atom_c`` exactly; the
     encoder is the least-squares inverse (pseudo-inverse), exact on every sum of atoms. Stored in
     float16 (``from_pretrained`` loads it as float32; round-trip error ≈ 1e-3).

     Why not a trained codec: on a 2-core CPU a tiny Oobleck trained for reconstruction (L1 +
     multi-resolution STFT, 300-400 steps, hops 32 to 2048, random or fixed phases, 1-2 CPU minutes
     each) did not learn pitch: its reconstructions scored 0.15-0.22 on ``pitch`` against 1.0 for its
     inputs. A convolutional decoder must learn phase-coherent oscillators, which takes far longer.
     The analytic codec puts all the learning where alignment acts: in the transformer.
   - **text**: a tiny T5 encoder with a tokenizer trained on the captions; trained end to end with
     the transformer (through the pipeline's own ``encode_prompt``);
   - **transformer**: a 4-layer ``StableAudioDiTModel`` (width 64) on the one-frame latent, trained
     for 2,500 steps of 128 (AdamW, lr 2e-3, cosine decay)
     with the cosine v-objective of :class:`mmalign.adapters.diffusion_families.StableAudio`
     (``x_t = cos θ·x₀ + sin θ·ε``, target ``cos θ·ε − sin θ·x₀``, θ = tπ/2, t uniform on the
     scheduler's range), the family's own ``noisy_and_target``/``forward``, 10% empty captions
     (zeros, as the pipeline's unconditional branch) so that guidance works; EMA weights are saved;
   - **scheduler**: the stock ``CosineDPMSolverMultistepScheduler`` (σ 0.3..500, v-prediction).

   Training corpus (drawn in latent space, i.e. as sums of atoms; decoded it is the synthesised
   audio): a root from C..B in octave 3 × major / minor / single note × soft / bright; note
   amplitudes ×U(0.85, 1.15); peak U(0.3, 0.6); 20% with broadband noise (the noise atoms) at
   3..20 dB SNR; 10% overdriven to a peak of 1.3..2.5 (the audio clips at ±1 when written, and the
   reward's clipping term sees |x| ≥ 0.99). Captions: one of the nine templates (train and eval);
   30% have root, quality and timbre re-drawn at random; noise and overdrive are never captioned.
2. ``exemplars/``: 16 WAVs (4 kHz mono, 16-bit) of the DRAGON target style -- clean soft major
   chords at a moderate level (peak 0.35..0.55), every root, in the base's own atoms (so the style
   is reachable) -- and ``metadata.jsonl`` with a caption per file.
3. ``build.json``: what the build measured (base vs clean synthesised clips on every dimension,
   sampling speed), and ``base_samples.png``: spectrograms of base samples. As built: the base on
   336 held-out prompts scores pitch 0.71, quality 0.75, timbre 0.88 (clean synthesised clips: 1.00
   on each; the base with guidance 2: pitch 0.95, timbre 0.99).

Deterministic on a given machine and thread count. Run:

    python examples/build_gym_chords.py             # ~3.5 CPU minutes (~5 min wall on a shared 2-core CPU)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import torch.nn.functional as F

from mmalign.gym.build import finish_build, fresh_build_dir, limit_threads, log, train_step
from mmalign.gym.chords import (EVAL_TEMPLATES, INTERVALS, NUM_SAMPLES, OCTAVE_BASE, PITCH_CLASS, SAMPLE_RATE, SECONDS,
                                TIMBRES, TRAIN_TEMPLATES, Chords, ChordsReward, add_noise, all_contents, analyse,
                                chord_prompt, hard_clip, note_wave, parse_prompt, synth_clip, to_mono)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = TRAIN_TEMPLATES + EVAL_TEMPLATES
NOTES = tuple(range(OCTAVE_BASE, OCTAVE_BASE + 19))  # MIDI 48..66: every chord tone of C3..B3 chords
NOISE_ATOMS = 2
ATOM_SCALE = 0.1  # a note atom's fundamental amplitude; keeps the corpus latents near unit scale
# A noise atom's RMS: 10× below the notes', so that the transformer's small errors on the noise channels
# stay inaudible (≈ 45 dB down) while noisy clips still reach 3 dB SNR with coefficients of ~10.
NOISE_ATOM_RMS = 0.01
TEXT_LENGTH = 24  # T5 tokenizer model_max_length (every caption is shorter)



def atom_index(midi: int, timbre: str) -> int:
    return (midi - NOTES[0]) * len(TIMBRES) + TIMBRES.index(timbre)


def make_atoms() -> torch.Tensor:
    """``[40, 2048]`` float64: 19 notes × 2 timbres (index :func:`atom_index`), then 2 noise atoms."""
    atoms = [ATOM_SCALE * note_wave(m, t) for m in NOTES for t in TIMBRES]
    g = torch.Generator().manual_seed(11)
    t = torch.arange(NUM_SAMPLES, dtype=torch.float64) / SAMPLE_RATE
    ramp = torch.clamp(t / 0.02, max=1) * torch.clamp((t[-1] - t) / 0.02, max=1)
    for _ in range(NOISE_ATOMS):
        noise = torch.randn(NUM_SAMPLES, generator=g, dtype=torch.float64)
        atoms.append(NOISE_ATOM_RMS * noise / noise.pow(2).mean().sqrt() * ramp)
    return torch.stack(atoms)


# --------------------------------------------------------------------------- 1a. the analytic VAE


def _set_weight_norm(conv, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Make a ``weight_norm``-ed conv's weight equal ``weight`` (all-zero rows: g = 0, v = 1)."""
    weight = weight.to(conv.weight_v.dtype)
    norm = weight.flatten(1).norm(dim=1)
    v = weight.clone()
    v[norm == 0] = 1.0
    conv.weight_v.data.copy_(v)
    conv.weight_g.data.copy_(norm.view(conv.weight_g.shape))
    if conv.bias is not None:
        conv.bias.data.copy_(torch.zeros_like(conv.bias) if bias is None else bias)


def analytic_vae(atoms: torch.Tensor, ratios=(8, 4, 64)):
    """An ``AutoencoderOobleck`` with ``decode(z) = Σ_c z_c atom_c`` and ``encode = pinv`` (see the docstring)."""
    from diffusers import AutoencoderOobleck

    n_latent, n_samples = atoms.shape
    assert math.prod(ratios) == n_samples, (ratios, n_samples)
    hid = 2 * n_latent  # the encoder's last conv gives mean and scale: 2 × latent channels
    torch.manual_seed(0)
    vae = AutoencoderOobleck(encoder_hidden_size=hid, downsampling_ratios=list(ratios),
                             channel_multiples=[1] * len(ratios), decoder_channels=n_latent,
                             decoder_input_channels=n_latent, audio_channels=1, sampling_rate=SAMPLE_RATE)
    enc, dec = vae.encoder, vae.decoder
    with torch.no_grad():
        for m in vae.modules():
            if type(m).__name__ == "Snake1d":  # x + sin²(αx)/β with α = e⁻³⁰: the identity
                m.alpha.fill_(-30.0)
                m.beta.fill_(0.0)
            elif type(m).__name__ == "OobleckResidualUnit":  # residual branch off: the identity
                _set_weight_norm(m.conv2, torch.zeros_like(m.conv2.weight))
        w = torch.zeros_like(enc.conv1.weight)
        w[0, 0, enc.conv1.padding[0]] = 1
        _set_weight_norm(enc.conv1, w)
        per = 1  # samples per frame held in channels so far
        for block, stride in zip(enc.block[:-1], ratios[:-1]):  # space-to-depth
            conv, w = block.conv1, torch.zeros_like(block.conv1.weight)
            for r in range(stride):
                for k in range(per):
                    w[per * r + k, k, r + conv.padding[0]] = 1
            _set_weight_norm(conv, w)
            per *= stride
        frames = n_samples // per
        conv = enc.block[-1].conv1  # the pseudo-inverse, over `frames` frames of `per` channels
        pinv = torch.linalg.pinv(atoms.double().T).view(n_latent, frames, per)
        w = torch.zeros_like(conv.weight)
        w[:n_latent, :per, conv.padding[0]:conv.padding[0] + frames] = pinv.permute(0, 2, 1).float()
        _set_weight_norm(conv, w)
        w = torch.zeros_like(enc.conv2.weight)
        w[torch.arange(n_latent), torch.arange(n_latent), 1] = 1
        bias = torch.cat([torch.zeros(n_latent), torch.full((n_latent,), -10.0)])  # posterior std ≈ 1e-4
        _set_weight_norm(enc.conv2, w, bias)
        w = torch.zeros_like(dec.conv1.weight)
        w[torch.arange(n_latent), torch.arange(n_latent), dec.conv1.padding[0]] = 1
        _set_weight_norm(dec.conv1, w)
        conv = dec.block[0].conv_t1  # the dictionary: [in = atom, out = channel, tap = frame]
        w = torch.zeros_like(conv.weight)
        dictionary = atoms.view(n_latent, frames, per).permute(0, 2, 1).float()
        w[:, :per, conv.padding[0]:conv.padding[0] + frames] = dictionary
        _set_weight_norm(conv, w)
        for block, stride in zip(dec.block[1:], ratios[::-1][1:]):  # depth-to-space
            per //= stride
            conv, w = block.conv_t1, torch.zeros_like(block.conv_t1.weight)
            for r in range(stride):
                for k in range(per):
                    w[per * r + k, k, r + conv.padding[0]] = 1
            _set_weight_norm(conv, w)
        w = torch.zeros_like(dec.conv2.weight)
        w[0, 0, dec.conv2.padding[0]] = 1
        _set_weight_norm(dec.conv2, w)
    return vae.eval().requires_grad_(False)


# --------------------------------------------------------------------------- 1b. corpus


def corpus(atoms: torch.Tensor, n: int, args, seed: int):
    """``n`` latents ``[n, 40, 1]``, their true contents and their (noisy) captions."""
    rng = random.Random(seed)
    contents = all_contents()
    signal_atoms = atoms[: len(NOTES) * len(TIMBRES)]
    noise_atoms = atoms[len(NOTES) * len(TIMBRES):]
    z = torch.zeros(n, atoms.shape[0], dtype=torch.float64)
    truth, captions, kinds = [], [], []
    for i in range(n):
        root, quality, timbre = rng.choice(contents)
        midi = OCTAVE_BASE + PITCH_CLASS[root]
        for interval in INTERVALS[quality]:
            z[i, atom_index(midi + interval, timbre)] = rng.uniform(0.85, 1.15)
        peak = (z[i, : len(signal_atoms)] @ signal_atoms).abs().max()
        u = rng.random()
        kind = "overdriven" if u < args.overdrive else "noisy" if u < args.overdrive + args.noise else "clean"
        target = rng.uniform(1.3, 2.5) if kind == "overdriven" else rng.uniform(0.3, 0.6)
        z[i] *= target / peak
        if kind == "noisy":
            signal = z[i, : len(signal_atoms)] @ signal_atoms
            c = torch.tensor([rng.gauss(0, 1) for _ in range(NOISE_ATOMS)], dtype=torch.float64)
            noise = c @ noise_atoms
            snr = rng.uniform(3.0, 20.0)
            c *= (signal.pow(2).mean() / 10 ** (snr / 10) / noise.pow(2).mean()).sqrt()
            z[i, len(signal_atoms):] = c
        caption = (root, quality, timbre)
        if rng.random() < args.caption_noise:
            caption = rng.choice(contents)
        truth.append((root, quality, timbre))
        kinds.append(kind)
        captions.append(chord_prompt(*caption, rng.choice(TEMPLATES)))
    return z.float()[:, :, None], truth, captions, kinds


# --------------------------------------------------------------------------- 1c. text + transformer


def text_encoder(corpus_text: list[str]):
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    from mmalign.utils.tiny_diffusers import CAPTIONS, train_tokenizer

    torch.manual_seed(3)
    tok = train_tokenizer(T5Tokenizer, corpus=CAPTIONS + corpus_text, extra_ids=0, model_max_length=TEXT_LENGTH)
    longest = max(len(tok(p).input_ids) for p in corpus_text)
    assert longest <= TEXT_LENGTH, f"a caption has {longest} tokens > {TEXT_LENGTH}"
    te = T5EncoderModel(T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    ))
    return te, tok, longest


def make_transformer(args, n_latent: int):
    from diffusers import StableAudioDiTModel

    torch.manual_seed(5)
    return StableAudioDiTModel(
        sample_size=1, in_channels=n_latent, out_channels=n_latent, num_layers=args.layers,
        attention_head_dim=args.width // 4, num_attention_heads=4, num_key_value_attention_heads=2,
        cross_attention_dim=args.width, time_proj_dim=32, global_states_input_dim=64, cross_attention_input_dim=32,
    )


def train_transformer(pipe, family, latents, captions, args, t0) -> None:
    """Cosine v-objective with the family's own code; T5 trains along; EMA weights replace both."""
    g = torch.Generator().manual_seed(6)
    unique = sorted(set(captions))
    index = torch.tensor([unique.index(c) for c in captions])
    modules = [pipe.transformer, pipe.text_encoder] if args.train_text else [pipe.transformer]
    trained = torch.nn.ModuleList(modules).train().requires_grad_(True)
    frozen = None
    if not args.train_text:
        pipe.text_encoder.requires_grad_(False)
        with torch.no_grad():
            frozen = pipe.encode_prompt(unique, "cpu", do_classifier_free_guidance=False)
    ema = copy.deepcopy(trained).eval().requires_grad_(False)
    opt = torch.optim.AdamW(trained.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = 100

    def lr_at(step):
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    with torch.no_grad():
        start, end = pipe.encode_duration(0.0, SECONDS, "cpu", False, 1)
    running = None
    for step in range(args.steps):
        idx = torch.randint(len(latents), (args.batch_size,), generator=g)
        ids = index[idx]
        if frozen is not None:
            embeds = frozen[ids]
        else:
            used, inverse = torch.unique(ids, return_inverse=True)
            batch_prompts = [unique[i] for i in used.tolist()]
            embeds = pipe.encode_prompt(batch_prompts, "cpu", do_classifier_free_guidance=False)[inverse]
        b = len(idx)
        ctx = torch.cat([embeds, start.expand(b, -1, -1), end.expand(b, -1, -1)], dim=1)
        drop = torch.rand(b, generator=g) < args.caption_dropout  # the pipeline's unconditional branch: zeros
        ctx = torch.where(drop[:, None, None], torch.zeros_like(ctx), ctx)
        cond = {"encoder_hidden_states": ctx, "global_hidden_states": torch.cat([start, end], dim=2).expand(b, -1, -1)}
        x0 = latents[idx]
        eps = torch.randn(x0.shape, generator=g)
        t = family.sample_train_timesteps(b, {}, generator=g, device="cpu")
        x_t, target = family.noisy_and_target(x0, eps, t, {})
        loss = F.mse_loss(family.forward(pipe.transformer, x_t, t, cond).float(), target.float())
        train_step(loss, trained, ema, opt, sched, step, max_decay=args.ema)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 250 == 0 or step == args.steps - 1:
            log(f"transformer step {step:5d}  loss {running:.4f}  lr {sched.get_last_lr()[0]:.2e}", t0)
    if args.train_text:
        transformer, te = ema
        pipe.register_modules(transformer=transformer, text_encoder=te)
    else:
        pipe.register_modules(transformer=ema[0])


# --------------------------------------------------------------------------- measurements


@torch.no_grad()
def sample(pipe, prompts, seed=0, batch=256, **kwargs) -> torch.Tensor:
    """``[N, 1, T]`` from the stock pipeline, one seeded generator per sample (as the gym's sampler)."""
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(seed + j) for j in range(i, min(i + batch, len(prompts)))]
        out.append(torch.as_tensor(pipe(prompts[i:i + batch], generator=gens, output_type="np", **kwargs).audios))
    return torch.cat(out).float()


def summary(r: torch.Tensor) -> dict:
    return {d: round(r[:, i].mean().item(), 4) for i, d in enumerate(ChordsReward.dims)}


def spectrogram_grid(audio: torch.Tensor, prompts: list[str], path: Path, ncol: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(prompts)
    rows = math.ceil(n / ncol)
    fig, axes = plt.subplots(rows, ncol, figsize=(3 * ncol, 1.8 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            spec, *_ = ax.specgram(audio[i].mean(0).numpy(), NFFT=256, noverlap=192, Fs=SAMPLE_RATE, cmap="magma")
            top = 10 * math.log10(max(float(spec.max()), 1e-12))
            ax.images[-1].set_clim(top - 60, top)  # 60 dB of range: notes, partials and any noise floor
            ax.set_ylim(0, 1200)
            ax.set_title(prompts[i][:30], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "assets" / "gym" / "chords"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: fastest on a shared 2-core machine, and the reference numbers)")
    parser.add_argument("--corpus-size", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=2500, help="transformer training steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--train-text", type=int, default=1,
                        help="1: train the T5 encoder along (0: keep it random and frozen; faster, worse base)")
    parser.add_argument("--caption-noise", type=float, default=0.3, help="share of captions re-drawn at random")
    parser.add_argument("--noise", type=float, default=0.2, help="share of clips with broadband noise")
    parser.add_argument("--overdrive", type=float, default=0.1, help="share of overdriven (clipping) clips")
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--eval-samples", type=int, default=336, help="base samples per split for build.json")
    args = parser.parse_args()

    limit_threads(args.threads)
    from diffusers import (CosineDPMSolverMultistepScheduler, DiffusionPipeline, StableAudioPipeline,
                           StableAudioProjectionModel)

    from mmalign.adapters.diffusion_families import StableAudio
    from mmalign.data import media

    t0 = time.time()
    out = Path(args.out)
    tmp = fresh_build_dir(out)

    atoms = make_atoms()
    vae = analytic_vae(atoms)
    latents, truth, captions, kinds = corpus(atoms, args.corpus_size, args, seed=1)
    with torch.no_grad():
        audio = vae.decode(latents[:256]).sample
        back = vae.encode(audio).latent_dist.mode()
    rec = (back - latents[:256]).abs().max().item()
    log(f"analytic VAE: {len(atoms)} atoms, decode/encode round trip max error {rec:.2e}; corpus {len(latents)} "
        f"latents, rms {latents.pow(2).mean().sqrt():.3f}, kinds " +
        ", ".join(f"{k} {kinds.count(k) / len(kinds):.2f}" for k in ("clean", "noisy", "overdriven")), t0)
    wrong = sum(parse_prompt(c) != parse_prompt(chord_prompt(*t)) for c, t in zip(captions, truth)) / len(truth)
    log(f"captions: {wrong:.3f} name other notes or another timbre than the clip's", t0)

    prompts_all = [chord_prompt(r, q, t, tpl) for tpl in TEMPLATES for r, q, t in all_contents()]
    te, tok, longest = text_encoder(prompts_all)
    log(f"T5 tokenizer: {len(tok)} tokens, longest caption {longest} tokens", t0)
    projection = StableAudioProjectionModel(text_encoder_dim=32, conditioning_dim=32, min_value=0, max_value=1)
    scheduler = CosineDPMSolverMultistepScheduler(sigma_min=0.3, sigma_max=500, sigma_data=1.0,
                                                  sigma_schedule="exponential", solver_order=2,
                                                  prediction_type="v_prediction")
    pipe = StableAudioPipeline(vae=vae, text_encoder=te, projection_model=projection, tokenizer=tok,
                               transformer=make_transformer(args, len(atoms)), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    family = StableAudio()
    family.t_range = tuple(math.atan(s) * 2 / math.pi for s in (0.3, 500.0))
    family.seconds = SECONDS
    train_transformer(pipe, family, latents, captions, args, t0)

    base = tmp / "base"
    pipe.vae.to(torch.float16)  # the VAE's dictionary is most of the size; loads back as float32
    pipe.save_pretrained(base, safe_serialization=True)
    log("base pipeline saved", t0)

    # ---------------------------------------------------------------- exemplars (DRAGON target style)
    ex_dir = tmp / "exemplars"
    rng = random.Random(7)
    rows = []
    for i in range(16):
        root = ("C", "D", "E", "F", "G", "A", "B")[i % 7]
        midi = OCTAVE_BASE + PITCH_CLASS[root]
        z = torch.zeros(len(atoms), dtype=torch.float64)
        for interval in INTERVALS["major"]:
            z[atom_index(midi + interval, "soft")] = rng.uniform(0.85, 1.15)
        wave = z @ atoms
        wave = wave * rng.uniform(0.35, 0.55) / wave.abs().max()
        name = f"exemplar_{i:02d}_{root}_major_soft.wav"
        media.save_audio(wave.float()[None], ex_dir / name, SAMPLE_RATE)
        rows.append({"file_name": name, "prompt": chord_prompt(root, "major", "soft")})
    (ex_dir / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    # ---------------------------------------------------------------- measurements, from the saved files
    pipe = DiffusionPipeline.from_pretrained(base)
    pipe.set_progress_bar_config(disable=True)
    world, reward = Chords(), ChordsReward()
    kwargs = dict(world.sample_kwargs)
    report = {"build_seconds": None, "sample_kwargs": kwargs, "args": vars(args), "vae_roundtrip_max_error": rec}
    for split, n in (("train", args.eval_samples // 2), ("eval", args.eval_samples)):
        ps = world.prompts(split, n, seed=0)
        start = time.time()
        s = sample(pipe, ps, seed=0, **kwargs)
        dt = time.time() - start
        r = reward(s, ps, sample_rate=SAMPLE_RATE)
        a = analyse(to_mono(s, SAMPLE_RATE))
        report[f"base_{split}"] = {**summary(r), "n": n, "clips_per_s": round(n / dt, 1),
                                   "share_pitch_ge_0.9": round((r[:, 0] >= 0.9).float().mean().item(), 3),
                                   "share_quality_ge_0.9": round((r[:, 1] >= 0.9).float().mean().item(), 3),
                                   "mean_no_noise": round(a["no_noise"].mean().item(), 4),
                                   "mean_no_clip": round(a["no_clip"].mean().item(), 4),
                                   "mean_level": round(a["level"].mean().item(), 4)}
        log(f"base on {split} prompts: {report[f'base_{split}']}", t0)
    ps = world.prompts("eval", args.eval_samples // 2, seed=0)
    s = sample(pipe, ps, seed=0, **{**kwargs, "guidance_scale": 2.0})
    report["base_eval_guidance_2"] = summary(reward(s, ps, sample_rate=SAMPLE_RATE))
    log(f"base on eval prompts, guidance 2: {report['base_eval_guidance_2']}", t0)
    g = torch.Generator().manual_seed(9)
    clean = torch.stack([synth_clip(*parse_prompt(p), peak=0.45, generator=g) for p in ps])
    report["clean_synth_random_phase"] = summary(reward(clean, ps))
    noisy = torch.stack([add_noise(c, 10.0, g) for c in clean])
    report["clean_plus_noise_10dB"] = summary(reward(noisy, ps))
    clipped = torch.stack([hard_clip(c, 3.0) for c in clean])
    report["clean_overdriven_x3"] = summary(reward(clipped, ps))
    exemplars = torch.stack([media.load_audio(ex_dir / r["file_name"], SAMPLE_RATE) for r in rows])
    report["exemplars"] = summary(reward(exemplars, [r["prompt"] for r in rows]))
    log("clean synthesised: {clean_synth_random_phase}; +noise 10 dB: {clean_plus_noise_10dB}; "
        "overdriven: {clean_overdriven_x3}; exemplars: {exemplars}".format(**report), t0)
    grid = [chord_prompt(r, q, "soft" if i % 2 else "bright") for i, (r, q) in
            enumerate((r, q) for r in ("C", "E", "A") for q in ("major", "minor", "note"))]
    grid = [p for p in grid for _ in range(2)][:16]
    spectrogram_grid(sample(pipe, grid, seed=1, **kwargs), grid, tmp / "base_samples.png")
    finish_build(tmp, out, report, t0)


if __name__ == "__main__":
    main()
