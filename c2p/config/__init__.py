"""Typed configs, one module per concern: :mod:`.core` (machinery), :mod:`.pretrain`,
:mod:`.render`, :mod:`.downstream`."""

from c2p.config.core import (
    ConfigError,
    build_config,
    config_diff,
    config_hash,
    describe,
    load_config,
    option,
    parse_overrides,
    to_dict,
    to_yaml,
)

__all__ = [
    "ConfigError",
    "build_config",
    "config_diff",
    "config_hash",
    "describe",
    "load_config",
    "option",
    "parse_overrides",
    "to_dict",
    "to_yaml",
]
