"""Building blocks of sparse adversarial training ("Sparsity Winning Twice", Chen et al., ICLR 2022).

* :mod:`~art_generalist.sparse.masks`: :class:`Masks`, boolean masks over Conv2d/Linear weights
  kept beside the model (no ``torch.nn.utils.prune`` reparametrisation).
* :mod:`~art_generalist.sparse.densities`: layer densities for a global density (uniform, ERK, IGQ).
* :mod:`~art_generalist.sparse.topology`: Flying Bird prune/grow updates, the early-bird test
  of Robust Bird and the Flying Bird+ trend tests.
* :mod:`~art_generalist.sparse.flops`: per-example inference and training FLOPs, dense and sparse,
  measured with ``FlopCounterMode``.

The methods, as plug-ins for every trainer (``sparsity=`` on ``GeneralistTrainer`` and
``SingleLearnerTrainer``; one mask shared by all the trainer's models):

* :class:`FlyingBird` and :class:`FlyingBirdPlus` (:mod:`~art_generalist.sparse.flying_bird`):
  dynamic sparse adversarial training, the latter with the adaptive prune and grow;
* :class:`RobustBird` (:mod:`~art_generalist.sparse.robust_bird`): early-bird search, then
  adversarial training with a fixed mask;
* :class:`SparsityPlugin` (:mod:`~art_generalist.sparse.plugin`), their shared base, and
  :mod:`~art_generalist.sparse.report`, the FLOPs bookkeeping behind ``trainer.sparsity_report()``.

Unstructured sparsity saves FLOPs, not wall-clock time: dense kernels multiply the zeros all the same.
"""
from art_generalist.sparse.densities import erk, igq, layer_densities, uniform
from art_generalist.sparse.flops import SparseFlops, flops_report, forward_flops_per_layer
from art_generalist.sparse.flying_bird import FlyingBird, FlyingBirdPlus
from art_generalist.sparse.layers import check_density, prunable_modules, prunable_weights
from art_generalist.sparse.masks import Masks
from art_generalist.sparse.plugin import SparsityPlugin
from art_generalist.sparse.robust_bird import RobustBird
from art_generalist.sparse.topology import (
    cosine_death_rate,
    early_bird_emerged,
    gap_trend,
    gradient_grow,
    loss_trend,
    magnitude_prune,
    random_grow,
    update_topology,
)

__all__ = [
    "FlyingBird", "FlyingBirdPlus", "RobustBird", "SparsityPlugin",
    "Masks", "check_density", "prunable_modules", "prunable_weights",
    "uniform", "erk", "igq", "layer_densities",
    "cosine_death_rate", "magnitude_prune", "random_grow", "gradient_grow", "update_topology",
    "early_bird_emerged", "gap_trend", "loss_trend",
    "SparseFlops", "forward_flops_per_layer", "flops_report",
]
