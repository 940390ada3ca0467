"""The accelerator figures in one run: TRADES steps, AutoAttack and diffusion sampling (DDPM,
EDM, ADM).

  python -m benchmarks.accelerator --peak_tflops=989 [--out=DIR] [--budget_s=780] [--quick]

Prepared for a machine with an accelerator, where time on it is short: each measurement runs as
its own process (its compilation and memory its own), with a share of --budget_s as its
timeout, so that one that overruns costs only its share; each one's console goes to
DIR/NAME.log as it runs, and the table of each is printed at the end.

1. step: `benchmarks.step`, the TRADES-10 step of WRN-28-10 and WRN-70-16 in bfloat16 at a
   per-device batch of 128: images/s and MFU against --peak_tflops (one device's dense bf16
   peak; H100 SXM and H200: 989).
2. autoattack: `benchmarks.attacks --accelerator_only`, AutoAttack "standard" on 1,000
   CIFAR-sized points for a WRN-28-10 (random weights, ε = 0.001: the worst case, every stage
   runs to the end on every point), cold.
3. sampling: `benchmarks.sampling`, the 35.7M-parameter CIFAR-10 UNet in bfloat16 at batch 256:
   time per network evaluation, images/s per sampler and FLOPs.
4. edm_sampling: `benchmarks.sampling --edm_models=cifar10`, EDM's 55.7M-parameter DDPM++ in
   bfloat16 at batch 256: the same per NFE, images/s for Heun-18/20 (35/39 NFE) and the
   device-days of 50M and 100M images against the DDPM's 1,000 NFE.

5. sampling_adm64: `benchmarks.sampling --adm_models=adm64`, the paper's TinyImageNet generator
   (guided-diffusion's 64x64 class-conditional ADM, 296M parameters, random weights) in bfloat16
   at batch 128: time per network evaluation, images/s at 250 / 50 / 25 NFE, MFU.

The shares of the budget, as written, are scaled to sum to 1. --quick runs the same at toy sizes
(a WRN-10-1, 4 points on the CPU columns of `benchmarks.attacks`, the digits UNet and DDPM++, a
1M-parameter ADM) to check the script itself on a CPU.
"""
import argparse
import os
import subprocess
import sys
import time


def measurements(peak, quick):
  """(name, share of the budget, module arguments); the shares, as written, scaled to sum to 1."""
  items = (_paper_measurements(peak, quick) + edm_measurements(peak, quick)
           + adm_measurements(peak, quick))
  total = sum(share for _, share, _ in items)
  return [(name, share / total, args) for name, share, args in items]


def edm_measurements(peak, quick):
  """EDM's CIFAR-10 DDPM++ (the released cond-vp network's size) in bfloat16: its denoiser per
  NFE, images/s for Heun-18/20 and the device-days of 50M/100M images (benchmarks.sampling)."""
  peak_flag = [f'--peak_tflops={peak}'] if peak else []
  if quick:
    return [('edm_sampling', 0.3, ['benchmarks.sampling', '--models=', '--edm_models=digits',
                                   '--edm_batch=digits:8', '--evals=1', *peak_flag])]
  return [('edm_sampling', 0.2, ['benchmarks.sampling', '--models=', '--edm_models=cifar10',
                                 '--edm_batch=cifar10:256', '--dtype=bfloat16', '--evals=5',
                                 *peak_flag])]


def adm_measurements(peak, quick):
  """guided-diffusion's ImageNet 64x64 ADM (the paper's TinyImageNet generator) in bfloat16: its
  network per NFE, images/s at 250 / 50 / 25 NFE and MFU (benchmarks.sampling --adm_models). The
  evaluation compiles on abstract parameters and its weights are drawn on the host, not init-ed."""
  peak_flag = [f'--peak_tflops={peak}'] if peak else []
  if quick:
    return [('sampling_adm64', 0.15, ['benchmarks.sampling', '--models=', '--adm_models=adm_tiny',
                                      '--adm_batch=adm_tiny:2', '--adm_evals=1', *peak_flag])]
  return [('sampling_adm64', 0.2, ['benchmarks.sampling', '--models=', '--adm_models=adm64',
                                   '--adm_batch=adm64:128', '--dtype=bfloat16', '--adm_evals=5',
                                   *peak_flag])]


def _paper_measurements(peak, quick):
  """The paper's figures: TRADES steps, AutoAttack, the DDPM UNet's sampling."""
  peak_flag = [f'--peak_tflops={peak}'] if peak else []
  if quick:
    return [
        ('step', 0.3, ['benchmarks.step', '--models=wrn-10-1', '--per_device_batch=8',
                       '--dtype=float32', '--attack_steps=2', '--steps=1', '--warmup=1',
                       '--dataset=digits', *peak_flag]),
        ('autoattack', 0.4, ['benchmarks.attacks', '--model=wrn-10-1', '--n=4', '--no_warm']),
        ('sampling', 0.3, ['benchmarks.sampling', '--models=digits', '--batch=digits:8',
                           '--evals=1', '--num=1e6', *peak_flag]),
    ]
  return [
      ('step', 0.4, ['benchmarks.step', '--models=wrn-28-10,wrn-70-16', '--per_device_batch=128',
                     '--dtype=bfloat16', *peak_flag]),
      ('autoattack', 0.4, ['benchmarks.attacks', '--accelerator_only', '--model=wrn-28-10',
                           '--n=1000', '--eps=0.001', '--no_warm']),
      ('sampling', 0.2, ['benchmarks.sampling', '--models=cifar10', '--batch=cifar10:256',
                         '--dtype=bfloat16', '--evals=5', *peak_flag]),
  ]


def run(name, args, timeout, out):
  """One measurement as `python -m ...`; its console to OUT/NAME.log; (return code, seconds)."""
  start = time.time()
  with open(os.path.join(out, f'{name}.log'), 'w') as log:
    try:
      rc = subprocess.run([sys.executable, '-m', *args], stdout=log, stderr=subprocess.STDOUT,
                          timeout=timeout).returncode
    except subprocess.TimeoutExpired:
      rc = 'timed out'
  return rc, time.time() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--peak_tflops', type=float, default=None,
                      help="one device's dense bfloat16 peak, for MFU (H100 SXM, H200: 989)")
  parser.add_argument('--out', default='accelerator_results', help='folder for the logs')
  parser.add_argument('--budget_s', type=float, default=780.0,
                      help='seconds for all of them together, shared out as timeouts')
  parser.add_argument('--quick', action='store_true', help='toy sizes, to check on a CPU')
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  results = []
  for name, share, module_args in measurements(args.peak_tflops, args.quick):
    print(f'{name}: python -m {" ".join(module_args)}', flush=True)
    rc, seconds = run(name, module_args, share * args.budget_s, args.out)
    results.append((name, rc, seconds))
    print(f'{name}: exit {rc} after {seconds:.0f} s → {args.out}/{name}.log', flush=True)
  for name, rc, seconds in results:
    with open(os.path.join(args.out, f'{name}.log')) as log:
      print(f'\n==== {name} (exit {rc}, {seconds:.0f} s) ====\n' + ''.join(log.readlines()[-25:]))
  if any(rc != 0 for _, rc, _ in results):
    sys.exit(1)


if __name__ == '__main__':
  main()
