"""The evaluation stage: zero-shot classification and image-text retrieval of a CLIP checkpoint.

- :mod:`tasks.evaluate.eval_sets`: evaluation sets in clip_benchmark's webdataset layout, and
  the task list (DataComp's ``tasklist.yml`` format).
- :mod:`tasks.evaluate.metrics`: the metrics, on embeddings (numpy only).
- :mod:`tasks.evaluate.model`: loads a checkpoint and embeds images and texts.
- :mod:`tasks.evaluate.runner`: evaluates a checkpoint on a task list, one result line per task.
- :mod:`tasks.evaluate.task`: the Prefect tasks.
"""
