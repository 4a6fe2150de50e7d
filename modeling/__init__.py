"""ASFF-ResNet for skin-lesion classification (arXiv 2510.03876), Hugging Face native.

Importing this package registers the model with transformers' Auto classes, and marks the classes so that
`save_pretrained` ships their code (`trust_remote_code=True` loads it where this package is not installed).
"""

import sys as _sys

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .baselines import (
    BASELINE_ARCHITECTURES,
    TorchvisionClassifierConfig,
    TorchvisionForImageClassification,
    build_baseline,
)
from .configuration_asff_resnet import FUSION_MODES, AsffResNetConfig
from .image_processing_asff_resnet import AsffResNetImageProcessor
from .modeling_asff_resnet import (
    AsffResNetForImageClassification,
    AsffResNetImageClassifierOutput,
    AsffResNetModel,
    AsffResNetModelOutput,
    AsffResNetPreTrainedModel,
)

AutoConfig.register(AsffResNetConfig.model_type, AsffResNetConfig, exist_ok=True)
AutoModel.register(AsffResNetConfig, AsffResNetModel, exist_ok=True)
AutoModelForImageClassification.register(AsffResNetConfig, AsffResNetForImageClassification, exist_ok=True)
AsffResNetConfig.register_for_auto_class()
AsffResNetModel.register_for_auto_class("AutoModel")
AsffResNetForImageClassification.register_for_auto_class("AutoModelForImageClassification")
for _config_class in (AsffResNetConfig, TorchvisionClassifierConfig):
    AutoImageProcessor.register(_config_class, image_processor_classes={"torchvision": AsffResNetImageProcessor},
                                exist_ok=True)
AsffResNetImageProcessor.register_for_auto_class()

# app.py imports the package's torch-free modules before the package itself (`import_torch_free_modules`): bind them
# to it, as importing them through the package would have.
for _name, _module in list(_sys.modules.items()):
    if _name.startswith(__name__ + ".") and _name.count(".") == 1:
        globals().setdefault(_name.rpartition(".")[2], _module)

__all__ = [
    "BASELINE_ARCHITECTURES",
    "FUSION_MODES",
    "AsffResNetConfig",
    "AsffResNetForImageClassification",
    "AsffResNetImageProcessor",
    "AsffResNetImageClassifierOutput",
    "AsffResNetModel",
    "AsffResNetModelOutput",
    "AsffResNetPreTrainedModel",
    "TorchvisionClassifierConfig",
    "TorchvisionForImageClassification",
    "build_baseline",
]
