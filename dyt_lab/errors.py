"""The one exception type for user mistakes: its message is a single line the CLI prints as is."""


class ConfigError(ValueError):
    """A value a user set (a norm, a placement rule, a preset, a path) that cannot work."""
