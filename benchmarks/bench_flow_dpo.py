"""Flow-DPO LoRA step on one SD3-family pipeline: mmalign without / with its encoding cache, and a
per-step loop written the way diffusers' Diffusion-DPO training example does it.

The script builds one random SD3 pipeline (``StableDiffusion3Pipeline``: SD3Transformer2DModel,
AutoencoderKL, two CLIPTextModelWithProjection, T5EncoderModel, locally trained tokenizers) whose
text encoders are large relative to the transformer, as in real SD3, saves it with
``save_pretrained``, writes ``--pairs`` random image pairs, and measures three variants:

- ``mmalign``: ``offline_preference`` recipe, ``flow_dpo``, LoRA; the VAE and the three text
  encoders run inside ``adapter.prepare`` every step.
- ``mmalign_cache``: ``mmalign cache`` first (timed once), then the same training from the cache;
  the VAE and text encoders are never loaded.
- ``diffusers``: our own loop in the style of diffusers' ``train_diffusion_dpo.py`` /
  ``train_dreambooth_lora_sd3.py``: the full pipeline, each step PIL -> VAE latents and
  ``pipe.encode_prompt``, shared noise and SD3 sigmas per pair, the LoRA transformer on the
  concatenated chosen/rejected batch, the reference as a second forward with the adapters
  disabled, the DPO loss inline, ``accelerator.backward``, grad clipping, AdamW.

Same for all: fp32, batch ``--batch-size`` pairs, LoRA r=alpha=``--rank`` on to_q/to_k/to_v/to_out.0
(B initialised to zero, so every variant's first loss is ln 2), beta ``--beta``, AdamW lr ``--lr``,
constant schedule, grad-norm clip 1.0, uniform t with the scheduler's shift, T5 length 256 (the
pipeline's default). Each run is a subprocess with ``--threads`` torch/OpenMP threads; ``--rounds``
rounds alternate the order. Reported, pooled over rounds:

- step time: median over the steps after ``--warmup``. mmalign: the recipe's ``step_time`` from
  metrics.jsonl; diffusers: a timer around the whole step (PNG loading included). Also the part
  spent in the VAE and text encoders, and this process's CPU time per step.
- contention: per step, the share of the machine's CPU used by *other* processes (/proc/stat);
  "uncontended" steps are those where the others left this run's threads their cores.
- memory: RSS after setup (weights are memory-mapped, so this undercounts them), RSS after
  training, peak RSS (ru_maxrss), and ``torch.cuda.max_memory_allocated`` on a GPU (medians).

    python benchmarks/bench_flow_dpo.py                       # defaults: a few minutes on 2 cores
    python benchmarks/bench_flow_dpo.py --resolution 64 --t5-layers 4 --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
VARIANTS = ("mmalign", "mmalign_cache", "diffusers")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def rss_mb() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def peaks() -> dict:
    import torch

    out = {"rss_end": rss_mb(), "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["cuda_peak"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def cpu_sample() -> tuple[float, int, int]:
    """(wall time, busy jiffies of the whole machine, jiffies of this process)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return time.perf_counter(), sum(f[:8]) - f[3] - f[4], int(own[11]) + int(own[12])


def others_load(a: tuple, b: tuple) -> float:
    """Share of the machine's CPU that other processes used between two samples (0 = quiet)."""
    return max(0.0, (b[1] - a[1] - (b[2] - a[2])) / ((b[0] - a[0]) * os.sysconf("SC_CLK_TCK") * os.cpu_count()))


# --------------------------------------------------------------------------- setup (parent)
def build_pipeline(a, out: Path) -> dict:
    """Random SD3 pipeline saved to ``out``; returns parameter counts (millions) per component."""
    import diffusers as d
    import torch
    from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config,
                              T5EncoderModel, T5Tokenizer)

    from mmalign.utils.tiny_diffusers import train_tokenizer  # offline tokenizers of the real classes

    torch.manual_seed(0)
    clip_tok, t5_tok = train_tokenizer(CLIPTokenizer, model_max_length=77), train_tokenizer(T5Tokenizer, extra_ids=0)

    def clip():
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(clip_tok), hidden_size=a.clip_dim, intermediate_size=4 * a.clip_dim,
            num_hidden_layers=a.clip_layers, num_attention_heads=a.clip_dim // 64, max_position_embeddings=77,
            projection_dim=a.clip_dim, bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id))

    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=a.t5_dim, d_kv=64, num_heads=a.t5_dim // 64, d_ff=a.t5_dim * 5 // 2,
        num_layers=a.t5_layers, feed_forward_proj="gated-gelu", pad_token_id=t5_tok.pad_token_id,
        eos_token_id=t5_tok.eos_token_id, decoder_start_token_id=t5_tok.pad_token_id))
    chans = tuple(int(c) for c in a.vae_channels.split(","))
    vae = d.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=chans, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * len(chans), up_block_types=("UpDecoderBlock2D",) * len(chans),
        norm_num_groups=min(32, chans[0]), sample_size=a.resolution, scaling_factor=1.5305, shift_factor=0.0609,
        use_quant_conv=False, use_post_quant_conv=False)
    latent = a.resolution // 2 ** (len(chans) - 1)
    transformer = d.SD3Transformer2DModel(
        sample_size=latent, patch_size=2, in_channels=16, out_channels=16, num_layers=a.layers,
        attention_head_dim=64, num_attention_heads=a.heads, joint_attention_dim=a.t5_dim,
        caption_projection_dim=64 * a.heads, pooled_projection_dim=2 * a.clip_dim, pos_embed_max_size=latent)
    pipe = d.StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, scheduler=d.FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=clip(), tokenizer=clip_tok, text_encoder_2=clip(), tokenizer_2=clip_tok,
        text_encoder_3=t5, tokenizer_3=t5_tok)
    pipe.save_pretrained(out, safe_serialization=True)
    size = lambda m: round(sum(p.numel() for p in m.parameters()) / 1e6, 1)
    return {"transformer": size(transformer), "vae_encoder": size(vae.encoder), "clip_x2": 2 * size(pipe.text_encoder),
            "t5": size(t5)}


def write_pairs(root: Path, n: int, res: int) -> Path:
    import numpy as np
    from PIL import Image

    rng, rows = np.random.default_rng(0), []
    for i in range(n):
        row = {"prompt": f"a photo of object {i} on a wooden table, soft light, high quality"}
        for k in ("chosen", "rejected"):
            Image.fromarray((rng.random((res, res, 3)) * 255).astype("uint8")).save(root / f"{i}_{k}.png")
            row[k] = f"{i}_{k}.png"
        rows.append(row)
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "pairs.jsonl"


def write_config(a, pipe_dir: Path, data: Path, out: Path, cache_dir: Path | None) -> Path:
    import yaml

    adapter = {"name": "diffusion", "pretrained": str(pipe_dir), "resolution": a.resolution,
               "lora": {"r": a.rank, "alpha": a.rank, "target_modules": LORA_TARGETS}}
    if cache_dir:
        adapter["cache_dir"] = str(cache_dir)
    cfg = {"recipe": "offline_preference", "seed": 0, "output_dir": str(out), "adapter": adapter,
           "objective": {"name": "flow_dpo", "beta": a.beta}, "data": {"name": "preference_pairs", "path": str(data)},
           "optim": {"name": "adamw", "lr": a.lr},
           "train": {"max_steps": a.steps, "batch_size": a.batch_size, "lr_scheduler": "constant",
                     "max_grad_norm": 1.0, "progress": False, "plot": False},
           "accelerate": {"log_with": []}}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


# --------------------------------------------------------------------------- variants (children)
def child_mmalign(a, cfg: Path) -> dict:
    from mmalign.config import load_config
    from mmalign.recipes.offline_preference import OfflinePreference
    from mmalign.utils.metrics import read_metrics

    recipe = OfflinePreference(load_config(cfg))
    recipe.setup()
    setup, loads, cpu, last, log = rss_mb(), [], [], [cpu_sample()], recipe._log

    def log_with_load(values, split):  # called once per optimizer step (log_every=1)
        loads.append(others_load(last[0], now := cpu_sample()))
        cpu.append((now[2] - last[0][2]) / os.sysconf("SC_CLK_TCK"))
        last[0] = now
        log(values, split)

    enc_times, encode_batch = [], recipe.adapter.encode_batch

    def timed_encode_batch(batch):  # VAE + text encoders (not called when the cache is used)
        t0 = time.perf_counter()
        out = encode_batch(batch)
        enc_times.append(time.perf_counter() - t0)
        return out

    recipe._log, recipe.adapter.encode_batch = log_with_load, timed_encode_batch
    recipe.train()
    rows = [r for r in read_metrics(recipe.out / "metrics.jsonl") if r["split"] == "train"]
    return {"rss_setup": setup, **peaks(), "step_times": [r["step_time"] for r in rows],
            "losses": [r["loss"] for r in rows], "others": loads, "cpu_times": cpu, "encode_times": enc_times,
            "pipeline_loaded": recipe.adapter.pipe is not None}


def child_diffusers(a, pipe_dir: Path, data: Path) -> dict:
    """Per-step Flow-DPO in the style of diffusers' DPO/SD3 training examples (our code)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import StableDiffusion3Pipeline
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling
    from peft import LoraConfig
    from PIL import Image

    torch.manual_seed(0)
    accelerator = Accelerator()
    pipe = StableDiffusion3Pipeline.from_pretrained(pipe_dir)
    vae, transformer, scheduler = pipe.vae, pipe.transformer, pipe.scheduler
    for m in (vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3, transformer):
        m.requires_grad_(False)
    for m in (vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        m.to(accelerator.device).eval()
    lora = LoraConfig(r=a.rank, lora_alpha=a.rank, init_lora_weights=True, target_modules=LORA_TARGETS)
    transformer.add_adapter(lora)
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer)
    transformer, optimizer = accelerator.prepare(transformer, optimizer)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    n_train = scheduler.config.num_train_timesteps
    sigmas_all = scheduler.sigmas.to(accelerator.device)  # shifted sigmas, as get_sigmas() reads them

    def load(path):  # Resize/CenterCrop/ToTensor/Normalize([0.5], [0.5])
        img = Image.open(data.parent / path).convert("RGB").resize((a.resolution, a.resolution), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()

    setup, times, encode_times, losses, loads, cpu = rss_mb(), [], [], [], [], []
    transformer.train()
    for step in range(a.steps):
        t0, cpu0 = time.perf_counter(), cpu_sample()
        batch = [rows[(step * a.batch_size + i) % len(rows)] for i in range(a.batch_size)]
        pixels = torch.stack([load(r["chosen"]) for r in batch] + [load(r["rejected"]) for r in batch])
        prompts = [r["prompt"] for r in batch]
        t_enc = time.perf_counter()
        with torch.no_grad():
            latents = vae.encode(pixels.to(accelerator.device)).latent_dist.sample()
            latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
            embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, device=accelerator.device,
                                                      do_classifier_free_guidance=False)
        encode_times.append(time.perf_counter() - t_enc)
        bsz = latents.shape[0] // 2
        noise = torch.randn_like(latents[:bsz]).repeat(2, 1, 1, 1)
        u = compute_density_for_timestep_sampling("none", bsz, device="cpu")
        sigmas = sigmas_all[(u * n_train).long()].repeat(2).view(-1, 1, 1, 1)
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        target = noise - latents
        cond = dict(timestep=sigmas.flatten() * n_train, encoder_hidden_states=embeds.repeat(2, 1, 1),
                    pooled_projections=pooled.repeat(2, 1), return_dict=False)
        model_pred = transformer(hidden_states=noisy, **cond)[0]
        model_losses = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        model_w, model_l = model_losses.chunk(2)
        accelerator.unwrap_model(transformer).disable_adapters()
        with torch.no_grad():
            ref_pred = transformer(hidden_states=noisy, **cond)[0]
            ref_w, ref_l = F.mse_loss(ref_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3)).chunk(2)
        accelerator.unwrap_model(transformer).enable_adapters()
        logits = (ref_w - ref_l) - (model_w - model_l)
        loss = -F.logsigmoid(a.beta * logits).mean()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.detach().item())
        times.append(time.perf_counter() - t0)
        loads.append(others_load(cpu0, cpu1 := cpu_sample()))
        cpu.append((cpu1[2] - cpu0[2]) / os.sysconf("SC_CLK_TCK"))
    return {"rss_setup": setup, **peaks(), "step_times": times, "encode_times": encode_times, "losses": losses,
            "others": loads, "cpu_times": cpu}


def run_child(a, variant: str, work: Path, rnd: int) -> dict:
    """One variant in a fresh process; returns its JSON result."""
    out = work / f"{variant}_{rnd}"
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    cmd = [sys.executable, __file__, "--child", variant, "--work", str(work), "--out", str(out),
           *[f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k not in ("child", "work", "out", "rounds")]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{variant} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(out.with_suffix(".json").read_text())


def child_main(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    work, out = Path(a.work), Path(a.out)
    if a.child == "diffusers":
        res = child_diffusers(a, work / "pipeline", work / "data" / "pairs.jsonl")
    elif a.child == "cache":  # `mmalign cache CONFIG`, timed in-process (model loading included)
        from mmalign.cli import main as mmalign_main

        t0 = time.perf_counter()
        assert mmalign_main(["cache", str(out.with_suffix(".yaml"))]) == 0
        res = {"cache_build_s": time.perf_counter() - t0, **peaks()}
    else:
        res = child_mmalign(a, out.with_suffix(".yaml"))
    out.with_suffix(".json").write_text(json.dumps(res))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("resolution", 128), ("vae_channels", "32,64,128,128"), ("layers", 4), ("heads", 4),
                          ("clip_dim", 256), ("clip_layers", 4), ("t5_dim", 512), ("t5_layers", 8), ("rank", 16),
                          ("batch_size", 2), ("pairs", 32), ("steps", 8), ("warmup", 2), ("rounds", 3),
                          ("threads", 1), ("beta", 100.0), ("lr", 1e-4)):
        p.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    p.add_argument("--child", choices=(*VARIANTS, "cache"), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child_main(a)
    with tempfile.TemporaryDirectory(prefix="bench_flow_dpo_") as tmp:
        work = Path(tmp)
        (work / "data").mkdir()
        sizes = build_pipeline(a, work / "pipeline")
        data = write_pairs(work / "data", a.pairs, a.resolution)
        print("parameters (M):", sizes, flush=True)
        cache_dir = work / "cache"
        for name, cache in [(f"mmalign_{r}", None) for r in range(a.rounds)] + [("cache_0", cache_dir)] + [
                (f"mmalign_cache_{r}", cache_dir) for r in range(a.rounds)]:
            write_config(a, work / "pipeline", data, work / name, cache)
        cache = run_child(a, "cache", work, 0)
        print(f"cache build: {cache['cache_build_s']:.2f} s for {a.pairs} pairs", flush=True)
        results = {v: [] for v in VARIANTS}
        for r in range(a.rounds):
            for v in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
                results[v].append(run_child(a, v, work, r))
                last = results[v][-1]
                print(f"round {r} {v}: steps {[round(t, 2) for t in last['step_times']]}, "
                      f"others' CPU share {statistics.median(last['others']):.0%}", flush=True)
    report(a, results, cache)


def report(a, results: dict, cache: dict) -> None:
    med = lambda xs: statistics.median(xs) if xs else float("nan")
    steps = lambda rs, key="step_times": [t for r in rs for t in r[key][a.warmup:]]
    # "uncontended": other processes left this run's threads their cores (1 thread of 2 cores: others <= 60%)
    limit = max(0.0, 1 - a.threads / os.cpu_count()) + 0.1
    quiet = lambda rs: [t for t, o in zip(steps(rs), steps(rs, "others")) if o <= limit]
    rows = {"median step time (s)": (lambda rs: med(steps(rs)), "{:.3f}"),
            "  of which VAE + text encoding (s)": (lambda rs: med(steps(rs, "encode_times")), "{:.3f}"),
            f"median of uncontended steps (others <= {limit:.0%}) (s)": (lambda rs: med(quiet(rs)), "{:.3f}"),
            "uncontended steps / all": (lambda rs: len(quiet(rs)) / len(steps(rs)), "{:.2f}"),
            "others' CPU share, median step": (lambda rs: med(steps(rs, "others")), "{:.2f}"),
            "fastest step (s)": (lambda rs: min(steps(rs)), "{:.3f}"),
            "median CPU time of this process per step (s)": (lambda rs: med(steps(rs, "cpu_times")), "{:.3f}"),
            "RSS after setup (MiB)": (lambda rs: med([r["rss_setup"] for r in rs]), "{:.0f}"),
            "RSS after training (MiB)": (lambda rs: med([r["rss_end"] for r in rs]), "{:.0f}"),
            "peak RSS (MiB)": (lambda rs: med([r["peak_rss"] for r in rs]), "{:.0f}")}
    if "cuda_peak" in results["mmalign"][0]:
        rows["CUDA peak allocated (MiB)"] = (lambda rs: med([r["cuda_peak"] for r in rs]), "{:.0f}")
    print(f"\n| metric | {' | '.join(VARIANTS)} | mmalign/diffusers | cache/diffusers | cache/mmalign |")
    print("|---|" + "---:|" * 6)
    for name, (f, fmt) in rows.items():
        v = {x: f(results[x]) for x in VARIANTS}
        ratios = [x / y if y else float("nan") for x, y in
                  ((v["mmalign"], v["diffusers"]), (v["mmalign_cache"], v["diffusers"]), (v["mmalign_cache"], v["mmalign"]))]
        print(f"| {name} | " + " | ".join(fmt.format(v[x]) for x in VARIANTS) + " | "
              + " | ".join(f"{q:.3f}" for q in ratios) + " |")
    saved = med(steps(results["mmalign"])) - med(steps(results["mmalign_cache"]))
    print(f"\ncache build (`mmalign cache` in-process, model loading included): {cache['cache_build_s']:.2f} s for "
          f"{a.pairs} pairs, peak RSS {cache['peak_rss']:.0f} MiB; it pays for itself after "
          f"{cache['cache_build_s'] / saved:.1f} steps" if saved > 0 else "the cache saved no step time")
    for v in VARIANTS:
        print(f"{v} losses (round 0): {[round(x, 4) for x in results[v][0]['losses']]}")
    print("mmalign_cache loaded the VAE/text encoders:", any(r["pipeline_loaded"] for r in results["mmalign_cache"]))


if __name__ == "__main__":
    main()
