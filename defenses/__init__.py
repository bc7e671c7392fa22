"""Defenses: each a `StudentModule` subclass in its own file that overrides the loss; those that train on
adversarial examples subclass `AdversarialStudent` (training attack, validation attack and selection set once)."""

from defenses.base import AdversarialStudent
from defenses.pgd_at import PGDAT

__all__ = ["PGDAT", "AdversarialStudent"]
