"""The demo (configs/demo.py) with the paper's generator: a class-conditional DDPM that the method
trains itself on the digits (configs/ddpm_digits.py, shortened), sampled with DPM-Solver++(2M).

  python -m trainer.method --config=configs/demo_ddpm.py --workdir=DIR

The generator stage trains the DDPM in DIR/generator (its EMA weights: DIR/generator/generator);
the rest is the demo's, with the paper's α for DDPM data.
"""
from configs import demo


def get_config():
  c = demo.get_config()
  c.generated.alpha = 0.3          # the paper's real share for DDPM data (demo.py: 0.8, Gaussian)
  c.pipeline.generator = 'ddpm'
  c.pipeline.generator_checkpoint = ''   # trained here
  c.pipeline.generator_preset = 'ddpm_digits'
  c.pipeline.generator_steps = 1000     # of the preset's 3000 (batch 128)
  c.pipeline.sampler = 'dpm++2m'
  c.pipeline.sampler_steps = 20
  c.pipeline.num_generated = 5000
  return c
