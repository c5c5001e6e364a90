"""The download stage: a pool index in, img2dataset webdataset shards in the store out.

- :mod:`tasks.download.pool_index`: reads and validates the index, cuts it into slices.
- :mod:`tasks.download.slices`: downloads one slice with img2dataset and publishes it atomically.
- :mod:`tasks.download.report`: failure reasons and the pool manifest.
- :mod:`tasks.download.task`: the Prefect tasks around them.
"""
