"""Configuration: ``config/default.toml`` merged with a user TOML file and overrides.

Values keep the units the default file documents (days, deg^2, bytes).
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcross.config import DEFAULT_CONFIG
from mmcross.model.errors import ConfigError
from mmcross.model.event import EventKind


def _merge(base: dict[str, Any], over: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class TimeWindow:
    """Matching window relative to the trigger, days: [trigger + before, trigger + after]."""

    before: float
    after: float


class Config:
    """The merged configuration as a nested dict with typed accessors."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self._validate()

    @classmethod
    def load(cls, path: str | Path | None = None,
             overrides: Mapping[str, Any] | None = None) -> Config:
        """Defaults, then ``path`` (TOML) if given, then ``overrides`` (nested dict)."""
        with open(DEFAULT_CONFIG, "rb") as f:
            data = tomllib.load(f)
        if path is not None:
            try:
                with open(path, "rb") as f:
                    data = _merge(data, tomllib.load(f))
            except OSError as exc:
                raise ConfigError(f"cannot read config file {path}: {exc}") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        if overrides:
            data = _merge(data, overrides)
        return cls(data)

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def credible_level(self) -> float:
        return float(self.data["match"]["credible_level"])

    @property
    def background_rate(self) -> float:
        """Default rho, new optical transients per deg^2 per day."""
        return float(self.data["match"]["background_rate"])

    def time_window(self, kind: EventKind | str) -> TimeWindow:
        before, after = self.data["match"]["time_window"][str(EventKind(kind))]
        return TimeWindow(float(before), float(after))

    @property
    def longest_window_days(self) -> float:
        return max(self.time_window(k).after for k in EventKind)

    def _validate(self) -> None:
        cl = self.get("match.credible_level")
        if not isinstance(cl, int | float) or not 0 < cl <= 1:
            raise ConfigError(f"match.credible_level must be in (0, 1], got {cl!r}")
        windows = self.get("match.time_window", {})
        for kind in EventKind:
            w = windows.get(str(kind))
            if (not isinstance(w, list | tuple) or len(w) != 2
                    or not all(isinstance(x, int | float) for x in w) or w[0] > w[1]):
                raise ConfigError(
                    f"match.time_window.{kind} must be [before, after] days with before <= after,"
                    f" got {w!r}")
        rho = self.get("match.background_rate")
        if not isinstance(rho, int | float) or rho <= 0:
            raise ConfigError(f"match.background_rate must be > 0 per deg^2 per day, got {rho!r}")


def notice_options(config: Config) -> dict[str, Any]:
    """Keyword arguments for ``mmcross.listeners.parse_notice`` / ``read_notice_file``."""
    return {
        "roles": tuple(config.get("listeners.roles", ["observation"])),
        "tolerance": float(config.get("localization.credible_level_tolerance", 1e-3)),
        "max_order": int(config.get("localization.max_order", 29)),
        "max_skymap_bytes": int(config.get("localization.max_skymap_bytes", 64 << 20)),
    }
