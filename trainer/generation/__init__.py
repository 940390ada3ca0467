"""Generation on the devices: sampling a generator into shards, pseudo-labelling, and the
pieces they share (samples by id over the mesh, the labeller)."""
