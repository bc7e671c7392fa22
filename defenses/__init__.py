"""Defenses: each a `StudentModule` subclass in its own file that overrides the loss; those that train on
adversarial examples subclass `AdversarialStudent` (training attack, validation attack and selection set once)."""

from defenses.base import AdversarialStudent
from defenses.differentiator import DifferentiatorPipeline, DifferentiatorStudent
from defenses.dropout import DropoutClassifier, InferenceDropout
from defenses.neuron_distance import NeuronDistancePatch
from defenses.pgd_at import PGDAT

__all__ = [
    "PGDAT",
    "AdversarialStudent",
    "DifferentiatorPipeline",
    "DifferentiatorStudent",
    "DropoutClassifier",
    "InferenceDropout",
    "NeuronDistancePatch",
]
