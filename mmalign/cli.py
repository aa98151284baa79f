"""``mmalign train|validate|list`` -- the command line.

    mmalign train CONFIG [key.sub=value ...] [--resume]
    mmalign cache CONFIG [key.sub=value ...]
    mmalign sample CONFIG [key.sub=value ...]
    mmalign score CONFIG INPUT [key.sub=value ...]
    mmalign generate CONFIG [key.sub=value ...]
    mmalign eval CONFIG [key.sub=value ...]
    mmalign validate CONFIG [key.sub=value ...] [--no-data]
    mmalign list [KIND]

Multi-GPU / multi-node: ``accelerate launch [--config_file configs/accelerate/...] -m mmalign.cli train ...``.
"""

from __future__ import annotations

import argparse
import sys


def _load(args):
    from mmalign.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "resume", False):
        overrides.append("train.resume=true")
    cfg = load_config(args.config, overrides)
    if cfg.accelerate.threads is not None:
        import torch

        torch.set_num_threads(cfg.accelerate.threads)
    return cfg


def cmd_train(args) -> int:
    from mmalign import registry

    cfg = _load(args)
    recipe = registry.get("recipe", cfg.recipe).obj(cfg)
    result = recipe.run()
    if result and recipe.accelerator.is_main_process:
        print("eval: " + ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
    return 0


def cmd_validate(args) -> int:
    from mmalign import registry
    from mmalign.config import load_reward_section, load_yaml

    if "recipe" not in load_yaml(args.config):  # a scoring config: just a reward section
        section, _ = load_reward_section(args.config, args.overrides)
        print(f"{args.config}: valid reward config ({section['name']})")
        return 0
    cfg = _load(args)
    if cfg.objective is not None:
        registry.build("objective", cfg.objective)  # checks value ranges (beta > 0, ...)
    summary = f"{args.config}: valid {cfg.recipe} config"
    if cfg.data is not None and "run" in registry.get("data", cfg.data["name"]).runtime_args:
        summary += "; data: generated when the run starts (mmalign generate CONFIG makes it now)"
    elif cfg.data is not None and not args.no_data:
        data = registry.build("data", cfg.data, seed=cfg.seed)
        summary += f"; data: {len(data.train)} train / {len(data.eval)} eval records, all valid"
    print(summary)
    return 0


def cmd_cache(args) -> int:
    import torch

    from mmalign import registry
    from mmalign.adapters.diffusion import write_encoding_cache
    from mmalign.registry import ConfigError

    cfg = _load(args)
    if cfg.adapter is None or cfg.adapter["name"] != "diffusion":
        raise ConfigError("adapter: `mmalign cache` encodes media for the 'diffusion' adapter")
    root = cfg.adapter.get("cache_dir")
    if not root:
        raise ConfigError("adapter.cache_dir: set where the encoding cache goes (then training reads it)")
    data = registry.build("data", cfg.data, seed=cfg.seed)
    adapter = registry.build("adapter", {**cfg.adapter, "cache_dir": None}, reference_copy=False)
    device = "cuda" if torch.cuda.is_available() and not cfg.accelerate.cpu else "cpu"
    path = write_encoding_cache(adapter, data.train + data.eval, root, device=device,
                                batch_size=getattr(cfg.train, "batch_size", 8))
    print(f"wrote the encoding cache of {len(data.train) + len(data.eval)} pairs to {path}")
    return 0


def cmd_sample(args) -> int:
    from mmalign.recipes.sample import run_sample

    written = run_sample(_load(args))
    print(f"wrote {len(written)} files to {written[0].parent if written else '-'}")
    return 0


def cmd_score(args) -> int:
    from mmalign import registry
    from mmalign.config import load_reward_section
    from mmalign.recipes.score import run_score

    section, output_dir = load_reward_section(args.config, args.overrides)
    reward = registry.build("reward", section)
    out = args.out or f"{output_dir}/scores"
    summary = run_score(reward, args.input, out, prompt=args.prompt, batch_size=args.batch_size,
                        sample_rate=args.sample_rate)
    print(f"scored {summary['n']} samples -> {out}/scores.csv")
    for dim in (*reward.dims, "total"):
        s = summary[dim]
        print(f"  {dim:<24} mean {s['mean']:.4f}  std {s['std']:.4f}  min {s['min']:.4f}  max {s['max']:.4f}")
    return 0


def cmd_generate(args) -> int:
    from mmalign import registry

    cfg = _load(args)
    if cfg.data is None or "run" not in registry.get("data", cfg.data["name"]).runtime_args:
        raise registry.ConfigError("data: `mmalign generate` needs a generated data source (data.name=generated_pairs)")
    data = registry.build("data", cfg.data, seed=cfg.seed, run=cfg)
    print(f"generated {len(data.train)} train / {len(data.eval)} eval pairs")
    return 0


def cmd_eval(args) -> int:
    import json

    from mmalign.gym.run import run_eval, summary_line

    result = run_eval(_load(args))
    print(summary_line(result))
    print(json.dumps({k: result[k] for k in ("win_rate", "ci_low", "ci_high", "passed")}))
    return 0


def cmd_list(args) -> int:
    import mmalign  # noqa: F401  (fills the registries)
    from mmalign import registry

    kinds = [args.kind] if args.kind else list(registry.KINDS)
    for kind in kinds:
        if kind not in registry.KINDS:
            print(f"unknown kind {kind!r}{registry.nearest(kind, registry.KINDS)}", file=sys.stderr)
            return 2
        print({"data": "data sources", "optim": "optimizers"}.get(kind, f"{kind}s") + ":")
        entries = registry.entries(kind)
        if not entries:
            print("  (none yet)")
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            print(f"  {e.name:<{width}}  {e.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmalign", description="Align generative models with feedback.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run the recipe a config names")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("validate", help="check a config (and its data) without running it")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--no-data", action="store_true", help="skip reading and validating the data files")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("cache", help="encode a dataset's media and prompts once (VAE latents, text encodings)")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("sample", help="generate from prompts with a base or fine-tuned model")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("score", help="score a folder or JSONL of samples with the config's reward")
    p.add_argument("config")
    p.add_argument("input", help="a folder of media (optional metadata.jsonl) or a JSONL of {path|text, prompt}")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--prompt", default=None, help="prompt for samples that have none")
    p.add_argument("--out", default=None, help="output folder (default OUTPUT_DIR/scores)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--sample-rate", type=int, default=None, help="audio: resample to this rate (default: file's)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("generate", help="sample a model, label pairs with a (simulated) annotator, write pair data")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("eval", help="compare a fine-tuned model with its base on a gym world's ground truth")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("list", help="print the registered adapters, objectives, rewards, data, optimizers, recipes")
    p.add_argument("kind", nargs="?")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    from mmalign.data.pairs import DataError
    from mmalign.registry import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError) as err:
        kind = "config error" if isinstance(err, ConfigError) else "data error"
        print(f"mmalign: {kind}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
