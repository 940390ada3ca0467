"""The diffusion generator: Ho et al.'s DDPM UNet and Dhariwal & Nichol's ADM (one module family,
unet.py), the noise schedule, the samplers, our checkpoint format and the imports from diffusers'
format and from openai/guided-diffusion's checkpoints.

Other parts use `checkpoint.load(path)`, which returns a `Generator` with `eps_fn`, `params`,
`alphas_cumprod`, `num_classes` and `image_shape` (DESIGN.md: a diffusion model is a pure
function `eps_fn(params, x_t, t[, y]) -> eps`; a learned-variance model returns [eps, v]).
"""
