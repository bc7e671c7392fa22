"""Errors that the runner turns into one clear line for the user."""


class ConfigError(ValueError):
    """A bad name or value in the configuration. Its message is one line that names what is valid."""


def choose(kind: str, name: str, valid) -> None:
    """Raise a `ConfigError` naming the valid choices when `name` is not one of them."""
    valid = sorted(valid)
    if name not in valid:
        raise ConfigError(f"unknown {kind} '{name}'; valid: {', '.join(valid)}")
