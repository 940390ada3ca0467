"""Karras et al.'s EDM (NVlabs/edm): the DDPM++ network, its preconditioning, Heun sampler,
checkpoint, and the training rules published with it (loss, EMA, Adam)."""
