"""YAML run configs with ``key.sub=value`` overrides, checked against the components they name.

A run is one YAML file with the same top-level sections for every modality::

    recipe: offline_preference        # a registered recipe
    seed: 0
    output_dir: outputs/dpo
    adapter:   {name: causal_lm, pretrained: ..., lora: {r: 8}}
    objective: {name: dpo, beta: 0.1}
    reward:    null                   # recipes that score samples use it
    data:      {name: preference_pairs, path: data/pairs.jsonl}
    optim:     {name: adamw, lr: 5.0e-6}
    train:     {max_steps: 100, batch_size: 8}    # the recipe's TrainConfig
    accelerate: {mixed_precision: bf16}

Inside a component section ``name:`` picks a registered component and the other keys are its
constructor arguments, checked against its signature and type hints. Unknown keys, wrong types and
unknown names raise :class:`ConfigError` naming the key path and the nearest valid name.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from mmalign import registry
from mmalign.registry import ConfigError, nearest

COMPONENT_SECTIONS = ("adapter", "objective", "reward", "data", "optim")
TOP_LEVEL = ("recipe", "seed", "output_dir", *COMPONENT_SECTIONS, "train", "accelerate", "sample", "eval", "guidance")


@dataclass
class AccelerateConfig:
    """Arguments for ``accelerate.Accelerator``; a launcher config (``accelerate launch
    --config_file configs/accelerate/...``) chooses DDP, DeepSpeed or FSDP."""

    mixed_precision: Literal["no", "bf16", "fp16"] | None = field(
        default=None, metadata={"help": "None = take it from `accelerate launch`, else 'no'."}
    )
    cpu: bool = field(default=False, metadata={"help": "Force the CPU even where a GPU exists."})
    log_with: list[str] = field(
        default_factory=lambda: ["tensorboard"],
        metadata={"help": "Experiment trackers: tensorboard, wandb, ... ([] for none)."},
    )
    project_name: str = "mmalign"
    threads: int | None = field(
        default=None,
        metadata={"help": "CPU threads of torch (torch.set_num_threads) for the run; None = torch's default. "
                          "Tiny models on a few cores run fastest with 1: extra threads of small ops "
                          "mostly wait on each other, and far worse when another process holds a core."},
    )


@dataclass
class SampleConfig:
    """The ``sample:`` section, read by ``mmalign sample`` (any recipe's config may carry it)."""

    prompts: list[str] = field(default_factory=list, metadata={"help": "Prompts to generate from."})
    prompts_file: str | None = field(default=None, metadata={"help": "Text file, one prompt per line."})
    weights: str | None = field(
        default=None, metadata={"help": "Trained weights (LoRA or full); default OUTPUT_DIR/final if it exists, "
                                        "'base' for the base model."})
    num_per_prompt: int = 1
    num_inference_steps: int = 28
    guidance_scale: float = 4.5
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    seconds: float | None = None
    max_new_tokens: int = 64
    temperature: float = 1.0
    out_dir: str | None = field(default=None, metadata={"help": "Default OUTPUT_DIR/samples."})


@dataclass
class EvalConfig:
    """The ``eval:`` section: a gym-world comparison of the fine-tuned model against its base, run at
    the end of training when ``world`` is set, or by ``mmalign eval CONFIG``."""

    world: str | None = field(default=None, metadata={"help": "Gym world whose ground truth judges."})
    num_prompts: int = 20
    samples_per_prompt: int = 4
    tolerance: float = field(default=0.05, metadata={"help": "Ground-truth gaps within this are ties."})
    dim_weights: dict[str, float] | None = None
    seed: int = 1234
    batch_size: int = 64
    weights: str | None = field(default=None, metadata={"help": "Fine-tuned weights; default OUTPUT_DIR/final."})
    out_dir: str | None = field(default=None, metadata={"help": "Default OUTPUT_DIR/eval."})


@dataclass
class GuidanceConfig:
    """The ``guidance:`` section: reward guidance and best-of-N at sampling time (``mmalign sample``,
    gym evaluation). Weights, scale and window are read when sampling starts: no retraining to change
    them. Off unless ``reward_model`` or ``decoded_reward`` is set."""

    reward_model: str | None = field(
        default=None, metadata={"help": "A trained latent reward model (OUTPUT_DIR/final of recipe latent_reward_model)."})
    decoded_reward: dict | None = field(
        default=None, metadata={"help": "Instead: a differentiable reward section on the decoded x0 "
                                        "(e.g. {name: gym_digits}); its gradient goes back through the VAE."})
    weights: dict[str, float] | None = field(
        default=None, metadata={"help": "Per-dimension weights w_d of r = sum_d w_d r_d; null = 1 for every dim."})
    scale: float = field(default=1.0, metadata={"help": "lambda in v~ = v - lambda t/(1-t) grad r; 0 = unguided."})
    t_min: float = field(default=0.0, metadata={"help": "Guide only steps with t_min <= sigma <= t_max."})
    t_max: float = 1.0
    max_coef: float | None = field(default=10.0, metadata={"help": "Clamp of t/(1-t) (diverges at t=1); null = none."})
    best_of_n: int = field(default=1, metadata={"help": "Draw N candidates per sample, keep the best under the same "
                                                       "reward (latent RM at t=0, or the decoded reward)."})

    @property
    def enabled(self) -> bool:
        return self.reward_model is not None or self.decoded_reward is not None

    @property
    def guides(self) -> bool:
        """Whether any velocity is changed (scale and some weight non-zero)."""
        return self.enabled and self.scale != 0 and (self.weights is None or any(w != 0 for w in self.weights.values()))


@dataclass
class RunConfig:
    """A validated run: component sections stay dicts (built through the registry); ``train``
    and ``accelerate`` are dataclass instances."""

    recipe: str
    seed: int
    output_dir: str
    adapter: dict | None
    objective: dict | None
    reward: dict | None
    data: dict | None
    optim: dict | None
    train: Any
    accelerate: AccelerateConfig
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)

    def to_dict(self) -> dict:
        """Plain dicts/lists/scalars, ready for YAML."""
        return {key: _plain(getattr(self, key)) for key in TOP_LEVEL}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- YAML and overrides


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    return yaml.load(text, Loader=_Loader) if text != "" else ""


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {item!r}: {where} is a {type(child).__name__}, not a section")
            node = child
        node[parts[-1]] = parse_value(text)
    return data


# --------------------------------------------------------------------------- type checking


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_value(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it, converted where lossless
    (int -> float, list -> tuple, dict -> dataclass). Raises :class:`ConfigError` naming ``path``."""
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return check_value(value, option, path)
            except ConfigError as err:
                errors.append(str(err))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"{path}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(
            f"{path}: {value!r} is not a valid choice{nearest(value, args)} (valid: {', '.join(map(str, args))})"
        )
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return build_dataclass(tp, value, path)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        items = [check_value(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        inner = args[1] if len(args) == 2 else Any
        return {k: check_value(v, inner, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected a float, got {type(value).__name__} {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an int, got {type(value).__name__} {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{path}: expected null, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__}")
    return value


def _unknown_key(path: str, key: str, valid: list[str]) -> ConfigError:
    where = f"{path}.{key}" if path else key
    return ConfigError(f"{where}: unknown key{nearest(key, valid)} (valid: {', '.join(valid)})")


def build_dataclass(cls, values: dict, path: str):
    """Instantiate a dataclass from a dict, checking every key and type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_key(path, key, list(fields))
        kwargs[key] = check_value(value, hints.get(key, Any), f"{path}.{key}" if path else key)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}.{name}: required key is missing")
    return cls(**kwargs)


def signature_params(entry: registry.Entry) -> dict[str, tuple[Any, Any]]:
    """``{arg: (annotation, default)}`` of a component's config arguments."""
    obj = entry.obj
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolved forward references: fall back to no type checks
        hints = {}
    params = {}
    for p in inspect.signature(target).parameters.values():
        if p.name == "self" or p.name in entry.runtime_args:
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        params[p.name] = (hints.get(p.name, Any), p.default)
    return params


def validate_component(kind: str, section: Any, path: str) -> dict:
    """Check one ``{name: ..., **args}`` section; return it with defaults filled in."""
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'name' key, got {type(section).__name__}")
    if "name" not in section:
        raise ConfigError(f"{path}.name: required; registered {kind}s: {', '.join(registry.names(kind))}")
    entry = registry.get(kind, section["name"], path=f"{path}.name")
    params = signature_params(entry)
    out = {"name": entry.name}
    for key, value in section.items():
        if key == "name":
            continue
        if key not in params:
            raise _unknown_key(path, key, ["name", *params])
        out[key] = check_value(value, params[key][0], f"{path}.{key}")
    for key, (tp, default) in params.items():
        if key in out:
            continue
        if default is inspect.Parameter.empty:
            raise ConfigError(f"{path}.{key}: required by {kind} '{entry.name}' but missing")
        out[key] = dataclasses.asdict(default) if dataclasses.is_dataclass(default) else default
    return out


# --------------------------------------------------------------------------- entry points


def validate(data: dict) -> RunConfig:
    """Validate a raw config dict (YAML + overrides) into a :class:`RunConfig`."""
    for key in data:
        if key not in TOP_LEVEL:
            raise _unknown_key("", key, list(TOP_LEVEL))
    if "recipe" not in data:
        raise ConfigError(f"recipe: required; registered recipes: {', '.join(registry.names('recipe'))}")
    recipe_name = check_value(data["recipe"], str, "recipe")
    recipe = registry.get("recipe", recipe_name, path="recipe").obj
    sections = {}
    for kind in COMPONENT_SECTIONS:
        value = data.get(kind)
        need = recipe.sections.get(kind, "unused")
        if value is None:
            if need == "required":
                raise ConfigError(f"{kind}: the '{recipe_name}' recipe needs this section")
            sections[kind] = None
            continue
        if need == "unused":
            raise ConfigError(f"{kind}: the '{recipe_name}' recipe uses no {kind}; remove this section")
        sections[kind] = validate_component(kind, value, kind)
    train = build_dataclass(recipe.TrainConfig, data.get("train") or {}, "train")
    accel = build_dataclass(AccelerateConfig, data.get("accelerate") or {}, "accelerate")
    if accel.threads is not None and accel.threads < 1:
        raise ConfigError(f"accelerate.threads: must be >= 1 (or null for torch's default), got {accel.threads}")
    sample = build_dataclass(SampleConfig, data.get("sample") or {}, "sample")
    evaluation = build_dataclass(EvalConfig, data.get("eval") or {}, "eval")
    guidance = validate_guidance(data.get("guidance") or {})
    return RunConfig(
        recipe=recipe_name,
        seed=check_value(data.get("seed", 0), int, "seed"),
        output_dir=check_value(data.get("output_dir", f"outputs/{recipe_name}"), str, "output_dir"),
        train=train,
        accelerate=accel,
        sample=sample,
        eval=evaluation,
        guidance=guidance,
        **sections,
    )


def validate_guidance(values: dict) -> GuidanceConfig:
    """The ``guidance:`` section; its decoded reward is checked like any reward section."""
    g = build_dataclass(GuidanceConfig, values, "guidance")
    if g.reward_model is not None and g.decoded_reward is not None:
        raise ConfigError("guidance: set reward_model (latent reward) or decoded_reward, not both")
    if g.decoded_reward is not None:
        g.decoded_reward = validate_component("reward", g.decoded_reward, "guidance.decoded_reward")
    if not 0.0 <= g.t_min <= g.t_max <= 1.0:
        raise ConfigError(f"guidance.t_min/t_max: need 0 <= t_min <= t_max <= 1, got {g.t_min}, {g.t_max}")
    if g.best_of_n < 1:
        raise ConfigError(f"guidance.best_of_n: must be >= 1, got {g.best_of_n}")
    if g.max_coef is not None and g.max_coef <= 0:
        raise ConfigError(f"guidance.max_coef: must be > 0 (or null), got {g.max_coef}")
    return g


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a YAML config, apply ``key.sub=value`` overrides and validate it."""
    import mmalign  # noqa: F401  (fills the registries)

    return validate(apply_overrides(load_yaml(path), list(overrides)))


def load_reward_section(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict, str]:
    """The validated ``reward:`` section and ``output_dir`` of a config (any recipe, or none), for
    commands that only score (``mmalign score``)."""
    import mmalign  # noqa: F401  (fills the registries)

    data = apply_overrides(load_yaml(path), list(overrides))
    for key in data:
        if key not in TOP_LEVEL:
            raise _unknown_key("", key, list(TOP_LEVEL))
    if data.get("reward") is None:
        raise ConfigError(f"reward: {path} has no reward section; registered rewards: {', '.join(registry.names('reward'))}")
    output_dir = check_value(data.get("output_dir", "outputs/scores"), str, "output_dir")
    return validate_component("reward", data["reward"], "reward"), output_dir


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
