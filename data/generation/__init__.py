"""The generation step: Gaussian fit, sampling to shards, pseudo-labels, top-K, metrics, import."""
