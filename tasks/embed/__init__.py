"""The embedding stage: open_clip image and text embeddings of every downloaded sample.

- :mod:`tasks.embed.spec`: which model embeds (an open_clip architecture with a pretrained tag
  or a checkpoint, optionally a sentence-transformers caption model).
- :mod:`tasks.embed.shards`: reads the samples of one downloaded shard.
- :mod:`tasks.embed.run`: embeds one shard and writes its row-aligned outputs.
- :mod:`tasks.embed.task`: the Prefect task (one per shard, on Dask workers).
"""
