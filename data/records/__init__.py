"""The TFRecord shard format of generated data: records, manifests, reader and writer."""
