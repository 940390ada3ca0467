"""The training input pipeline: Grain mixing of real and generated data, augmentation."""
