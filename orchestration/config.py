"""Dagster run config derived from a system's settings dataclass, never written by hand.

The launchpad shows every field of the dataclass, nested as in the dataclass (``model``,
``train``, ...), with the resolved default (dataclass + params.yaml); a run's config turns
back into the settings instance the library trains with.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import dagster as dg
import pydantic

from mmpipe.config import field_types, settings_from_dict


def settings_config_class(defaults: Any, name: str | None = None, extra: dict | None = None) -> type[dg.Config]:
    """A ``dg.Config`` class with one field per field of the dataclass instance ``defaults``
    (nested dataclasses become nested config classes), defaulting to its values."""
    hints = field_types(type(defaults))
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(defaults):
        value = getattr(defaults, field.name)
        if dataclasses.is_dataclass(value):
            nested = settings_config_class(value)
            fields[field.name] = (nested, pydantic.Field(default_factory=nested))
        else:
            fields[field.name] = (hints[field.name], value)
    return pydantic.create_model(name or f"{type(defaults).__name__}Config", __base__=dg.Config,
                                 **fields, **(extra or {}))


def config_to_settings(settings_type: type, config: dg.Config, exclude: tuple[str, ...] = ()) -> Any:
    """The settings instance a run's config describes."""
    values = config.model_dump()
    return settings_from_dict(settings_type, {k: v for k, v in values.items() if k not in exclude})
