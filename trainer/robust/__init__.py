"""Robust (and non-robust) classifier training: the TRADES / Madry / standard objectives, their
step, optimiser and state, and the held-out robust accuracy that selects checkpoints."""
