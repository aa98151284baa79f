"""Rebuild the "moving_digits" gym world under ``assets/gym/moving_digits/``: judge, VQ statistics, base pipeline.

1. ``classifier.safetensors`` + ``classifier.json``: a small translation-invariant CNN (the TA judge) trained on
   single frames of *clean* real clips drawn from 80% of the ``load_digits`` digits (with mild noise and
   contrast augmentation); its accuracy on frames of the other 20% is reported.
2. ``vq_stats.json``: real frames' stroke statistics for the VQ proxy (the digits world's, on 32×32 frames).
3. ``base/``: a complete stock ``LTXPipeline``:
   - VAE: an ``AutoencoderKLLTXVideo`` set in closed form to a linear codec: it patchifies each clip into
     8×8-pixel × 2-frame patches and keeps their coordinates on the top 48 principal components of real clips'
     patches (99.4% of the variance); the decoder maps them back. The encoder's and decoder's RMSNorm + SiLU
     heads are made linear by a constant channel of 1e6 that dominates the norm (see :func:`pca_vae`).
     Latents are ``[48, F/2, 4, 4]``: 64 transformer tokens for an 8-frame 32×32 clip.
   - text: a tiny T5 with a tokenizer trained on the captions, trained end to end with the transformer;
   - transformer: a 4-layer ``LTXVideoTransformer3DModel`` (width 128) trained by flow matching (``x_t = (1−t)x₀ + tε``,
     target ``ε − x₀``, timestep ``1000·t``, t uniform, through mmalign's own LTX family code) on real clips whose
     captions ("a 7 moving left", 12 templates) name a re-drawn random digit 30% of the time and, independently,
     a re-drawn random direction 30% of the time; 10% of captions are empty (classifier-free guidance works).
4. ``build.json``: what the build measured (judge accuracy, TA/MQ/VQ of the base, of real clips, of real clips
   through the VAE and of degraded clips, sampling speed) and ``base_samples.png`` (each row a clip's frames).

**Why LTX and not Wan.** ``WanPipeline`` derives its frame count from the VAE's temporal factor, and a Wan VAE
gets temporal compression only from down-sampling stages that halve the resolution too; its decoder then
up-samples by nearest-neighbour + convolution, which no fixed linear map can invert, so the VAE must be
trained. Measured here on 2 CPU cores: a 180k-parameter Wan-2.2-style VAE (patch 2, one down stage) reached
only reconstruction MSE 0.03 (blurred blobs, digits unreadable) after 400 steps / 95 s. With temporal factor 1
instead, the stock pipeline adds a frame to every request (``num_frames % 1 != 1`` is always true). LTX's VAE
compresses by patchifying alone, which is exactly invertible, so a closed-form codec works and the whole CPU
budget goes to the transformer. The one liberty: diffusers sizes the LTX encoder's first and the decoder's
last convolution as ``in_channels · patch_size²`` although it patchifies ``patch_size_t`` frames too, so the
VAE is configured with ``in_channels = out_channels = 6`` (3 colours × ``patch_size_t`` 2) and reads and
writes ordinary RGB videos.

**Width.** The transformer must carry 48 latent channels per token, which a width-64 model cannot: at width 64
(1500 steps × batch 32) the base drew flickering blobs (TA 0.02, MQ 0.008, VQ 0.73; loss stalled at 0.46), and it
could not even memorise 8 clips in 600 steps (loss 0.31, samples unrecognisable), while width 128 did (loss 0.13,
judge TA 0.70 on them). Normalising each latent channel to unit variance instead of one global scale made it
worse (loss ~1.3 of ~2, TA 0.02): the global scale weights the loss as pixel-space MSE. Width 128 trained
3000 steps × batch 32 (0.24 s a step, ~12 minutes) reaches loss 0.26, still falling: more steps would help.

Deterministic on a given machine and thread count. Run:

    python examples/build_gym_moving_digits.py            # about 14 minutes on one CPU thread
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import torch.nn.functional as F

from mmalign.adapters.diffusion import shift_sigmas
from mmalign.gym.build import finish_build, fresh_build_dir, holdout_split, limit_threads, log, train_step
from mmalign.gym.moving_digits import (CANVAS, DIRECTIONS, FRAMES, T5_LENGTH, TEMPLATES, FrameClassifier,
                                       MovingDigits, MovingDigitsReward, all_prompts, glyph_pool, load_glyphs, make_clips,
                                       placements, render_clips, vq_statistics)

ROOT = Path(__file__).resolve().parents[1]
PATCH, PATCH_T = 8, 2  # set from --patch / --patch-t in main()
BIG = 1e6  # the constant channel that linearises the VAE's RMSNorm + SiLU heads



# --------------------------------------------------------------------------- 1. judge


def train_classifier(args, t0):
    glyphs, labels = load_glyphs()
    g = torch.Generator().manual_seed(1)
    hold, train = holdout_split(len(glyphs), g)
    torch.manual_seed(1)
    model = FrameClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = args.classifier_steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for step in range(steps):
        clips, y, _ = make_clips(16, seed=10_000 + step, pool=train)
        frames = ((clips[:, 0] + 1) / 2).reshape(16 * FRAMES, 1, CANVAS, CANVAS)
        y = y.repeat_interleave(FRAMES)
        # mild degradations (contrast, noise) so the judge reads imperfect samples, as a reward model should
        gain = 0.6 + 0.4 * torch.rand(len(frames), 1, 1, 1, generator=g)
        noise = 0.1 * torch.rand(len(frames), 1, 1, 1, generator=g) * torch.randn(frames.shape, generator=g)
        frames = (frames * gain + noise).clamp(0, 1)
        loss = F.cross_entropy(model(frames), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval().requires_grad_(False)
    clips, y, _ = make_clips(400, seed=2, pool=hold)
    with torch.no_grad():
        probs = model(((clips[:, 0] + 1) / 2).reshape(-1, 1, CANVAS, CANVAS)).softmax(-1)
    y = y.repeat_interleave(FRAMES)
    acc = (probs.argmax(-1) == y).float().mean().item()
    ta = probs.gather(1, y[:, None]).mean().item()
    log(f"classifier: held-out frame accuracy {acc:.4f}, mean prob of the true digit {ta:.4f}", t0)
    return model, {"holdout_frame_accuracy": acc, "holdout_true_prob": ta, "holdout_digits": len(hold),
                   "holdout_indices_seed": 1}, hold


# --------------------------------------------------------------------------- 3. base pipeline


def gray_patches(clips: torch.Tensor) -> torch.Tensor:
    """``[N·tokens, 128]`` gray patch vectors in the order the LTX encoder flattens channel 0's patches."""
    x = clips[:, :1]
    b, c, f, h, w = x.shape
    x = x.reshape(b, c, f // PATCH_T, PATCH_T, h // PATCH, PATCH, w // PATCH, PATCH)
    x = x.permute(0, 1, 3, 7, 5, 2, 4, 6).flatten(1, 4)  # as LTXVideoEncoder3d.forward
    return x.permute(0, 2, 3, 4, 1).reshape(-1, x.shape[1])


def pca_vae(args, t0):
    """An ``AutoencoderKLLTXVideo`` whose encoder keeps each patch's top principal components and whose decoder
    maps them back: both heads are ``RMSNorm → SiLU → conv``; a constant channel of ``BIG`` dominates the norm
    (so it scales the data channels by ``√C / BIG``, up to 1e-10) and keeps them where ``SiLU(u) = u/2`` to 1e-4,
    so the conv after it can undo both exactly enough. Only the centre (current-frame) taps are non-zero."""
    from diffusers import AutoencoderKLLTXVideo

    k = args.latent_channels
    clips, _, _ = make_clips(args.pca_clips, seed=3, pool=glyph_pool(args.glyphs_per_digit))
    patches = gray_patches(clips).double()
    mean = patches.mean(0)
    cov = (patches - mean).T @ (patches - mean) / len(patches)
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0), evecs.flip(1)
    basis = evecs[:, :k].T.float()  # [k, 128], orthonormal rows
    kept = (evals[:k].sum() / evals.sum()).item()
    vae = AutoencoderKLLTXVideo(
        in_channels=3 * PATCH_T, out_channels=3 * PATCH_T, latent_channels=k, block_out_channels=(k + 1,),
        decoder_block_out_channels=(k + 1,), layers_per_block=(0, 0), decoder_layers_per_block=(0, 0),
        spatio_temporal_scaling=(False,), decoder_spatio_temporal_scaling=(False,), decoder_inject_noise=(False, False),
        upsample_residual=(False,), upsample_factor=(1,), patch_size=PATCH, patch_size_t=PATCH_T,
        timestep_conditioning=False, down_block_types=("LTXVideoDownBlock3D",),
    )
    gain = 2 * BIG / math.sqrt(k + 1)  # undoes RMSNorm (÷ BIG/√(k+1)) and SiLU (× 1/2) on the data channels
    q = basis.shape[1]
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        enc, dec = vae.encoder, vae.decoder
        # encoder conv_in (causal: the current frame is time tap 2): y = basis · (gray patch − mean), + BIG channel
        for c in range(3):
            enc.conv_in.conv.weight[:k, c * q:(c + 1) * q, 2, 1, 1] = basis / 3
        enc.conv_in.conv.bias[:k] = -(basis @ mean.float())
        enc.conv_in.conv.bias[k] = BIG
        idx = torch.arange(k)
        enc.conv_out.conv.weight[idx, idx, 2, 1, 1] = gain
        enc.conv_out.conv.bias[k] = -30.0  # log-variance: the posterior is a point (std e^-15)
        # decoder conv_in (not causal: the current frame is time tap 1): z, + BIG channel
        dec.conv_in.conv.weight[idx, idx, 1, 1, 1] = 1.0
        dec.conv_in.conv.bias[k] = BIG
        for c in range(3):
            dec.conv_out.conv.weight[c * q:(c + 1) * q, :k, 1, 1, 1] = basis.T * gain
            dec.conv_out.conv.bias[c * q:(c + 1) * q] = mean.float()
        # pipeline-side normalisation: one global scale (pixel-space weighting of the flow-matching loss)
        vae.latents_mean.zero_()
        vae.latents_std.fill_(math.sqrt(evals[:k].mean().item()))
    vae.eval().requires_grad_(False)
    test, _, _ = make_clips(256, seed=4)
    with torch.no_grad():
        rec = vae.decode(vae.encode(test).latent_dist.mode()).sample
    mse = F.mse_loss(rec, test).item()
    log(f"vae: PCA codec, {k} of {q} components keep {kept:.4f} of the variance; reconstruction mse {mse:.5f} "
        f"(pixels in [-1, 1]); latents std {vae.latents_std[0]:.3f}", t0)
    return vae, basis, mean.float(), {"components": k, "variance_kept": kept, "reconstruction_mse": mse}


def latents_of(clips, basis, mean, vae):
    """Normalised latents ``[N, k, F/2, 4, 4]`` of clips: what ``vae.encode`` + the LTX family give, computed directly."""
    n = clips.shape[0]
    y = (gray_patches(clips) - mean) @ basis.T  # [N·tokens, k]
    grid = (FRAMES // PATCH_T, CANVAS // PATCH, CANVAS // PATCH)
    z = y.reshape(n, *grid, -1).permute(0, 4, 1, 2, 3)
    return (z - vae.latents_mean.view(1, -1, 1, 1, 1)) / vae.latents_std.view(1, -1, 1, 1, 1)


def text_encoder():
    """A tiny T5 encoder whose blocks output exactly zero (the attention and feed-forward output projections are
    zero), so its output is ``final_layer_norm(embedding)`` of each token on its own: a trainable bag of token
    embeddings. Word order is not needed here (the digit and the direction are different words), and it makes
    the text embeddings independent of the padding: LTXPipeline runs T5 without the attention mask and pads to
    ``max_sequence_length``, so any other T5 would see its embeddings change with that setting. With a T5
    tokenizer trained on the captions (and the generic tiny-pipeline corpus)."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    from mmalign.utils.tiny_diffusers import CAPTIONS, train_tokenizer

    tok = train_tokenizer(T5Tokenizer, corpus=CAPTIONS + all_prompts(), extra_ids=0, model_max_length=128)
    torch.manual_seed(5)
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, relative_attention_num_buckets=8,
        relative_attention_max_distance=32, feed_forward_proj="gated-gelu", dropout_rate=0.0,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
    ))
    with torch.no_grad():
        for block in t5.encoder.block:
            block.layer[0].SelfAttention.o.weight.zero_()
            block.layer[1].DenseReluDense.wo.weight.zero_()
    return t5.eval().requires_grad_(False), tok


def embed_captions(pipe, captions: list[str], length: int) -> dict[str, torch.Tensor]:
    """What ``LTX.encode_prompts`` gives for ``captions`` (the pipeline's T5 path), computed as the bag of token
    embeddings it is, with ``length`` text slots: the extra slots of a longer padding are masked out."""
    ids = pipe.tokenizer(captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    t5 = pipe.text_encoder
    embeds = t5.encoder.final_layer_norm(t5.shared(ids.input_ids))
    return {"encoder_hidden_states": embeds, "encoder_attention_mask": ids.attention_mask.bool()}


def make_transformer(args):
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(6)
    return LTXVideoTransformer3DModel(
        in_channels=args.latent_channels, out_channels=args.latent_channels, patch_size=1, patch_size_t=1,
        num_attention_heads=4, attention_head_dim=args.width // 4, cross_attention_dim=args.width,
        num_layers=args.layers, caption_channels=32,
    )


def train_transformer(pipe, family, basis, mean, args, t0) -> None:
    """Flow matching on noisy captions through mmalign's LTX family (the code DPO trains with); the token
    embeddings of the T5 train along; EMA weights replace both at the end."""
    glyphs, labels = load_glyphs()
    pool = glyph_pool(args.glyphs_per_digit)
    g = torch.Generator().manual_seed(7)
    longest = max(len(ids) for ids in pipe.tokenizer(all_prompts()).input_ids)
    assert longest <= args.text_length, f"a prompt has {longest} tokens, more than --text-length {args.text_length}"
    with torch.no_grad():  # the short context used here is what the stock 128 slots give, exactly
        probe = all_prompts()[:3] + [""]
        short = embed_captions(pipe, probe, args.text_length)
        stock = family.encode_prompts(pipe, probe, "cpu")
        mask = stock["encoder_attention_mask"]
        assert not mask[:, args.text_length:].any() and torch.allclose(
            stock["encoder_hidden_states"][:, :args.text_length], short["encoder_hidden_states"], atol=1e-6)
    trained = torch.nn.ModuleList([pipe.transformer, pipe.text_encoder.shared]).train().requires_grad_(True)
    ema = copy.deepcopy(trained).eval().requires_grad_(False)
    opt = torch.optim.AdamW([{"params": pipe.transformer.parameters()},
                             {"params": pipe.text_encoder.shared.parameters(), "lr": args.lr * args.embedding_lr_mult}],
                            lr=args.lr, weight_decay=0.0)
    warmup = 100
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / args.steps)))
    wrong_digit = wrong_direction = 0
    running = None
    for step in range(args.steps):
        b = args.batch_size
        idx = pool[torch.randint(len(pool), (b,), generator=g)]
        dirs = torch.randint(4, (b,), generator=g)
        start, offset = placements(b, g)
        x0 = latents_of(render_clips(glyphs[idx], dirs, start, offset), basis, mean, pipe.vae)
        cap_digit, cap_dir = labels[idx].clone(), dirs.clone()
        redraw = torch.rand(b, generator=g) < args.digit_noise
        cap_digit[redraw] = torch.randint(10, (int(redraw.sum()),), generator=g)
        redraw = torch.rand(b, generator=g) < args.direction_noise
        cap_dir[redraw] = torch.randint(4, (int(redraw.sum()),), generator=g)
        wrong_digit += int((cap_digit != labels[idx]).sum())
        wrong_direction += int((cap_dir != dirs).sum())
        template = torch.randint(len(TEMPLATES), (b,), generator=g)
        empty = torch.rand(b, generator=g) < args.caption_dropout
        captions = ["" if e else TEMPLATES[t].format(d=int(d), m=DIRECTIONS[m])
                    for e, t, d, m in zip(empty.tolist(), template.tolist(), cap_digit, cap_dir)]
        cond = embed_captions(pipe, captions, args.text_length)
        eps = torch.randn(x0.shape, generator=g)
        u = torch.sigmoid(torch.randn(b, generator=g)) if args.logit_normal else torch.rand(b, generator=g)
        t = shift_sigmas(u, args.shift)  # the scheduler's shift: samples and trains more at high noise
        x_t, target = family.noisy_and_target(x0, eps, t, {})
        pred = family.forward(pipe.transformer, x_t, t, cond)
        loss = F.mse_loss(pred.float(), target.float())
        train_step(loss, trained, ema, opt, sched, step, max_decay=args.ema)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 250 == 0 or step == args.steps - 1:
            log(f"transformer step {step:5d}  loss {running:.4f}  lr {sched.get_last_lr()[0]:.2e}", t0)
    seen = args.steps * args.batch_size
    log(f"captions: {wrong_digit / seen:.3f} named a wrong digit, {wrong_direction / seen:.3f} a wrong direction", t0)
    pipe.text_encoder.shared.load_state_dict(ema[1].state_dict())
    pipe.register_modules(transformer=ema[0])


# --------------------------------------------------------------------------- 4. measurements


@torch.no_grad()
def sample(pipe, prompts, seed=0, batch=250, **kwargs) -> torch.Tensor:
    """``[N, 3, F, H, W]`` in [-1, 1] from the stock pipeline (as mmalign's sampler returns them)."""
    out = []
    for i in range(0, len(prompts), batch):
        g = torch.Generator().manual_seed(seed + i)
        frames = pipe(prompts[i:i + batch], generator=g, output_type="pt", **kwargs).frames  # [B, F, 3, H, W] in [0, 1]
        out.append(frames.permute(0, 2, 1, 3, 4) * 2 - 1)
    return torch.cat(out)


def clip_grid(samples: torch.Tensor, path: Path) -> None:
    """One row per clip, its frames left to right, 3× nearest-neighbour upscaled."""
    from PIL import Image

    s = ((samples.mean(1) + 1) * 127.5).clamp(0, 255).byte()  # [N, F, H, W]
    n, f, h, w = s.shape
    grid = torch.zeros(n * (h + 1) + 1, f * (w + 1) + 1, dtype=torch.uint8) + 64
    for i in range(n):
        for j in range(f):
            grid[1 + i * (h + 1):1 + i * (h + 1) + h, 1 + j * (w + 1):1 + j * (w + 1) + w] = s[i, j]
    Image.fromarray(grid.numpy()).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


def summary(reward, samples, prompts) -> dict:
    p = reward.parts(samples, prompts)
    return {k: round(v.mean().item(), 4) for k, v in p.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "assets" / "gym" / "moving_digits"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: fastest on a shared 2-core machine, and the reference numbers)")
    parser.add_argument("--classifier-steps", type=int, default=400)
    parser.add_argument("--latent-channels", type=int, default=48, help="principal components kept per patch")
    parser.add_argument("--pca-clips", type=int, default=3000)
    parser.add_argument("--patch", type=int, default=8, help="VAE patch size (pixels)")
    parser.add_argument("--patch-t", type=int, default=2, help="VAE patch size (frames)")
    parser.add_argument("--glyphs-per-digit", type=int, default=20, help="digits real clips are made of (per class)")
    parser.add_argument("--steps", type=int, default=3000, help="transformer training steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--digit-noise", type=float, default=0.3, help="share of captions whose digit is re-drawn")
    parser.add_argument("--direction-noise", type=float, default=0.3, help="share whose direction is re-drawn")
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--text-length", type=int, default=T5_LENGTH, help="text slots while training (masked beyond)")
    parser.add_argument("--embedding-lr-mult", type=float, default=10.0, help="learning-rate factor of the token embeddings")
    parser.add_argument("--shift", type=float, default=3.0, help="flow timestep shift (scheduler and training)")
    parser.add_argument("--logit-normal", type=int, default=1, help="1: logit-normal training timesteps, 0: uniform")
    parser.add_argument("--eval-samples", type=int, default=400)
    parser.add_argument("--judge-from", default=None, help="copy the judge from this built world (experiments)")
    args = parser.parse_args()
    global PATCH, PATCH_T
    PATCH, PATCH_T = args.patch, args.patch_t

    limit_threads(args.threads)
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, LTXPipeline
    from safetensors.torch import save_file

    from mmalign.adapters.diffusion_families import LTX

    t0 = time.time()
    out = Path(args.out)
    tmp = fresh_build_dir(out)

    if args.judge_from:  # experiments: reuse a built judge
        for name in ("classifier.safetensors", "classifier.json"):
            shutil.copy(Path(args.judge_from) / name, tmp / name)
        judge_info = json.loads((tmp / "classifier.json").read_text())
        hold = torch.randperm(len(load_glyphs()[0]), generator=torch.Generator().manual_seed(1))[:judge_info["holdout_digits"]]
    else:
        classifier, judge_info, hold = train_classifier(args, t0)
        save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(tmp / "classifier.safetensors"))
        (tmp / "classifier.json").write_text(json.dumps({**classifier.config, **judge_info}, indent=1) + "\n")
    real_stats, _, _ = make_clips(500, seed=5)
    frames = ((real_stats[:, 0] + 1) / 2).reshape(-1, 1, CANVAS, CANVAS)
    (tmp / "vq_stats.json").write_text(json.dumps(vq_statistics(frames), indent=1) + "\n")
    log("judge and VQ statistics saved", t0)

    vae, basis, mean, vae_info = pca_vae(args, t0)
    te, tok = text_encoder()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=args.shift)
    pipe = LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=te, tokenizer=tok, transformer=make_transformer(args))
    pipe.set_progress_bar_config(disable=True)
    family = LTX()
    family.spatial, family.temporal = PATCH, PATCH_T  # what configure() reads from a saved VAE config
    check, _, _ = make_clips(8, seed=6)
    with torch.no_grad():
        direct = latents_of(check, basis, mean, vae)
        stock = family.encode_media(pipe, check)
    assert torch.allclose(direct, stock, atol=1e-3), (direct - stock).abs().max()
    train_transformer(pipe, family, basis, mean, args, t0)
    base = tmp / "base"
    pipe.save_pretrained(base, safe_serialization=True)
    log("base pipeline saved", t0)

    # ---------------------------------------------------------------- measurements, from the saved files
    pipe = DiffusionPipeline.from_pretrained(base)
    pipe.set_progress_bar_config(disable=True)
    reward = MovingDigitsReward(str(tmp))
    world = MovingDigits()
    kwargs = dict(world.sample_kwargs)
    report = {"build_seconds": None, "judge": judge_info, "vae": vae_info, "sample_kwargs": kwargs, "args": vars(args)}
    n = args.eval_samples
    for split in ("train", "eval"):
        ps = world.prompts(split, n, seed=0)
        start = time.time()
        s = sample(pipe, ps, seed=0, **kwargs)
        dt = time.time() - start
        report[f"base_{split}"] = {**summary(reward, s, ps), "clips_per_s": round(n / dt, 1)}
        log(f"base on {split} prompts: {report[f'base_{split}']}  ({n / dt:.0f} clips/s at "
            f"{kwargs['num_inference_steps']} steps)", t0)
        if split == "train":
            train_samples, train_prompts = s, ps
    real, digits, dirs = make_clips(n, seed=8)
    real_prompts = [f"a {d} moving {DIRECTIONS[m]}" for d, m in zip(digits.tolist(), dirs.tolist())]
    with torch.no_grad():
        through_vae = pipe.vae.decode(pipe.vae.encode(real).latent_dist.mode()).sample.clamp(-1, 1)
    g = torch.Generator().manual_seed(9)
    flicker = (real + 1) * (0.55 + 0.45 * torch.rand(n, 1, FRAMES, 1, 1, generator=g)) - 1
    wrong_way = [f"a {d} moving {DIRECTIONS[m ^ 1]}" for d, m in zip(digits.tolist(), dirs.tolist())]
    noise = torch.rand(n, 1, FRAMES, CANVAS, CANVAS, generator=g).mul(2).sub(1).expand(n, 3, FRAMES, CANVAS, CANVAS)
    for name, clips, prompts in (("real", real, real_prompts), ("real_through_vae", through_vae, real_prompts),
                                 ("real_flickering", flicker, real_prompts), ("real_wrong_direction", real, wrong_way),
                                 ("uniform_noise", noise, real_prompts)):
        report[name] = summary(reward, clips, prompts)
        log(f"{name}: {report[name]}", t0)
    grid_prompts = [f"a {d} moving {m}" for d in range(10) for m in DIRECTIONS[:2]] + \
                   [f"a {d} moving {m}" for d in range(10) for m in DIRECTIONS[2:]]
    clip_grid(sample(pipe, grid_prompts, seed=1, **kwargs), tmp / "base_samples.png")
    finish_build(tmp, out, report, t0)


if __name__ == "__main__":
    main()
