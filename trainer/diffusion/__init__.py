"""Generator training on the harness: the DDPM objective (Ho et al.) and its sample grid."""
