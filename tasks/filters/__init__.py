"""The filtering stage: per-sample decisions with reasons; nothing is ever deleted.

- :mod:`tasks.filters.config`: what to filter and the thresholds.
- :mod:`tasks.filters.basic`: DataComp's basic filter (English, words, characters, size, aspect).
- :mod:`tasks.filters.nsfw`: unsafe terms in captions, and a classifier head on image embeddings.
- :mod:`tasks.filters.dedup`: exact (sha256) and perceptual (pHash) duplicates.
- :mod:`tasks.filters.eval_dedup`: samples too close to an evaluation image.
- :mod:`tasks.filters.clip_score`: CLIP score threshold or top fraction.
- :mod:`tasks.filters.run`: row-wise filters per shard, pool-wide ones, decision files, report.
- :mod:`tasks.filters.incremental`: a grown pool's old decisions updated by its new samples.
- :mod:`tasks.filters.plan`: a run's folder, and the previous run an incremental run builds on.
- :mod:`tasks.filters.task`: the Prefect tasks.
"""
