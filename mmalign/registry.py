"""Registries of components, as plain dicts filled by explicit imports.

A config section such as ``objective: {name: dpo, beta: 0.1}`` picks the component registered as
``("objective", "dpo")`` and passes the remaining keys as its arguments. Keys are checked against
the component's signature before anything is built, so a typo fails at load time with its path
and the nearest valid name (see :mod:`mmalign.config`).
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

KINDS = ("adapter", "objective", "reward", "data", "optim", "recipe")


class ConfigError(ValueError):
    """A config (or command-line override) that cannot be used; the message names the key path."""


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Callable[..., Any]
    description: str
    runtime_args: tuple[str, ...] = ()  # arguments the recipe supplies, not the config


_REGISTRY: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}


def nearest(name: str, choices) -> str:
    """A ``"; did you mean 'x'?"`` hint (or ``""``) for an unknown name."""
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def register(kind: str, name: str, *, description: str | None = None, runtime_args: tuple[str, ...] = ()):
    """Decorator registering ``obj`` under ``(kind, name)``.

    Args:
        kind: one of :data:`KINDS`.
        name: the value of ``name:`` in a config section.
        description: one line for ``mmalign list``; defaults to the docstring's first line.
        runtime_args: constructor arguments that the recipe passes (e.g. ``params`` for an
            optimizer); they are not config keys.
    """
    if kind not in _REGISTRY:
        raise KeyError(f"unknown registry kind {kind!r}; kinds are {KINDS}")

    def wrap(obj):
        if name in _REGISTRY[kind]:
            raise KeyError(f"{kind} {name!r} is already registered")
        doc = description or (inspect.getdoc(obj) or "").strip().splitlines()[0:1]
        text = doc if isinstance(doc, str) else (doc[0] if doc else "")
        _REGISTRY[kind][name] = Entry(name, obj, text, tuple(runtime_args))
        return obj

    return wrap


def names(kind: str) -> list[str]:
    return sorted(_REGISTRY[kind])


def entries(kind: str) -> list[Entry]:
    return [_REGISTRY[kind][n] for n in names(kind)]


def get(kind: str, name: str, *, path: str | None = None) -> Entry:
    """The entry ``(kind, name)``; an unknown name raises :class:`ConfigError` with the nearest one."""
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        where = f"{path}: " if path else ""
        valid = ", ".join(names(kind)) or "none registered"
        raise ConfigError(
            f"{where}unknown {kind} {name!r}{nearest(name, names(kind))} (valid: {valid})"
        ) from None


def build(kind: str, cfg: dict[str, Any], **runtime: Any) -> Any:
    """Build the component a config section names. ``cfg`` must already be validated."""
    args = dict(cfg)
    entry = get(kind, args.pop("name"))
    runtime = {k: v for k, v in runtime.items() if k in entry.runtime_args}  # what this component takes
    try:
        return entry.obj(**args, **runtime)
    except ValueError as err:
        if type(err) is ValueError:  # an argument out of range: report it as the section's error
            raise ConfigError(f"{kind} '{entry.name}': {err}") from err
        raise
