"""The transfer-learning (fine-grained) classification datasets, each read in its official on-disk layout.

Every reader takes (root, split, **options) and returns an ImageFileDataset whose classes are the dataset's own
list in label order, the same list for every split; `<name>_classes(root)` gives that list alone, to evaluate a
trained model without the train split (flowers102: FLOWERS102_CLASSES, its files hold label numbers only).
`split` is the word from data.train_split / data.val_split; each dataset maps the words it accepts onto its own
splits (the *_SPLITS tables), so the config defaults train/val read:

- food101 (ETHZ Food-101): train -> meta/train.txt, val/test -> meta/test.txt ("apple_pie/1005649" lines, images at
  images/apple_pie/1005649.jpg); classes from meta/classes.txt (meta/labels.txt, the readable names, is not read).
- cub200 (CUB-200-2011): train -> is_training_image 1, val/test -> 0 in train_test_split.txt; images.txt "<id>
  <relpath>" under images/, image_class_labels.txt "<id> <1..200>", classes.txt "<label> <name>". No box crop.
- stanford_cars: train -> devkit/cars_train_annos.mat + cars_train/, val/test -> cars_test_annos_withlabels.mat (in
  root/ or root/devkit/) + cars_test/; MATLAB struct arrays `annotations` (bbox_x1..bbox_y2, class 1..196, fname);
  classes from devkit/cars_meta.mat `class_names`.
- flowers102 (Oxford 102 Flowers): train, val, test -> setid.mat trnid, valid, tstid; trainval = trnid | valid (the
  usual fine-tuning split); imagelabels.mat `labels` (1..102) for jpg/image_00001.jpg onwards; class names fixed.
- pets (Oxford-IIIT Pet): train/trainval -> annotations/trainval.txt, val/test -> annotations/test.txt
  ("Abyssinian_100 1 1 1": image, class id 1..37, species, breed id; "#" comment lines); images/<image>.jpg;
  class names are the image-name prefixes of trainval.txt, in class-id order.
- aircraft (FGVC-Aircraft 2013b, variant level): train, val, trainval, test ->
  data/images_variant_<split>.txt ("1025794 707-320": image id, then the variant, which may hold spaces);
  data/variants.txt gives the 100 names in label order; images at data/images/<id>.jpg.

Samples keep the order of the split's list (flowers102: ascending image number). Image files are not opened until
an item is read (a missing one is a bad image then, as in every file format); a missing list or annotation file is
a FileNotFoundError naming the path and the dataset's layout, a line naming a class the class list lacks a
ValueError naming the file and line. So is an image path that leaves its image folder (absolute, or with '..'), a
label that is no whole number in range (inf, NaN, 2.5), and a .mat file scipy cannot read (matfiles.load_mat:
truncated, corrupted, v7.3).
"""
import math
from pathlib import Path

import numpy as np

from .folders import ImageFileDataset, inside_folder, read_text_file
from .matfiles import load_mat

# The 102 flower names by label (label 1 = "pink primrose"): the list published with jimgoo/caffe-oxford102 and
# copied widely; the two copies compared for this agree name for name, once that list's trailing spaces
# ("cyclamen ", "hippeastrum ") and its question mark ("pink-yellow dahlia?") are dropped, as here.
FLOWERS102_CLASSES = (
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold", "tiger lily",
    "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon", "colt's foot", "king protea",
    "spear thistle", "yellow iris", "globe-flower", "purple coneflower", "peruvian lily", "balloon flower",
    "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger", "grape hyacinth",
    "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke", "sweet william", "carnation",
    "garden phlox", "love in the mist", "mexican aster", "alpine sea holly", "ruby-lipped cattleya", "cape flower",
    "great masterwort", "siam tulip", "lenten rose", "barbeton daisy", "daffodil", "sword lily", "poinsettia",
    "bolero deep blue", "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion", "petunia",
    "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura", "geranium", "orange dahlia",
    "pink-yellow dahlia", "cautleya spicata", "japanese anemone", "black-eyed susan", "silverbush",
    "californian poppy", "osteospermum", "spring crocus", "bearded iris", "windflower", "tree poppy", "gazania",
    "azalea", "water lily", "rose", "thorn apple", "morning glory", "passion flower", "lotus", "toad lily",
    "anthurium", "frangipani", "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia",
    "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "ball moss", "foxglove", "bougainvillea",
    "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower", "trumpet creeper", "blackberry lily",
)

# The config's split words -> each dataset's own split
FOOD101_SPLITS = {"train": "train", "val": "test", "test": "test"}
CUB200_SPLITS = {"train": "1", "val": "0", "test": "0"}  # is_training_image in train_test_split.txt
STANFORD_CARS_SPLITS = {"train": "train", "val": "test", "test": "test"}
FLOWERS102_SPLITS = {"train": ("trnid",), "val": ("valid",), "test": ("tstid",), "trainval": ("trnid", "valid")}
PETS_SPLITS = {"train": "trainval", "trainval": "trainval", "val": "test", "test": "test"}
AIRCRAFT_SPLITS = {name: name for name in ("train", "val", "trainval", "test")}

FOOD101_LAYOUT = ("the Food-101 layout is root/meta/{train,test}.txt ('apple_pie/1005649' lines), "
                  "root/meta/classes.txt and root/images/<class>/<id>.jpg")
CUB200_LAYOUT = ("the CUB-200-2011 layout is root/images.txt, root/image_class_labels.txt, "
                 "root/train_test_split.txt, root/classes.txt and root/images/<relpath>")
STANFORD_CARS_LAYOUT = ("the Stanford Cars layout is root/devkit/cars_meta.mat, root/devkit/cars_train_annos.mat "
                        "with root/cars_train/, and cars_test_annos_withlabels.mat (in root/ or root/devkit/) with "
                        "root/cars_test/")
FLOWERS102_LAYOUT = "the Oxford 102 Flowers layout is root/imagelabels.mat, root/setid.mat and root/jpg/image_NNNNN.jpg"
PETS_LAYOUT = ("the Oxford-IIIT Pet layout is root/annotations/{trainval,test}.txt ('Abyssinian_100 1 1 1' lines) "
               "and root/images/<name>.jpg")
AIRCRAFT_LAYOUT = ("the FGVC-Aircraft layout is root/data/images_variant_{train,val,trainval,test}.txt, "
                   "root/data/variants.txt and root/data/images/<id>.jpg")


# ----------------------------------------------------------------------------------------------- helpers
def _need(path: Path, layout: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; {layout}")
    return path


def _split(word: str, splits: dict, dataset: str):
    if word not in splits:
        raise ValueError(f"{dataset} has no split {word!r}: data.train_split / data.val_split take "
                         f"{', '.join(splits)}")
    return splits[word]


def _lines(path: Path, layout: str) -> list[tuple[int, str]]:
    """(line number, stripped line) of a text file's non-blank lines that are not '#' comments."""
    lines = [(n, line.strip()) for n, line in enumerate(read_text_file(_need(path, layout)).splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if not lines:
        raise ValueError(f"{path}: no entries")
    return lines


def _fields(path: Path, layout: str, count: int) -> list[tuple[int, list[str]]]:
    """Lines split into `count` fields, the last taking the rest of the line (it may hold spaces)."""
    rows = []
    for line_no, line in _lines(path, layout):
        fields = line.split(None, count - 1)
        if len(fields) != count:
            raise ValueError(f"{path}:{line_no}: expected {count} fields, got {line!r}")
        rows.append((line_no, fields))
    return rows


def _unique_names(path: Path, names: list[str]) -> list[str]:
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{path}: class {name!r} is listed twice")
        seen.add(name)
    return names


def _label(value: str, path: Path, line_no, num_classes: int, what: str = "label") -> int:
    """A 1-based class number read from a file -> a 0-based label; ValueError naming file and line if outside."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= num_classes:
        raise ValueError(f"{path}:{line_no}: {what} {value!r} is not a class number 1..{num_classes}")
    return number - 1


def _load_mat(path: Path, layout: str) -> dict:
    return load_mat(_need(path, layout), squeeze_me=True)  # MatFileError (a ValueError) names a damaged file


def _mat_variable(mat: dict, key: str, path: Path) -> np.ndarray:
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: no variable {key!r} (it holds {', '.join(found) or 'none'})")
    return np.atleast_1d(mat[key]).ravel()  # 1xN and squeezed arrays alike, one entry included


def _mat_scalar(value, where: str):
    """One MATLAB value as a Python number or str, whether loadmat squeezed it or left it a 1x1 array."""
    array = np.asarray(value).ravel()
    if array.size != 1:
        raise ValueError(f"{where}: expected one value, got {array.size}")
    item = array[0]
    if isinstance(item, str):  # np.str_ too
        return str(item)
    return item.item() if isinstance(item, np.generic) else item


def _mat_numbers(values: np.ndarray, path: Path, key: str) -> list[int]:
    """Whole numbers, one per entry; ValueError naming the file and `key[i]` for text, a fraction, inf, NaN or a
    float too large to hold an exact integer (MATLAB stores labels as doubles)."""
    numbers = []
    for i, value in enumerate(values, 1):
        number = _mat_scalar(value, f"{path}: {key}[{i}]")
        if isinstance(number, float) and math.isfinite(number) and number.is_integer():
            if abs(number) > 2 ** 53:
                raise ValueError(f"{path}: {key}[{i}] is {number!r}, too large to be a label or an index")
            number = int(number)
        if not isinstance(number, int) or isinstance(number, bool):
            raise ValueError(f"{path}: {key}[{i}] is {number!r}, not a whole number")
        numbers.append(number)
    return numbers


# ---------------------------------------------------------------------------------------------- Food-101
def food101_classes(root) -> list[str]:
    """Class names from meta/classes.txt (one per line, label order: apple_pie, baby_back_ribs, ...)."""
    path = Path(root) / "meta" / "classes.txt"
    return _unique_names(path, [line for _, line in _lines(path, FOOD101_LAYOUT)])


def food101_dataset(root, split: str, **options) -> ImageFileDataset:
    """Food-101's train (75,750 images) or test (25,250) list."""
    root = Path(root)
    path = root / "meta" / f"{_split(split, FOOD101_SPLITS, 'food101')}.txt"
    classes = food101_classes(root)
    index = {name: i for i, name in enumerate(classes)}
    images = _need(root / "images", FOOD101_LAYOUT)
    samples = []
    for line_no, line in _lines(path, FOOD101_LAYOUT):
        name = line.split("/", 1)[0]
        if "/" not in line or name not in index:
            raise ValueError(f"{path}:{line_no}: {line!r} does not start with a class of {root / 'meta/classes.txt'}")
        samples.append((inside_folder(images, f"{line}.jpg", f"{path}:{line_no}"), index[name]))
    return ImageFileDataset(samples, classes, **options)


# ---------------------------------------------------------------------------------------------- CUB-200
def cub200_classes(root) -> list[str]:
    """Class names from classes.txt ("1 001.Black_footed_Albatross"), by label 1..200."""
    path = Path(root) / "classes.txt"
    rows = _fields(path, CUB200_LAYOUT, 2)
    names = {}
    for line_no, (number, name) in rows:
        names[_label(number, path, line_no, len(rows), "class number")] = name
    if len(names) != len(rows):
        raise ValueError(f"{path}: class numbers must be 1..{len(rows)}, each once")
    return _unique_names(path, [names[i] for i in range(len(rows))])


def _id_table(path: Path) -> dict[str, tuple[int, str]]:
    """"<id> <value>" lines -> {id: (line number, value)}; an id listed twice is an error."""
    table = {}
    for line_no, (image_id, value) in _fields(path, CUB200_LAYOUT, 2):
        if image_id in table:
            raise ValueError(f"{path}:{line_no}: image id {image_id} is listed twice")
        table[image_id] = line_no, value
    return table


def cub200_dataset(root, split: str, **options) -> ImageFileDataset:
    """CUB-200-2011's training (5,994 images) or test (5,794) half, from train_test_split.txt."""
    root = Path(root)
    wanted = _split(split, CUB200_SPLITS, "cub200")
    classes = cub200_classes(root)
    images_path, labels_path, split_path = (root / name for name in
                                            ("images.txt", "image_class_labels.txt", "train_test_split.txt"))
    images, labels, flags = _id_table(images_path), _id_table(labels_path), _id_table(split_path)
    image_dir = _need(root / "images", CUB200_LAYOUT)
    samples = []
    for image_id, (line_no, relpath) in images.items():
        for table, path in ((labels, labels_path), (flags, split_path)):
            if image_id not in table:
                raise ValueError(f"{path}: no entry for image id {image_id} ({images_path}:{line_no})")
        flag_line, flag = flags[image_id]
        if flag not in ("0", "1"):
            raise ValueError(f"{split_path}:{flag_line}: expected 1 (train) or 0 (test), got {flag!r}")
        if flag == wanted:
            label_line, label = labels[image_id]
            samples.append((inside_folder(image_dir, relpath, f"{images_path}:{line_no}"),
                            _label(label, labels_path, label_line, len(classes))))
    return ImageFileDataset(samples, classes, **options)


# ----------------------------------------------------------------------------------------- Stanford Cars
def stanford_cars_classes(root) -> list[str]:
    """Class names from devkit/cars_meta.mat `class_names` ("AM General Hummer SUV 2000", ...), by label 1..196."""
    path = Path(root) / "devkit" / "cars_meta.mat"
    names = _mat_variable(_load_mat(path, STANFORD_CARS_LAYOUT), "class_names", path)
    return _unique_names(path, [str(_mat_scalar(name, f"{path}: class_names[{i}]")) for i, name in enumerate(names, 1)])


def _cars_test_annotations(root: Path) -> Path:
    """cars_test_annos_withlabels.mat, in root/ or root/devkit/ (both layouts are distributed)."""
    candidates = [root / "cars_test_annos_withlabels.mat", root / "devkit" / "cars_test_annos_withlabels.mat"]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"neither {candidates[0]} nor {candidates[1]} found (devkit/cars_test_annos.mat "
                                f"has no labels); {STANFORD_CARS_LAYOUT}")
    return found


def stanford_cars_dataset(root, split: str, **options) -> ImageFileDataset:
    """Stanford Cars' train (8,144 images) or test (8,041) annotations; bounding boxes are not used."""
    root = Path(root)
    official = _split(split, STANFORD_CARS_SPLITS, "stanford_cars")
    path = root / "devkit" / "cars_train_annos.mat" if official == "train" else _cars_test_annotations(root)
    classes = stanford_cars_classes(root)
    annotations = _mat_variable(_load_mat(path, STANFORD_CARS_LAYOUT), "annotations", path)
    fields = annotations.dtype.names or ()
    if "class" not in fields or "fname" not in fields:
        raise ValueError(f"{path}: annotations need the fields class and fname, found {', '.join(fields) or 'none'}")
    image_dir = _need(root / f"cars_{official}", STANFORD_CARS_LAYOUT)
    samples = []
    for i, (number, fname) in enumerate(zip(_mat_numbers(annotations["class"], path, "annotations.class"),
                                            annotations["fname"]), 1):
        name = _mat_scalar(fname, f"{path}: annotations.fname[{i}]")
        if not isinstance(name, str):
            raise ValueError(f"{path}: annotations.fname[{i}] is {name!r}, not a file name")
        if not 1 <= number <= len(classes):
            raise ValueError(f"{path}: annotation {i} ({name}) has class {number}, not a class number "
                             f"1..{len(classes)} of devkit/cars_meta.mat")
        samples.append((inside_folder(image_dir, name, f"{path}: annotations.fname[{i}]"), number - 1))
    return ImageFileDataset(samples, classes, **options)


# ----------------------------------------------------------------------------------- Oxford 102 Flowers
def flowers102_dataset(root, split: str, **options) -> ImageFileDataset:
    """Oxford 102 Flowers' train, val (1,020 images each), test (6,149) or trainval (2,040) images."""
    root = Path(root)
    keys = _split(split, FLOWERS102_SPLITS, "flowers102")
    labels_path, setid_path = root / "imagelabels.mat", root / "setid.mat"
    labels = _mat_numbers(_mat_variable(_load_mat(labels_path, FLOWERS102_LAYOUT), "labels", labels_path),
                          labels_path, "labels")
    setid = _load_mat(setid_path, FLOWERS102_LAYOUT)
    ids = sorted({i for key in keys for i in _mat_numbers(_mat_variable(setid, key, setid_path), setid_path, key)})
    image_dir = _need(root / "jpg", FLOWERS102_LAYOUT)
    samples = []
    for image_id in ids:
        if not 1 <= image_id <= len(labels):
            raise ValueError(f"{setid_path}: image {image_id} of {'/'.join(keys)} has no label in {labels_path} "
                             f"({len(labels)} images)")
        label = labels[image_id - 1]
        if not 1 <= label <= len(FLOWERS102_CLASSES):
            raise ValueError(f"{labels_path}: labels[{image_id}] is {label}, not a class number "
                             f"1..{len(FLOWERS102_CLASSES)}")
        samples.append((str(image_dir / f"image_{image_id:05d}.jpg"), label - 1))
    return ImageFileDataset(samples, list(FLOWERS102_CLASSES), **options)  # the files hold numbers only


# ------------------------------------------------------------------------------------ Oxford-IIIT Pet
def _pet_rows(path: Path) -> list[tuple[int, str, str, int]]:
    """(line number, image name, breed name, class id) per "Abyssinian_100 1 1 1" line."""
    rows = []
    for line_no, line in _lines(path, PETS_LAYOUT):
        fields = line.split()
        breed, _, number = fields[0].rpartition("_")
        if len(fields) < 2 or not breed or not number.isdecimal() or not fields[1].isdecimal():
            raise ValueError(f"{path}:{line_no}: expected 'Breed_name_<n> <class id> <species> <breed id>', "
                             f"got {line!r}")
        rows.append((line_no, fields[0], breed, int(fields[1])))
    return rows


def pets_classes(root) -> list[str]:
    """Breed names (the image-name prefixes: Abyssinian, american_bulldog, ...) in class-id order, from
    annotations/trainval.txt, where every breed appears."""
    path = Path(root) / "annotations" / "trainval.txt"
    names: dict[int, str] = {}
    for line_no, _, breed, class_id in _pet_rows(path):
        if names.setdefault(class_id, breed) != breed:
            raise ValueError(f"{path}:{line_no}: class id {class_id} is {breed!r} here but {names[class_id]!r} "
                             f"earlier")
    if sorted(names) != list(range(1, len(names) + 1)):
        raise ValueError(f"{path}: class ids must be 1..{len(names)} without gaps, got {sorted(names)[:5]}...")
    return _unique_names(path, [names[i] for i in range(1, len(names) + 1)])


def pets_dataset(root, split: str, **options) -> ImageFileDataset:
    """Oxford-IIIT Pet's trainval (3,680 images) or test (3,669) list."""
    root = Path(root)
    path = root / "annotations" / f"{_split(split, PETS_SPLITS, 'pets')}.txt"
    classes = pets_classes(root)
    image_dir = _need(root / "images", PETS_LAYOUT)
    samples = []
    for line_no, name, breed, class_id in _pet_rows(path):
        if not 1 <= class_id <= len(classes) or classes[class_id - 1] != breed:
            known = f"is {classes[class_id - 1]!r}" if 1 <= class_id <= len(classes) else "is not listed"
            raise ValueError(f"{path}:{line_no}: {name} has class id {class_id}, which in "
                             f"{root / 'annotations/trainval.txt'} {known}")
        samples.append((inside_folder(image_dir, f"{name}.jpg", f"{path}:{line_no}"), class_id - 1))
    return ImageFileDataset(samples, classes, **options)


# -------------------------------------------------------------------------------------- FGVC-Aircraft
def aircraft_classes(root) -> list[str]:
    """The 100 variant names from data/variants.txt ("707-320", ..., "Yak-42"), label order."""
    path = Path(root) / "data" / "variants.txt"
    return _unique_names(path, [line for _, line in _lines(path, AIRCRAFT_LAYOUT)])


def aircraft_dataset(root, split: str, **options) -> ImageFileDataset:
    """FGVC-Aircraft's train, val (3,334 images each), trainval (6,667) or test (3,333) images, by variant."""
    root = Path(root)
    path = root / "data" / f"images_variant_{_split(split, AIRCRAFT_SPLITS, 'aircraft')}.txt"
    classes = aircraft_classes(root)
    index = {name: i for i, name in enumerate(classes)}
    image_dir = _need(root / "data" / "images", AIRCRAFT_LAYOUT)
    samples = []
    for line_no, (image_id, variant) in _fields(path, AIRCRAFT_LAYOUT, 2):
        if variant not in index:
            raise ValueError(f"{path}:{line_no}: variant {variant!r} is not in {root / 'data/variants.txt'}")
        samples.append((inside_folder(image_dir, f"{image_id}.jpg", f"{path}:{line_no}"), index[variant]))
    return ImageFileDataset(samples, classes, **options)
