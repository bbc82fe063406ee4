"""Data settings, one block of the training config (see deepres.train.config)."""
from dataclasses import dataclass, field


@dataclass
class DataConfig:
    # Dataset format: fashion_mnist | mnist | cifar10 | cifar100 | folder | imagenet | list | packed | synthetic
    name: str = "fashion_mnist"
    root: str = ""  # dataset directory; "" = the format's default location (e.g. the Debian Fashion-MNIST path)
    train_split: str = "train"  # folder/list: sub-folder or list file (relative to root) for training
    val_split: str = "val"  # folder/list: sub-folder or list file for evaluation ("test" for CIFAR/MNIST-style sets)
    num_classes: int = 0  # 0 = take it from the dataset
    in_chans: int = 0  # 0 = take it from the dataset (1 for MNIST-style, 3 otherwise)
    # Training-time augmentation
    image_size: int = 224  # train crop side, pixels
    random_resized_crop: bool = False  # Inception-style crop (scale 0.08-1, ratio 3/4-4/3) instead of pad-and-crop
    crop_padding: int = 0  # pad-and-random-crop padding, pixels (4 for CIFAR); 0 = off
    hflip: bool = True  # random horizontal flip, p=0.5
    color_jitter: float = 0.0  # brightness/contrast/saturation strength; 0 = off
    pca_lighting: float = 0.0  # AlexNet PCA lighting alphastd (0.1 in fb.resnet.torch); 0 = off
    # Evaluation transform: "none" (use images as stored), "224_256" (shorter side 256, center 224),
    # "224_256a" (Assemble-ResNet: shorter side 257, center 256), or "crop_pct:0.875" (resize image_size/crop_pct)
    eval_preset: str = "none"
    # Normalisation: "meanstd" ((x/255 - mean)/std) or "mean" (x - mean*255, neon-style plain mean subtraction)
    normalize: str = "meanstd"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # per channel, 0-1 scale
    std: tuple[float, ...] = (0.229, 0.224, 0.225)  # per channel, 0-1 scale
    # Loading
    batch_size: int = 128  # per process; global batch = batch_size × processes × train.grad_accum_steps
    eval_batch_size: int = 256
    workers: int = 2  # DataLoader worker processes for folder datasets
    on_device: str = "auto"  # "auto": small sets (CIFAR/MNIST-sized) live on the training device as uint8; "yes"/"no"
    on_bad_image: str = "error"  # error | skip
    bad_image_cap: int = 100  # with skip: stop after this many bad images
    exif_rotate: bool = False  # apply EXIF orientation; off for ImageNet parity
    limit_train: int = 0  # use only the first N training images (0 = all); for smoke runs
    limit_val: int = 0  # use only the first N evaluation images (0 = all)
    synthetic_size: tuple[int, int] = (512, 128)  # synthetic: (train, val) image counts
    synthetic_image_size: int = 32  # synthetic: image side, pixels
    max_image_pixels: int = 89_478_485  # width*height above this is a bad image (decompression-bomb guard)
    # Format-specific; relative paths are taken relative to root
    # folder/imagenet: folder levels that name a class (1: n01440764/, 2: a/abbey/); 0 = every folder holding images
    class_depth: int = 0
    image_root: str = ""  # list: folder the listed paths are relative to; "" = root
    list_suffix: str = ""  # list: appended to each listed path (".jpg" for Food-101's meta/train.txt)
    class_names: str = ""  # list: class-name file, "name" or "name index" per line; "" = "0".."K-1"
    # imagenet with a flat val folder: ILSVRC2012_validation_ground_truth.txt (needs synset_map) or LOC_val_solution.csv
    val_ground_truth: str = ""
    synset_map: str = ""  # imagenet with the .txt ground truth: synsets in ILSVRC2012 id order, one per line
    coarse_labels: bool = False  # cifar100: the 20 superclasses instead of the 100 classes
    extra: dict = field(default_factory=dict)  # free-form keys for formats added outside deepres.data
