"""Reference figures the gym's README and RESULTS quote next to the quickstart, measured in one run:

1. the digits base's ground truth on the evaluation split without and with classifier-free guidance
   (the baseline a preference method is compared with);
2. the mean per-prompt Vendi of *real* digits (groups of 8 of one class, the evaluation's features),
   the diversity level below which a tuned model has collapsed;
3. sampling 64 base images with one torch thread vs two, while a busy process holds one core (what
   ``accelerate.threads: 1`` in the quickstart avoids).

    python benchmarks/gym_reference.py
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from mmalign.gym.base import get_world
from mmalign.gym.digits import RESOLUTION, load_real_digits
from mmalign.gym.evaluate import mean_vendi, sample_all
from mmalign.recipes.sample import make_sampler

BASE = {"name": "diffusion", "pretrained": "assets/gym/digits/base"}


def spin(seconds: float) -> None:  # a busy process on one core
    end = time.time() + seconds
    while time.time() < end:
        pass


def main() -> None:
    world = get_world("digits")
    reward = world.reward()
    torch.set_num_threads(1)

    prompts = [p for p in world.prompts("eval", 40, 0) for _ in range(8)]
    seeds = list(range(len(prompts)))
    for cfg_scale in (1.0, 2.0):
        sampler = make_sampler(BASE, None, {**world.sample_kwargs, "guidance_scale": cfg_scale}, device="cpu")
        scores = reward(sample_all(sampler, prompts, seeds, 64), prompts).mean(0)
        print(f"digits base, guidance_scale {cfg_scale}: TA {scores[0]:.3f} VQ {scores[1]:.3f} "
              f"({len(prompts)} samples, 40 eval prompts x 8)")

    x, y = load_real_digits(RESOLUTION)
    images, g, groups = x.repeat(1, 3, 1, 1) * 2 - 1, torch.Generator().manual_seed(0), []
    for d in range(10):
        idx = (y == d).nonzero().flatten()
        groups += [idx[torch.randperm(len(idx), generator=g)[:8]] for _ in range(8)]
    feats = torch.cat([world.features(images[i]) for i in groups]).float()
    print(f"real digits, mean per-prompt Vendi (80 groups of 8 of one class): {mean_vendi(feats, [8] * 80):.3f}")

    sampler = make_sampler(BASE, None, world.sample_kwargs, device="cpu")
    batch = world.prompts("train", 64, 0)
    busy = mp.Process(target=spin, args=(600.0,))
    busy.start()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            sampler(batch, list(range(64)))  # warm-up
            t0 = time.perf_counter()
            sampler(batch, list(range(64)))
            print(f"64 base samples, {threads} torch thread(s), one core busy: {time.perf_counter() - t0:.2f} s")
    finally:
        busy.terminate()


if __name__ == "__main__":
    main()
