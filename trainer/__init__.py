import os

# TensorFlow (under tfds, clu and the TFRecord tools) prints C++ notices on import, such as the
# oneDNN one, that are not for people; it computes none of our numbers (JAX does), so its oneDNN
# kernels are off too. Explicit settings in the environment still win.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
