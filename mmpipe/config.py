"""One source for every default: a system's settings dataclass, overridden by params.yaml.

``params.yaml`` holds, per system, only what differs from the dataclass
(``pinclip: {train: {steps: 300}}``), and under ``scales.<scale>.<system>`` what differs at a
world scale (``SCALE=tiny make run`` trains a tiny model). :func:`resolve_settings` applies
them in that order and refuses a key the dataclass does not have, so a typo fails loudly
instead of silently training with the default. The Dagster launchpad config is derived from
the resolved settings (``orchestration/config.py``); a test checks that all three agree.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, TypeVar, get_type_hints

from mmpipe.params import load_params

T = TypeVar("T")

SCALE_ENV = "MMPIPE_SCALE"


def apply_overrides(settings: T, overrides: Mapping[str, Any], where: str = "") -> T:
    """``settings`` (a dataclass instance) with ``overrides`` applied, nested dataclasses
    by nested mappings; an unknown key is a ValueError naming where it was."""
    known = {f.name: f for f in dataclasses.fields(settings)}
    changes = {}
    for key, value in (overrides or {}).items():
        path = f"{where}.{key}" if where else key
        if key not in known:
            raise ValueError(f"unknown setting {path!r}; {type(settings).__name__} has {sorted(known)}")
        current = getattr(settings, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ValueError(f"setting {path!r} is a group of settings, got {value!r}")
            value = apply_overrides(current, value, path)
        changes[key] = value
    return dataclasses.replace(settings, **changes)


def deep_merge(base: Mapping, extra: Mapping) -> dict:
    merged = dict(base)
    for key, value in (extra or {}).items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, Mapping) and isinstance(
            merged.get(key), Mapping) else value
    return merged


def current_scale(params: Mapping) -> str:
    """The world scale the run is for: ``MMPIPE_SCALE`` (the Makefile's SCALE), else params.yaml's."""
    return os.environ.get(SCALE_ENV) or str(params.get("world", {}).get("scale", "small"))


def scaled_params(params: Mapping | None = None) -> dict:
    """params.yaml with the current scale's ``scales.<scale>`` section merged on top."""
    params = load_params() if params is None else params
    return deep_merge(params, (params.get("scales", {}) or {}).get(current_scale(params)) or {})


def system_overrides(name: str, params: Mapping | None = None) -> dict:
    """params.yaml's overrides for system ``name``, with its scale's on top."""
    return dict(scaled_params(params).get(name) or {})


def resolve_settings(settings_type: type[T], name: str, params: Mapping | None = None) -> T:
    """The dataclass defaults of ``settings_type`` with params.yaml's overrides for ``name``."""
    return apply_overrides(settings_type(), system_overrides(name, params), name)


def settings_from_dict(settings_type: type[T], values: Mapping[str, Any]) -> T:
    """A settings instance from a plain (nested) dict such as Dagster run config."""
    return apply_overrides(settings_type(), values)


def field_types(settings_type: type) -> dict[str, Any]:
    """Each field's resolved type annotation (for deriving other configs from the dataclass)."""
    return get_type_hints(settings_type)
