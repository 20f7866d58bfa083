"""Rank primitives for ``torch.distributed``: the process group and collectives (:mod:`.ranks`),
random draws independent of the number of ranks (:mod:`.draws`), and attack batches shared out
across ranks (:mod:`.shards`). Nothing here knows a trainer."""
