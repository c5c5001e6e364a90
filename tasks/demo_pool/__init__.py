"""The demo web pool: a deterministic, web-like pool of image-text pairs served on loopback.

- :mod:`tasks.demo_pool.concepts`: the visual concepts, their names and synonyms.
- :mod:`tasks.demo_pool.render`: draws one image of a concept.
- :mod:`tasks.demo_pool.captions`: writes captions (named, foreign, junk, mismatched, unsafe).
- :mod:`tasks.demo_pool.generate`: plans the pool with its planted defects and writes the web
  root (files and routes), the pool index and the truth file.
- :mod:`tasks.demo_pool.server`: the HTTP server on 127.0.0.1 that serves the web root.
- :mod:`tasks.demo_pool.eval_sets`: held-out, balanced evaluation sets (clip_benchmark layout).
- :mod:`tasks.demo_pool.curation_ab`: the A/B's recipes and its result table.
- :mod:`tasks.demo_pool.truth_checks`: the demo's checks against the truth file (download,
  filters, clusters, subsets, the A/B), built on :mod:`~tasks.demo_pool.filter_truth`,
  :mod:`~tasks.demo_pool.cluster_truth` and :mod:`~tasks.demo_pool.by_frequency`.
- :mod:`tasks.demo_pool.task`: the Prefect tasks around them.
"""
