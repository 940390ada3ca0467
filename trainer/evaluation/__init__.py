"""Final evaluation of a trained classifier under the attack cascades."""
