"""Backbones (registered with timm), the classifier wrapper, teacher pretraining and student fine-tuning."""

from lightning_modules.classifier import ImageClassifier, build_classifier
from lightning_modules.modules import ClassifierModule, StudentModule, TeacherModule

__all__ = ["ClassifierModule", "ImageClassifier", "StudentModule", "TeacherModule", "build_classifier"]
