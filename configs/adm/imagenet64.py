"""64x64_diffusion.pt: class-conditional ImageNet 64x64 ADM (295.9M parameters).

guided-diffusion's README: MODEL_FLAGS="--attention_resolutions 32,16,8 --class_cond True
--diffusion_steps 1000 --dropout 0.1 --image_size 64 --learn_sigma True --noise_schedule cosine
--num_channels 192 --num_head_channels 64 --num_res_blocks 3 --resblock_updown True
--use_new_attention_order True --use_fp16 True --use_scale_shift_norm True"; the README samples
it with --timestep_respacing 250 (samplers: `spacing='guided'`, steps=250).
"""
import ml_collections


def get_config():
  return ml_collections.ConfigDict(dict(
      attention_resolutions='32,16,8', class_cond=True, diffusion_steps=1000, dropout=0.1,
      image_size=64, learn_sigma=True, noise_schedule='cosine', num_channels=192,
      num_head_channels=64, num_res_blocks=3, resblock_updown=True, use_new_attention_order=True,
      use_fp16=True, use_scale_shift_norm=True))
