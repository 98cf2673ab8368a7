"""Checks shared by the model constructors: preset values and their overrides."""

from __future__ import annotations

from dyt_lab.errors import ConfigError


def pick(value, preset_value):
    """An explicit argument wins over the preset's value; None means 'use the preset'."""
    return preset_value if value is None else value


def check_preset(family: str, preset: str, presets: dict) -> None:
    """Raise a one-line ConfigError naming the valid presets unless ``preset`` is one."""
    if preset not in presets:
        raise ConfigError(f"unknown {family} preset '{preset}'; valid presets: {', '.join(presets)}")
