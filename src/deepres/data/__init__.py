"""Datasets, image decoding, tensor transforms and the train/eval loaders."""
from . import transforms
from .config import DataConfig
from .datasets import FORMATS, build_datasets, resolve_root
from .fetch import ChecksumError, DownloadError, find_local, get_dataset
from .folders import (ImageFileDataset, TooManyBadImagesError, image_folder, image_list, imagenet_val,
                      list_image_files, read_class_names, read_synset_map)
from .formats import (FASHION_MNIST_CLASSES, MNIST_CLASSES, ArrayDataset, make_synthetic, read_cifar10,
                      read_cifar100, read_fashion_mnist, read_idx, read_mnist)
from .images import IMAGE_EXTENSIONS, BadImageError, is_image_file, load_image
from .loaders import Loader, build_loaders
from .verify import VerifyReport, verify_images, write_manifest
