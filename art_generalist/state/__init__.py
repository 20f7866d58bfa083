"""Files on disk: checkpoint files, hashes and atomic writes (:mod:`.files`), what a run is
(:mod:`.fingerprint`), and the exported model (:mod:`.export`). What a trainer saves and
restores is :mod:`art_generalist.train.checkpoints`."""
from art_generalist.state.export import load_exported, read_metadata
from art_generalist.state.files import UnsafeCheckpointError, safe_load

__all__ = ["load_exported", "read_metadata", "safe_load", "UnsafeCheckpointError"]
