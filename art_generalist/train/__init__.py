"""The training loop and its contract: the trainer base (:mod:`.trainer`) with the ART-facing
methods (:mod:`.art_api`), batches (:mod:`.feed`), plug-in hooks (:mod:`.plugins`), data-parallel
training (:mod:`.data_parallel`), validation (:mod:`.validation`), checkpoints and resume
(:mod:`.checkpoints`), and the options every trainer shares (:mod:`.options`)."""
from art_generalist.train.checkpoints import Progress, TrainerState, list_checkpoints
from art_generalist.train.trainer import TensorTrainer

__all__ = ["TensorTrainer", "TrainerState", "Progress", "list_checkpoints"]
