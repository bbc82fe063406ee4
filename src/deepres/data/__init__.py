"""Datasets, image decoding, tensor transforms and the train/eval loaders.

Layout: registry.py (the format records) and datasets.py (config -> datasets, the built-in rows) over readers/ (one
module per family of on-disk layouts); images.py decodes files; augment/ the tensor transforms; loaders.py the
seeded train/eval loaders; corruptions/ ImageNet-C/-P style shifts; packing/ the packed format; fetch.py, verify.py
and scenes.py back `deepres data get / verify / make`.

Formats (data.name), each a record of the format registry (deepres.data.registry: `get_format`, `list_formats`),
and the on-disk layouts they read, relative to data.root:
- fashion_mnist, mnist: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (root "" = Debian's
  /usr/share/datasets/fashion-mnist for fashion_mnist). Kept 1-channel 28x28.
- cifar10: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}; cifar100: cifar-100-python/{train,
  test, meta} (coarse_labels=True for the 20 superclasses). The official pickles; "val" means the test set.
- folder: root/train_split and root/val_split are class-per-folder trees; class_depth says which folder level
  names a class (0 = every folder that holds images, e.g. Mini-Places2 "a/abbey"). Classes sorted.
- imagenet: train as folder; val either as class folders or flat ILSVRC2012_val_NNNNNNNN.JPEG files with
  val_ground_truth = ILSVRC2012_validation_ground_truth.txt (plus synset_map: synsets in ILSVRC2012 id order,
  one per line; the devkit's meta.mat is not read) or Kaggle's LOC_val_solution.csv. Labels index the sorted
  train synsets.
- list: train_split / val_split are list files of "relative/path label" (or "path", label = parent folder),
  paths relative to image_root; class_names optionally names the integer labels.
- packed: root/train and root/val written by `deepres data pack` (a folder/list/imagenet set as a few large
  shard files of pre-resized images plus an index; see deepres.data.packing.packed_reader); read like a folder,
  faster.
- synthetic: random images with a learnable per-class template, synthetic_size images of synthetic_image_size.
- pairs, voc, cityscapes, ade20k: segmentation (images with uint8 class-index masks, 255 = ignore); their layouts
  are listed in deepres.data.readers.segmentation, the label tables in deepres.data.readers.seg_labels.
"""
from deepres.core.config import DataConfig
from deepres.core.errors import ChecksumError, DownloadError

from .augment import transforms
from .augment.seg_transforms import SegEvalTransform, SegTrainTransform, seg_eval_preprocess
from .corruptions.imagenet_c import imagenet_c_contents, imagenet_c_dataset
from .datasets import build_datasets, build_eval_dataset, resolve_root
from .fetch import find_local, get_dataset
from .images import IMAGE_EXTENSIONS, BadImageError, is_image_file, load_image
from .loaders import DataInfo, Loader, build_eval_loader, build_loaders, eval_loader_of, eval_preprocess
from .packing.pack import PackOptions, pack_dataset
from .packing.packed_reader import PackedDataset, read_packed
from .readers.folders import (ImageFileDataset, TooManyBadImagesError, image_folder, image_list, imagenet_val,
                              list_image_files, read_class_names, read_synset_map)
from .readers.formats import (FASHION_MNIST_CLASSES, MNIST_CLASSES, ArrayDataset, make_synthetic, read_cifar10,
                              read_cifar100, read_fashion_mnist, read_idx, read_mnist)
from .readers.segmentation import SegmentationDataset
from .registry import DatasetFormat, format_shape, get_format, list_formats, register_format, stored_side
from .verify import VerifyReport, verify_images, write_manifest
