"""The diffusion generator: Ho et al.'s DDPM UNet, its noise schedule, our checkpoint format and
the import from diffusers' format.

Other parts use `checkpoint.load(path)`, which returns a `Generator` with `eps_fn`, `params`,
`alphas_cumprod`, `num_classes` and `image_shape` (DESIGN.md: a diffusion model is a pure
function `eps_fn(params, x_t, t[, y]) -> eps`).
"""
