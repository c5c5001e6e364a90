"""The training stage: CLIP with open_clip's own training entry point on webdataset shards.

- :mod:`tasks.train.scales`: DataComp's scales (small .. xlarge) and the ``tiny`` CPU scale.
- :mod:`tasks.train.launch`: the child process: registers this project's model configs, then
  runs ``open_clip_train.main``.
- :mod:`tasks.train.run`: one resumable training run: data, checkpoints in the store, resume.
- :mod:`tasks.train.task`: the Prefect task around it.
"""
