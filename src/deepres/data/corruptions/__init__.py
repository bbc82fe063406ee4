"""Distribution shifts for robustness evaluation (Hendrycks & Dietterich, ICLR 2019): ImageNet-C style corruptions
made on the fly (corruptions), ImageNet-P style perturbation sequences (perturbations), and the ImageNet-C tree on
disk, written and read (imagenet_c). The corruptions' public names are re-exported here."""
from .corruptions import (ALL_CORRUPTIONS, CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES, corrupt, parse_corruptions,
                          parse_severities)
