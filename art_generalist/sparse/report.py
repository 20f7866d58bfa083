"""FLOPs bookkeeping of sparse training: the cost of one training step of a learner, and the
report that ``trainer.sparsity_report()`` returns.

Per-example costs come from :class:`~art_generalist.sparse.flops.SparseFlops`, measured once on
the trainer's real model; each Conv2d/Linear layer's count is scaled by its mask density (the
"sparse" figure) or not (the "dense-equivalent" figure: the same iterations on the dense model).
One training step of a learner on one example costs

* ``passes * (forward + backward)``: the objective's declared ``passes`` (1 for natural training
  and PGD-AT, 2 for TRADES and MART, which also run the clean batch);
* plus ``k * (forward + input_backward)`` for a PGD-``k`` training attack, and its attack loss's
  ``clean_forwards`` forwards (one for TRADES' KL attack, which needs the clean logits).

An epoch costs its examples (``record["examples"]``) times the sum of its learners' per-example
costs, at the layer densities averaged over the epoch's iterations (they change only at Flying
Bird+'s topology updates). EMA, mixing and elementwise ops are not counted (the counter counts
matrix products and convolutions), nor is validation.

Unstructured sparsity saves FLOPs, not wall-clock time: dense kernels multiply the zeros all the
same, so the measured seconds of a sparse run are those of a dense one. Only structured (channel)
pruning or sparse kernels turn these savings into time.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from art_generalist.core.attack import ATTACK_LOSSES
from art_generalist.sparse.flops import SparseFlops

if TYPE_CHECKING:  # pragma: no cover
    from art_generalist.core.learner import Learner

NOTE = ("Unstructured sparsity saves FLOPs, not wall-clock time: dense kernels multiply the zeros all the same, "
        "so the seconds are those of dense training.")


def _at(flops: SparseFlops, densities: Optional[Mapping[str, float]]) -> tuple[SparseFlops, bool]:
    if densities is None:
        return flops, False
    return dataclasses.replace(flops, densities={**flops.densities, **densities}), True


def learner_cost(flops: SparseFlops, learner: "Learner", densities: Optional[Mapping[str, float]]) -> float:
    """Per-example FLOPs of one training step of ``learner`` (attack included) at the given layer
    densities; ``None`` gives the dense-equivalent figure."""
    fl, sparse = _at(flops, densities)
    forward, backward, input_backward = (fl.total(p, sparse) for p in ("forward", "backward", "input_backward"))
    passes = learner.objective.passes  # declared by the objective (core.objectives.register_objective)
    cost = passes * (forward + backward)
    attack = learner.attack
    steps = attack.max_iter if attack is not None and attack.eps > 0 else 0
    if steps:
        cost += steps * (forward + input_backward) + ATTACK_LOSSES[attack.loss].clean_forwards * forward
    return float(cost)


def sparsity_report(plugin: Any, history: Sequence[dict]) -> dict:
    """Density and FLOPs of a sparse run, from the plug-in and the trainer's history.

    Keys: ``method``, ``settings``, ``density`` (global, now), ``layers`` (per weight name:
    ``density``, ``weights``, dense ``forward_flops`` per example), ``inference_flops``
    (``dense`` and ``sparse``, per example), ``training_flops`` (``per_epoch``: epoch, density,
    ``sparse``, ``dense``; ``stage1`` for Robust Bird's dense search; ``total_sparse``,
    ``total_dense`` and their ``ratio``, stage 1 included), ``seconds`` (``training``, stage 1
    included, ``validation``, ``stage1``, and ``per_epoch``) and ``note``.
    """
    if plugin.flops is None:
        raise ValueError("The sparsity plug-in is not set up: attach it to a trainer first.")
    densities = plugin.masks.layer_densities() if plugin.masks is not None else {}
    fl, _ = _at(plugin.flops, densities)
    epochs = [{"epoch": r["epoch"], "density": r["sparsity"]["density"], "sparse": r["sparsity"]["train_flops_sparse"],
               "dense": r["sparsity"]["train_flops_dense"], "seconds": r.get("seconds", 0.0)}
              for r in history if "sparsity" in r]
    stage1 = plugin._stage1()
    first = stage1["train_flops"] if stage1 else 0.0
    total_sparse = first + sum(e["sparse"] for e in epochs)
    total_dense = first + sum(e["dense"] for e in epochs)
    seconds_stage1 = stage1["seconds"] if stage1 else 0.0
    report: dict[str, Any] = {
        "method": plugin.method, "settings": plugin.settings(), "density": plugin.current_density(),
        "layers": {n: {"density": fl.densities.get(n, 1.0), "weights": fl.sizes[n], "forward_flops": c["forward"]}
                   for n, c in fl.layers.items()},
        "inference_flops": {"per": "example", "dense": fl.inference(False), "sparse": fl.inference(True)},
        "training_flops": {"per_epoch": epochs, "stage1": stage1, "total_sparse": total_sparse,
                           "total_dense": total_dense, "ratio": total_sparse / total_dense if total_dense else None},
        "seconds": {"training": seconds_stage1 + sum(e["seconds"] for e in epochs), "stage1": seconds_stage1,
                    "validation": sum(r.get("val_seconds", 0.0) for r in history if "sparsity" in r),
                    "per_epoch": [e["seconds"] for e in epochs]},
        "note": NOTE,
    }
    return report
