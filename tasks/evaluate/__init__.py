"""The evaluation stage: zero-shot classification and image-text retrieval of a CLIP checkpoint.

Checkpoint evaluation only: the dataset-scale indicators live in :mod:`tasks.sample.indicators`,
the demo's checks against its planted truth in :mod:`tasks.demo_pool` (``cluster_truth``,
``filter_truth``, ``by_frequency``).

- :mod:`tasks.evaluate.eval_sets`: evaluation sets in clip_benchmark's webdataset layout, and
  the task list (DataComp's ``tasklist.yml`` format).
- :mod:`tasks.evaluate.metrics`: the metrics, on embeddings (numpy only).
- :mod:`tasks.evaluate.model`: loads a checkpoint and embeds images and texts.
- :mod:`tasks.evaluate.runner`: evaluates a checkpoint on a task list, one result line per task.
- :mod:`tasks.evaluate.task`: the Prefect tasks.
"""
