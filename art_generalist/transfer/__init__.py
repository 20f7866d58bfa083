"""Robust transfer learning (Salman et al., NeurIPS 2020): load robust source models safely, replace
their head and freeze their backbone.

* :func:`load_source` reads torchvision, MadryLab ``robustness``, RobustBench-style and this
  package's safetensors checkpoints, weights-only (:mod:`art_generalist.transfer.loading`);
* :func:`replace_head`, :func:`freeze` and the :class:`TransferFreeze` plug-in
  (:mod:`art_generalist.transfer.heads`);
* :class:`TransferTrainer`, the paper's fine-tuning protocol on the shared engine
  (:mod:`art_generalist.transfer.trainer`).
"""
from art_generalist.transfer.formats import CheckpointFormatError, convert_keys, sha256_of
from art_generalist.transfer.heads import HeadNotFoundError, TransferFreeze, find_head, freeze, replace_head
from art_generalist.transfer.loading import (
    KeyMismatchError,
    SourceModel,
    build_architecture,
    list_architectures,
    load_source,
)
from art_generalist.transfer.trainer import StepLR, TransferTrainer

__all__ = ["TransferTrainer", "StepLR", "load_source", "SourceModel", "build_architecture", "list_architectures",
           "convert_keys", "sha256_of", "replace_head", "find_head", "freeze", "TransferFreeze", "KeyMismatchError",
           "CheckpointFormatError", "HeadNotFoundError"]
