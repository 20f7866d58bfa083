"""Trainer state on disk: checkpoint files (:mod:`.files`), what a trainer saves and restores
(:mod:`.trainer_state`), and the exported model (:mod:`.export`)."""
from art_generalist.state.export import load_exported, read_metadata
from art_generalist.state.files import UnsafeCheckpointError, safe_load
from art_generalist.state.trainer_state import Progress, TrainerState, list_checkpoints

__all__ = ["TrainerState", "Progress", "list_checkpoints", "load_exported", "read_metadata", "safe_load",
           "UnsafeCheckpointError"]
