"""Errors that the runner turns into one clear line for the user.

The ground floor of the suite: it imports nothing, so every package (attacks, datamodules, lightning_modules,
defenses, benchmark) may import it without depending on the runner.
"""


class ConfigError(ValueError):
    """A bad name or value in the configuration. Its message is one line that names what is valid."""


def choose(kind: str, name: str, valid) -> None:
    """Raise a `ConfigError` naming the valid choices when `name` is not one of them."""
    valid = sorted(valid)
    if name not in valid:
        raise ConfigError(f"unknown {kind} '{name}'; valid: {', '.join(valid)}")
