"""Defenses: each a `StudentModule` subclass in its own file that overrides the loss."""

from defenses.pgd_at import PGDAT

__all__ = ["PGDAT"]
