"""Image transforms on tensors: transforms holds the shared ops (resize, crops, channels and luma, normalisation)
and the seeded batch augmentations (flips, pad-crops, jitter, lighting); autoaugment the AutoAugment family on uint8
batches; seg_transforms the joint image/mask transforms of segmentation, train and eval."""
