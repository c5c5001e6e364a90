"""Export a pool in DataComp's layout (metadata parquet + npz, optionally webdataset shards numbered from 0)."""
