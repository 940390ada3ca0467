"""Classifier weights in and out: RobustBench export, released-checkpoint import."""
