"""The tensor-native core: training attacks, objectives, base learners, weight mixing, schedules,
augmentation, input checks and the option machinery. Pure torch: no ART estimators, no
``torch.distributed``, no files (random draws that depend on ranks are passed in by ``train``)."""
