"""Config files: lookup by name, overrides, knob references."""

from xtune.config.loader import check_training, find_config, list_configs, load_config, parse_cfg_options

__all__ = ["check_training", "find_config", "list_configs", "load_config", "parse_cfg_options"]
