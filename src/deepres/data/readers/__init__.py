"""Dataset readers, one module per family of on-disk layouts: in-memory sets (formats: CIFAR, MNIST-style IDX,
synthetic), image files (folders: class folders, list files, ImageNet val), the transfer-learning sets (transfer)
and segmentation pairs (segmentation, with their label tables and mask PNGs in seg_labels). The format registry
(deepres.data.registry, rows in deepres.data.datasets) says which reader a data.name uses."""
