"""openai/guided-diffusion's model flags for its released checkpoints (Dhariwal & Nichol's ADM).

One module per checkpoint; `get_config()` returns the README's MODEL_FLAGS under guided-diffusion's
own flag names, for `models.interop.guided_diffusion`:

    python -m trainer.import_generator --format=guided-diffusion --source=64x64_diffusion.pt \\
        --flags=configs/adm/imagenet64.py --out=DIR

imagenet64   64x64_diffusion.pt: the paper's TinyImageNet generator ("we used the
             class-conditional DDPM checkpoint available at https://github.com/openai/
             guided-diffusion which has been trained on IMAGENET at a 64x64 resolution",
             footnote 9).
imagenet256  256x256_diffusion.pt: its ImageNet generator ("5M additional DDPM samples", App. B).

These are model flags, not run configs: they extend no base config.
"""
