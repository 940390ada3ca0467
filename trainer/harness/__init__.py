"""What every trainer shares: the training loop, Orbax checkpoints, the workdir, EMA."""
