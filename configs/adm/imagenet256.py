"""256x256_diffusion.pt: class-conditional ImageNet 256x256 ADM (553.8M parameters).

guided-diffusion's README: MODEL_FLAGS="--attention_resolutions 32,16,8 --class_cond True
--diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule linear
--num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True
--use_fp16 True --use_scale_shift_norm True" (legacy attention order, dropout 0); the README
samples it with --timestep_respacing 250.
"""
import ml_collections


def get_config():
  return ml_collections.ConfigDict(dict(
      attention_resolutions='32,16,8', class_cond=True, diffusion_steps=1000, image_size=256,
      learn_sigma=True, noise_schedule='linear', num_channels=256, num_head_channels=64,
      num_res_blocks=2, resblock_updown=True, use_fp16=True, use_scale_shift_norm=True))
