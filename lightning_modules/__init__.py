"""Backbones (registered with timm), the classifier wrapper, teacher pretraining (supervised, or self-supervised in
`lightning_modules.ssl`: SimCLR, BYOL, MoCo v2 on lightly's building blocks) and student fine-tuning."""

from lightning_modules.classifier import ImageClassifier, build_classifier
from lightning_modules.modules import ClassifierModule, StudentModule, TeacherModule

__all__ = ["ClassifierModule", "ImageClassifier", "StudentModule", "TeacherModule", "build_classifier"]
