"""Dataset work before training: checks, splits, conversion, mechanical fixes, augmentation."""
