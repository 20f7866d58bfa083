"""``python -m art_generalist ...``, the same as the ``art-generalist`` command; under
``torchrun --nproc_per_node=N -m art_generalist train|benchmark|evaluate ...`` every process
joins the process group and trains data-parallel (:mod:`art_generalist.train.data_parallel`)."""
import sys

from art_generalist.cli import main

sys.exit(main())
