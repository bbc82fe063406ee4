"""ImageNet-1k (ILSVRC2012) class names and WordNet synset ids, in the standard class-index order.

imagenet_classes.txt holds one "synset<TAB>name" line per class, index 0 to 999. The order is the sorted synset
ids, which is the order of torchvision/timm/Caffe classifiers and of deepres' `imagenet` data format (labels
index the sorted train synsets). A name is the first WordNet lemma of its synset (as in the ILSVRC2012
synset_words.txt); two lemmas occur twice in ImageNet-1k and are told apart as torchvision does:
134 n02012849 "crane bird" (517 n03126707 stays "crane", the machine) and 639 n03710721 "maillot tank suit"
(638 n03710637 stays "maillot"). Checked against two public copies (Kaggle's LOC_synset_mapping.txt and Keras'
imagenet_class_index.json via pytorch/hub imagenet_classes.txt): all 1000 first lemmas agree.
"""
from functools import lru_cache
from importlib.resources import files

CLASSES_FILE = "imagenet_classes.txt"
NUM_CLASSES = 1000


@lru_cache(maxsize=1)
def _rows() -> tuple[tuple[str, str], ...]:
    text = files("deepres.data").joinpath(CLASSES_FILE).read_text(encoding="utf-8")
    rows = tuple(tuple(line.split("\t")) for line in text.splitlines() if line.strip())
    if len(rows) != NUM_CLASSES or any(len(row) != 2 for row in rows):
        raise ValueError(f"deepres/data/{CLASSES_FILE} is damaged: expected {NUM_CLASSES} 'synset<TAB>name' lines")
    return rows


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names by class index ("tench", "goldfish", ..., "toilet tissue")."""
    return [name for _, name in _rows()]


def imagenet_synsets() -> list[str]:
    """The 1000 WordNet synset ids by class index ("n01440764", ..., "n15075141")."""
    return [synset for synset, _ in _rows()]
