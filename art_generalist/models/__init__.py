"""Model architectures (raw logits, no input normalisation) and a name registry."""
from art_generalist.models.digits import DigitsNet
from art_generalist.models.preact_resnet import PreActResNet18
from art_generalist.models.registry import DEFAULT_MODELS, MODELS, ModelFactory, default_model, get_model, list_models
from art_generalist.models.resnet import ResNet18
from art_generalist.models.smallcnn import SmallCNN
from art_generalist.models.wide_resnet import WRN34_10, WideResNet

__all__ = [
    "MODELS",
    "DEFAULT_MODELS",
    "default_model",
    "ModelFactory",
    "get_model",
    "list_models",
    "SmallCNN",
    "DigitsNet",
    "PreActResNet18",
    "ResNet18",
    "WideResNet",
    "WRN34_10",
]
