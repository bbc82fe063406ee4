"""Robustness to common corruptions and perturbations (Hendrycks & Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", ICLR 2019): ImageNet-C's corruption error (CE, mCE, relative
mCE), ImageNet-P's flip probability and top-5 distance (mFR, mT5D), the published AlexNet numbers they are
normalised by, and the report files (robustness.md / .csv / .json / _severity.png, an example grid).

Errors are top-1 error fractions in 0..1 here; CE, flip rates and their means are ratios (the paper prints them
x100: ResNet-50 has mCE 76.7%, mFR 58.0%); the report files hold all of them in percent (write_report). With E_s,c
the error at severity s of corruption c and b the baseline:
  CE_c          = sum_s E_s,c / sum_s E^b_s,c                                      (s = 1..5)
  relative CE_c = sum_s (E_s,c - E_clean) / sum_s (E^b_s,c - E^b_clean)
  mCE           = the mean CE_c over the corruptions named (the benchmark's 15 unless said otherwise)
  FR_p          = FP_p / FP^b_p, mFR its mean over the perturbations named (the benchmark's 10).
A baseline's errors per corruption are either per severity ({1: e1, ..., 5: e5}) or one float, the mean over
severities 1..5 (the ratio of sums is the ratio of means when both have all five).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from deepres.core.files import atomic_write, atomic_write_many
from deepres.core.plots import save_panels
from deepres.data.corruptions import ALL_CORRUPTIONS, CORRUPTIONS, SEVERITIES
from deepres.data.corruptions.perturbations import EXTRA_PERTURBATIONS, PERTURBATIONS

# --------------------------------------------------------------------------------------------- AlexNet
# AlexNet (torchvision's alexnet-owt-4df8aa71, the checkpoint Hendrycks' test.py loads) top-1 error on
# ImageNet-C at severities 1..5. Source: Hendrycks' mCE spreadsheet (hendrycks/robustness README, "Calculating the
# mCE"), as transcribed in UCSC-VLAA/RobustCNN timm/utils/imagenet_c.py. Each is a count out of the 50,000 val
# images, so five decimals are exact (the transcription's float noise, 0.656239999999999, is rounded away). Their
# means are AugMix's ALEXNET_ERR (google-research/augmix imagenet.py: 0.886428, 0.894468, ...) and the paper's
# Appendix D percentages (88.6, 89.4, ...).
ALEXNET_ERRORS = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.94870, 0.98720, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.58430, 0.70048, 0.82108, 0.89750, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.91870, 0.94952),
    "frost": (0.61390, 0.79734, 0.88790, 0.89942, 0.93430),
    "fog": (0.67474, 0.76050, 0.84378, 0.87260, 0.94500),
    "brightness": (0.45140, 0.48502, 0.54048, 0.62166, 0.72440),
    "contrast": (0.64548, 0.76150, 0.88874, 0.97760, 0.99270),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.54620, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}
# The 4 extra corruptions: only the mean over severities is published, to 0.1%: the paper's Appendix D ("Speckle
# Noise: 84.5%, Gaussian Blur: 78.7%, Spatter: 71.8%, Saturate: 65.8%"; read in the draft hendrycks/robustness
# new_draft.pdf, commit de7653a). So an mCE over 19 against AlexNet carries that rounding on 4 of its terms.
ALEXNET_EXTRA_MEAN_ERRORS = {"speckle_noise": 0.845, "gaussian_blur": 0.787, "spatter": 0.718, "saturate": 0.658}
# Clean top-1 error: torchvision's published 56.522% top-1 for alexnet-owt-4df8aa71; the paper's tables round it
# to 43.5.
ALEXNET_CLEAN_ERROR = 0.43478
# ImageNet-P flip probabilities FP^AlexNet (the paper's Appendix E, same draft): the mFR denominators.
ALEXNET_FLIP_PROBABILITIES = {
    "gaussian_noise": 0.2365, "shot_noise": 0.3006, "motion_blur": 0.0930, "zoom_blur": 0.0594, "snow": 0.1193,
    "brightness": 0.0489, "translate": 0.1101, "rotate": 0.1310, "tilt": 0.0705, "scale": 0.2353,
    "speckle_noise": 0.1865, "gaussian_blur": 0.0278, "spatter": 0.0505, "shear": 0.1066,
}
# ImageNet-P unnormalised top-5 distances uT5D^AlexNet (Appendix E): the mT5D denominators.
ALEXNET_TOP5_DISTANCES = {
    "gaussian_noise": 4.77, "shot_noise": 5.76, "motion_blur": 1.93, "zoom_blur": 1.34, "snow": 2.42,
    "brightness": 1.19, "translate": 2.63, "rotate": 2.95, "tilt": 1.75, "scale": 4.48, "speckle_noise": 3.89,
    "gaussian_blur": 0.70, "spatter": 1.26, "shear": 2.48,
}

SeverityErrors = Mapping[int, float] | float  # per severity, or the mean over severities 1..5


@dataclass(frozen=True)
class Baseline:
    """What CE and flip rates are divided by: a name saying whose numbers they are, and the numbers. A run's report
    also says what they were measured on (images, severities, perturbation_images), and CE is only defined against
    errors measured the same way (check_comparable); published numbers leave them None."""

    name: str
    errors: dict[str, SeverityErrors]  # corruption -> per-severity errors or their mean over 1..5
    clean_error: float | None = None
    flip_probabilities: dict[str, float] = field(default_factory=dict)
    top5_distances: dict[str, float] = field(default_factory=dict)
    images: int | None = None  # images per (corruption, severity)
    severities: tuple[int, ...] | None = None  # the severities measured
    perturbation_images: int | None = None  # sequences per perturbation


ALEXNET = Baseline(
    name="AlexNet (Hendrycks & Dietterich 2019)",
    errors={**{name: dict(zip(SEVERITIES, row)) for name, row in ALEXNET_ERRORS.items()},
            **ALEXNET_EXTRA_MEAN_ERRORS},
    clean_error=ALEXNET_CLEAN_ERROR,
    flip_probabilities=dict(ALEXNET_FLIP_PROBABILITIES),
    top5_distances=dict(ALEXNET_TOP5_DISTANCES),
)


# ---------------------------------------------------------------------------------------------- ImageNet-C
def _fraction(value, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be an error fraction in 0..1, got {value!r} (a percentage?)")
    return value


def _severity_sum(errors: SeverityErrors, what: str) -> float:
    """sum_s E_s over severities 1..5 (5 x the mean when given as one float); ValueError naming a missing one."""
    if isinstance(errors, Mapping):
        missing = [s for s in SEVERITIES if s not in errors]
        if missing:
            raise ValueError(f"{what} has no error at severity {missing[0]} (CE needs all of 1..5)")
        return sum(_fraction(errors[s], f"{what} severity {s}") for s in SEVERITIES)
    return len(SEVERITIES) * _fraction(errors, f"{what} (mean over severities)")


def corruption_error(errors_by_sev: SeverityErrors, baseline_by_sev: SeverityErrors) -> float:
    """CE_c = sum_s E_s,c / sum_s E^b_s,c over severities 1..5."""
    denominator = _severity_sum(baseline_by_sev, "the baseline")
    if denominator == 0:
        raise ValueError("the baseline's errors are all 0, so CE is undefined")
    return _severity_sum(errors_by_sev, "the model") / denominator


def relative_corruption_error(errors_by_sev: SeverityErrors, clean_error: float, baseline_by_sev: SeverityErrors,
                              baseline_clean: float) -> float:
    """Relative CE_c = sum_s (E_s,c - E_clean) / sum_s (E^b_s,c - E^b_clean): the degradation caused by the
    corruption, relative to the baseline's."""
    n = len(SEVERITIES)
    drop = _severity_sum(errors_by_sev, "the model") - n * _fraction(clean_error, "the clean error")
    baseline_drop = _severity_sum(baseline_by_sev, "the baseline") - n * _fraction(baseline_clean,
                                                                                   "the baseline's clean error")
    if baseline_drop == 0:
        raise ValueError("the baseline's corrupted errors equal its clean error, so relative CE is undefined")
    return drop / baseline_drop


def _lookup(table: Mapping, name: str, whose: str):
    if name not in table:
        raise ValueError(f"{whose} have no entry for {name!r} (has: {', '.join(map(str, table)) or 'nothing'})")
    return table[name]


def mean_corruption_error(errors: Mapping[str, SeverityErrors], baseline: Mapping[str, SeverityErrors],
                          corruptions: Sequence[str] = CORRUPTIONS) -> float:
    """mCE: the mean CE_c over `corruptions` (the benchmark's 15 by default)."""
    return _mean([corruption_error(_lookup(errors, c, "the model's errors"),
                                   _lookup(baseline, c, "the baseline's errors")) for c in corruptions])


def relative_mean_corruption_error(errors: Mapping[str, SeverityErrors], clean_error: float,
                                   baseline: Mapping[str, SeverityErrors], baseline_clean: float,
                                   corruptions: Sequence[str] = CORRUPTIONS) -> float:
    """Relative mCE: the mean relative CE_c over `corruptions`."""
    return _mean([relative_corruption_error(_lookup(errors, c, "the model's errors"), clean_error,
                                            _lookup(baseline, c, "the baseline's errors"), baseline_clean)
                  for c in corruptions])


def _mean(values: list[float]) -> float:
    if not values:
        raise ValueError("no corruptions or perturbations named")
    return sum(values) / len(values)


# ---------------------------------------------------------------------------------------------- ImageNet-P
def _frame_pairs(num_frames: int, noise: bool, difficulty: int) -> tuple[list[int], list[int]]:
    """(earlier, later) frame indices compared, as ImageNet-P/test.py pairs them: a noise sequence's frame t with
    frame 0; any other sequence's frame t with frame t - difficulty (its frames interleave `difficulty` runs)."""
    if difficulty < 1:
        raise ValueError(f"difficulty must be >= 1, got {difficulty}")
    step = 1 if noise else difficulty
    if num_frames <= step:
        raise ValueError(f"a sequence of {num_frames} frames has no pair {step} frame(s) apart")
    later = list(range(step, num_frames))
    return ([0] * len(later) if noise else [t - step for t in later]), later


def flip_probability(predictions: torch.Tensor, noise: bool, difficulty: int = 1) -> float:
    """FP: how often the top-1 prediction changes along a sequence, averaged per sequence, then over sequences.

    predictions: (N sequences, T frames) class indices. noise (True for NOISE_PERTURBATIONS, whose frames are
    independent draws): compare each frame with the first; otherwise each frame with the one `difficulty` before it
    (difficulty is 1 for the published numbers; noise sequences of difficulty 2, 3 are separate folders). Sequences
    weigh equally, so batches of sequences combine by a mean weighted by their sequence counts."""
    predictions = torch.as_tensor(predictions)
    if predictions.ndim != 2:
        raise ValueError(f"predictions must be (sequences, frames), got shape {tuple(predictions.shape)}")
    earlier, later = _frame_pairs(predictions.shape[1], noise, difficulty)
    flips = predictions[:, later] != predictions[:, earlier]
    return flips.double().mean(dim=1).mean().item()


def top5_distance(scores: torch.Tensor, noise: bool, difficulty: int = 1) -> float:
    """uT5D: how far the top-5 ranking moves along a sequence (the frames paired as in `flip_probability`).

    scores: (N sequences, T frames, K classes) logits or probabilities. For a pair of frames, with r_j the 0-based
    rank in the later frame of the earlier frame's rank-j class (ties ranked by class index, scipy's "ordinal"),
    the distance is sum_{j<5} |j - min(r_j, 5)| (the paper's top-5 distance; test.py's `dist`)."""
    scores = torch.as_tensor(scores)
    if scores.ndim != 3 or scores.shape[2] < 5:
        raise ValueError(f"scores must be (sequences, frames, >= 5 classes), got shape {tuple(scores.shape)}")
    earlier, later = _frame_pairs(scores.shape[1], noise, difficulty)
    order = torch.argsort(-scores, dim=2, stable=True)  # order[..., j] = the class ranked j
    rank = torch.argsort(order, dim=2)  # rank[..., c] = the rank of class c
    top5 = order[:, earlier, :5]
    moved = rank[:, later].gather(2, top5).clamp(max=5)
    distance = (moved - torch.arange(5)).abs().sum(dim=2)
    return distance.double().mean(dim=1).mean().item()


def flip_rate(fp: float, baseline_fp: float) -> float:
    """FR_p = FP_p / FP^b_p (also the top-5 distance ratio, T5D_p / uT5D^b_p)."""
    if not baseline_fp > 0:
        raise ValueError(f"the baseline's value must be > 0, got {baseline_fp}")
    return fp / baseline_fp


def mean_flip_rate(flip_probabilities: Mapping[str, float], baseline: Mapping[str, float],
                   perturbations: Sequence[str] = PERTURBATIONS) -> float:
    """mFR: the mean flip rate over `perturbations` (the benchmark's 10 by default). Given top-5 distances and the
    baseline's, the same mean is mT5D."""
    return _mean([flip_rate(_lookup(flip_probabilities, p, "the model's values"),
                            _lookup(baseline, p, "the baseline's values")) for p in perturbations])


# ------------------------------------------------------------------------------------------------ the report
def _severity_list(severities) -> str:
    """1-5 for 1, 2, 3, 4, 5; 1,3 otherwise."""
    values = sorted(set(severities))
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ",".join(map(str, values)) or "none"


def check_comparable(baseline: Baseline, images: int, severities, perturbation_images: int | None = None) -> None:
    """ValueError, naming both, unless errors measured on `images` images per (corruption, severity) at
    `severities` (and flip probabilities over `perturbation_images` sequences) can be divided by a run baseline's:
    CE is a ratio of errors on the same images, so a baseline run on 1,000 images against a model run on 10,000
    (or at other severities) gives a number that means nothing. Published numbers (images None) are not checked."""
    if baseline.images is None:
        return
    ours, theirs = _severity_list(severities), _severity_list(baseline.severities or ())
    if baseline.images != images or ours != theirs:
        raise ValueError(f"the baseline {baseline.name} was measured on {baseline.images} images at severities "
                         f"{theirs}, this run on {images} images at severities {ours}; CE divides errors on the "
                         f"same images, so measure both alike (--set data.limit_val=N, --severities)")
    if (perturbation_images is not None and baseline.flip_probabilities
            and baseline.perturbation_images != perturbation_images):
        raise ValueError(f"the baseline {baseline.name} made its perturbation sequences from "
                         f"{baseline.perturbation_images} images, this run from {perturbation_images}; flip rates "
                         f"divide values on the same sequences (--perturbation-images)")


def _defined(ratios: dict) -> dict[str, float]:
    """The ratios that are defined: a baseline whose errors sum to zero, or do not rise under a corruption,
    leaves that corruption's (relative) CE out instead of failing the whole report."""
    out = {}
    for name, compute in ratios.items():
        try:
            out[name] = compute()
        except (ValueError, ZeroDivisionError):
            continue
    return out


REPORT_VERSION = 2  # 2: every number in percent, image counts recorded (1: fractions, no counts)
REPORT_FILES = ("robustness.md", "robustness.csv", "robustness.json", "robustness_severity.png")
PERCENT_DECIMALS = 3  # .json and .csv: an error counted out of up to 50,000 images (steps of 0.002%) stays exact
UNITS = ("percent: clean_error, errors, flip_probabilities, corruption_errors, relative_corruption_errors, "
         "flip_rates, top5_distance_ratios, summary and the baseline's; top5_distances in rank positions")


@dataclass
class RobustnessReport:
    """One model's robustness results and the baseline they are compared with. Every derived number (CE, mCE,
    relative mCE, flip rates, mFR, mT5D) is computed from these fields on demand, by `summary()`."""

    model: str
    clean_error: float | None
    errors: dict[str, dict[int, float]]  # corruption -> severity -> top-1 error (0..1)
    baseline: Baseline = ALEXNET
    flip_probabilities: dict[str, float] = field(default_factory=dict)  # perturbation -> FP
    top5_distances: dict[str, float] = field(default_factory=dict)  # perturbation -> T5D
    dataset: str = ""  # what the errors were measured on (ImageNet-C at PATH, corrupt() on a test set, ...)
    images: int | None = None  # images per (corruption, severity)
    perturbation_images: int | None = None  # sequences per perturbation

    @property
    def severities(self) -> tuple[int, ...]:
        """Every severity measured, of any corruption."""
        return tuple(sorted({s for by_severity in self.errors.values() for s in by_severity}))

    def _complete(self, corruption: str) -> bool:
        return (all(s in self.errors.get(corruption, {}) for s in SEVERITIES)
                and corruption in self.baseline.errors)

    def corruption_errors(self) -> dict[str, float]:
        """CE_c of every corruption with all five severities here and an entry in the baseline."""
        return _defined({c: (lambda c=c: corruption_error(self.errors[c], self.baseline.errors[c]))
                         for c in self.errors if self._complete(c)})

    def relative_corruption_errors(self) -> dict[str, float]:
        """Relative CE_c, where both clean errors are known (else empty)."""
        if self.clean_error is None or self.baseline.clean_error is None:
            return {}
        return _defined({c: (lambda c=c: relative_corruption_error(self.errors[c], self.clean_error,
                                                                   self.baseline.errors[c], self.baseline.clean_error))
                         for c in self.errors if self._complete(c)})

    def flip_rates(self) -> dict[str, float]:
        return {p: flip_rate(fp, self.baseline.flip_probabilities[p]) for p, fp in self.flip_probabilities.items()
                if p in self.baseline.flip_probabilities}

    def top5_distance_ratios(self) -> dict[str, float]:
        return {p: flip_rate(d, self.baseline.top5_distances[p]) for p, d in self.top5_distances.items()
                if p in self.baseline.top5_distances}

    def mean_error(self, corruptions: Sequence[str] | None = None) -> float | None:
        """The corruption error: the mean top-1 error over every (corruption, severity) cell run, or over the cells
        of `corruptions` (None unless each has all five severities). Needs no baseline."""
        if corruptions is None:
            cells = [e for by_severity in self.errors.values() for e in by_severity.values()]
        elif all(s in self.errors.get(c, {}) for c in corruptions for s in SEVERITIES):
            cells = [self.errors[c][s] for c in corruptions for s in SEVERITIES]
        else:
            return None
        return _mean(cells) if cells else None

    def summary(self) -> dict:
        """The headline numbers. corruption_error is the mean error over every cell run (_15 / _19: over those 15
        or 19 corruptions x 5 severities, when all ran); mce_15 / mce_19 / mfr / mt5d are None unless every
        corruption (perturbation) of that set has a CE (FR) against the baseline; mce_evaluated is the mean over
        corruptions_with_ce, comparable with published mCEs only when those are the 15. corruptions_evaluated lists
        every corruption that ran."""
        ce, rel = self.corruption_errors(), self.relative_corruption_errors()
        fr, t5 = self.flip_rates(), self.top5_distance_ratios()

        def mean_over(values: dict, names: Sequence[str]) -> float | None:
            return _mean([values[n] for n in names]) if names and all(n in values for n in names) else None

        evaluated = _ordered([c for c in self.errors if self.errors[c]])
        with_ce = [c for c in evaluated if c in ce]
        return {
            "clean_error": self.clean_error,
            "corruption_error": self.mean_error(),
            "corruption_error_15": self.mean_error(CORRUPTIONS),
            "corruption_error_19": self.mean_error(ALL_CORRUPTIONS),
            "mce_15": mean_over(ce, CORRUPTIONS),
            "mce_19": mean_over(ce, ALL_CORRUPTIONS),
            "relative_mce_15": mean_over(rel, CORRUPTIONS),
            "relative_mce_19": mean_over(rel, ALL_CORRUPTIONS),
            "mce_evaluated": mean_over(ce, with_ce),
            "relative_mce_evaluated": mean_over(rel, with_ce),
            "corruptions_evaluated": evaluated,
            "corruptions_with_ce": with_ce,
            "mfr": mean_over(fr, PERTURBATIONS),
            "mt5d": mean_over(t5, PERTURBATIONS),
        }


def _ordered(names) -> list[str]:
    """Names in Hendrycks' order first (corruptions, then perturbations), any others after, as given."""
    known = [n for n in ALL_CORRUPTIONS + PERTURBATIONS + EXTRA_PERTURBATIONS if n in names]
    return list(dict.fromkeys(known + [n for n in names if n not in known]))


def as_stored(fraction: float) -> float:
    """A measured fraction rounded as the report files store it (percent to PERCENT_DECIMALS), so a number computed
    from it now (CE, mCE) is the one computed later from the file: a run is then its own baseline at exactly 100."""
    return round(float(fraction), PERCENT_DECIMALS + 2)


def _percent(value: float | None) -> float | None:
    """A fraction (or ratio) as the report files hold it: percent, rounded to PERCENT_DECIMALS."""
    return None if value is None else round(100 * float(value), PERCENT_DECIMALS)


def _percents(values: Mapping) -> dict:
    return {key: _percent(value) for key, value in values.items()}


def _rounded(values: Mapping[str, float]) -> dict:  # top-5 distances: rank positions, not percent
    return {key: round(float(value), PERCENT_DECIMALS) for key, value in values.items()}


def _baseline_errors_json(errors: Mapping[str, SeverityErrors]) -> dict:
    return {c: ({str(s): _percent(v) for s, v in e.items()} if isinstance(e, Mapping) else _percent(e))
            for c, e in errors.items()}


def _report_json(report: RobustnessReport) -> dict:
    base = report.baseline
    summary = {key: value if isinstance(value, list) else _percent(value) for key, value in report.summary().items()}
    return {
        "version": REPORT_VERSION,
        "units": UNITS,
        "model": report.model,
        "dataset": report.dataset,
        "images": report.images,
        "perturbation_images": report.perturbation_images,
        "clean_error": _percent(report.clean_error),
        "errors": {c: {str(s): _percent(e) for s, e in sorted(sev.items())} for c, sev in report.errors.items()},
        "flip_probabilities": _percents(report.flip_probabilities),
        "top5_distances": _rounded(report.top5_distances),
        "baseline": {"name": base.name, "clean_error": _percent(base.clean_error),
                     "errors": _baseline_errors_json(base.errors),
                     "flip_probabilities": _percents(base.flip_probabilities),
                     "top5_distances": _rounded(base.top5_distances), "images": base.images,
                     "severities": None if base.severities is None else list(base.severities),
                     "perturbation_images": base.perturbation_images},
        # Derived, for readers of the file; read_report recomputes them from the fields above.
        "corruption_errors": _percents(report.corruption_errors()),
        "relative_corruption_errors": _percents(report.relative_corruption_errors()),
        "flip_rates": _percents(report.flip_rates()),
        "top5_distance_ratios": _percents(report.top5_distance_ratios()),
        "summary": summary,
    }


def _pct(value: float | None, digits: int = 1) -> str:
    """A fraction as the .md shows it: percent, errors to 2 decimals, ratios (CE, FR) to 1 as the paper prints."""
    return "–" if value is None else f"{100 * value:.{digits}f}"


def _report_markdown(report: RobustnessReport) -> str:
    summary, ce, rel = report.summary(), report.corruption_errors(), report.relative_corruption_errors()
    lines = [f"# Robustness: {report.model}", ""]
    if report.dataset:
        counted = f" ({report.images} images per corruption and severity)" if report.images else ""
        lines += [f"Measured on: {report.dataset}{counted}", ""]
    lines += [f"Baseline: **{report.baseline.name}**. CE and flip rates are divided by its numbers; every number "
              "here is a percentage (errors, CE, FP and their ratios), except T5D, in rank positions.", ""]
    cells = sum(len(by_severity) for by_severity in report.errors.values())
    lines += [f"- clean error: {_pct(report.clean_error, 2)}",
              f"- corruption error (mean top-1 error over the {cells} corruption × severity cells run): "
              f"{_pct(summary['corruption_error'], 2)}"]
    if summary["corruption_error_19"] is not None:
        lines += [f"- corruption error over the standard 15 × 5: {_pct(summary['corruption_error_15'], 2)}"]
    count = len(summary["corruptions_with_ce"])
    if summary["mce_15"] is not None:
        lines += [f"- mCE (15 corruptions): {_pct(summary['mce_15'])}",
                  f"- relative mCE (15): {_pct(summary['relative_mce_15'])}"]
    elif count:
        lines += [f"- mCE (15 corruptions): – (only {count} of them evaluated against this baseline)",
                  f"- mCE over the {count} evaluated (not comparable with published mCEs): "
                  f"{_pct(summary['mce_evaluated'])}",
                  f"- relative mCE over the {count} evaluated: {_pct(summary['relative_mce_evaluated'])}"]
    else:
        lines += ["- mCE: – (no CE: the baseline has none of these corruptions)"]
    if summary["mce_19"] is not None:
        lines += [f"- mCE (19: the 15 + 4 extra): {_pct(summary['mce_19'])}",
                  f"- relative mCE (19): {_pct(summary['relative_mce_19'])}"]
    if report.flip_probabilities:
        lines += [f"- mFR (10 perturbations): {_pct(summary['mfr'])}"]
    if report.top5_distances:
        lines += [f"- mT5D (10 perturbations): {_pct(summary['mt5d'])}"]
    lines += ["", "| corruption | " + " | ".join(f"s{s}" for s in SEVERITIES) + " | mean | CE | rel. CE |",
              "|---|" + "---:|" * (len(SEVERITIES) + 3)]
    for c in _ordered(list(report.errors)):
        sev = report.errors[c]
        mean = sum(sev.values()) / len(sev) if sev else None
        cells = [_pct(sev.get(s), 2) for s in SEVERITIES] + [_pct(mean, 2), _pct(ce.get(c)), _pct(rel.get(c))]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if report.flip_probabilities or report.top5_distances:
        fr, t5 = report.flip_rates(), report.top5_distance_ratios()
        base = report.baseline
        lines += ["", "| perturbation | FP | baseline FP | FR | T5D | baseline T5D | T5D ratio |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for p in _ordered(list(dict.fromkeys([*report.flip_probabilities, *report.top5_distances]))):
            d, bd = report.top5_distances.get(p), base.top5_distances.get(p)
            cells = [_pct(report.flip_probabilities.get(p), 2), _pct(base.flip_probabilities.get(p), 2),
                     _pct(fr.get(p)), "–" if d is None else f"{d:.2f}", "–" if bd is None else f"{bd:.2f}",
                     _pct(t5.get(p))]
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _report_csv(report: RobustnessReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["corruption", "severity", "error_percent"])
    for c in _ordered(list(report.errors)):
        for s, e in sorted(report.errors[c].items()):
            writer.writerow([c, s, _percent(e)])
    return out.getvalue()


def _plot_severity(report: RobustnessReport, f) -> None:
    """Error (%) against severity, one line per corruption, the clean error dashed."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    names = _ordered(list(report.errors))
    colors = colormaps["tab20"]
    for i, c in enumerate(names):
        points = sorted(report.errors[c].items())
        ax.plot([s for s, _ in points], [100 * e for _, e in points], "o-", ms=3, lw=1.2, color=colors(i % 20),
                label=c)
    if report.clean_error is not None:
        ax.axhline(100 * report.clean_error, color="black", ls="--", lw=1.2, label="clean")
    # The x axis runs on past severity 5 to leave the legend (up to 20 names) room beside the lines.
    ax.set(xlabel="severity", ylabel="top-1 error (%)", xticks=list(SEVERITIES), xlim=(0.8, 6.9))
    save_panels(fig, [ax], f, title=f"{report.model}: error against corruption severity")


def write_report(report: RobustnessReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write robustness.md (tables + the summary naming the baseline), robustness.csv (corruption, severity,
    error_percent; the clean error is in the .md and .json), robustness.json (everything; `read_report` reads it
    back) and robustness_severity.png into `out_dir`, all or none (written beside, then renamed). Returns their
    paths. Every number in them is in percent (T5D in rank positions): rounded to PERCENT_DECIMALS in the .json and
    .csv, to 2 decimals (errors, FP) or 1 (CE, mCE, FR) in the .md."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name in REPORT_FILES}
    text = {"robustness.md": _report_markdown(report), "robustness.csv": _report_csv(report),
            "robustness.json": json.dumps(_report_json(report), indent=1) + "\n"}
    writers = [(paths[name], lambda f, t=t: f.write(t.encode())) for name, t in text.items()]
    writers.append((paths["robustness_severity.png"], lambda f: _plot_severity(report, f)))
    atomic_write_many(writers)
    return paths


def _from_percent(value, where: str) -> float:
    try:
        return float(value) / 100
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a percentage, got {value!r}") from None


def _severity_map(values: Mapping, where: str) -> dict[int, float]:
    try:
        return {int(s): _from_percent(e, where) for s, e in values.items()}
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"{where}: expected {{severity: error (%)}}, got {values!r}") from None


def _optional_percent(value, where: str) -> float | None:
    return None if value is None else _from_percent(value, where)


def read_report(path: str | os.PathLike) -> RobustnessReport:
    """The report a robustness.json holds (a file, or a folder holding one), its numbers back in fractions."""
    path = Path(path)
    if path.is_dir():
        path = path / "robustness.json"
    if not path.is_file():
        raise FileNotFoundError(f"robustness report not found: {path} (give a robustness.json or the folder "
                                "holding one)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("version"), int):
        raise ValueError(f"{path}: not a deepres robustness report")
    if data["version"] != REPORT_VERSION:
        raise ValueError(f"{path}: a robustness report of version {data['version']} (fractions, no image counts); "
                         f"this deepres reads version {REPORT_VERSION}: rerun `deepres robustness` on that run")
    try:
        base = data["baseline"]
        baseline = Baseline(
            name=base["name"],
            errors={c: (_severity_map(e, f"{path}: baseline errors of {c}") if isinstance(e, dict)
                        else _from_percent(e, f"{path}: baseline errors of {c}")) for c, e in base["errors"].items()},
            clean_error=_optional_percent(base["clean_error"], f"{path}: baseline clean_error"),
            flip_probabilities={p: _from_percent(v, f"{path}: baseline flip_probabilities")
                                for p, v in base["flip_probabilities"].items()},
            top5_distances={p: float(v) for p, v in base["top5_distances"].items()},
            images=base.get("images"), severities=None if base.get("severities") is None else tuple(base["severities"]),
            perturbation_images=base.get("perturbation_images"))
        return RobustnessReport(
            model=data["model"], clean_error=_optional_percent(data["clean_error"], f"{path}: clean_error"),
            errors={c: _severity_map(e, f"{path}: errors of {c}") for c, e in data["errors"].items()},
            baseline=baseline,
            flip_probabilities={p: _from_percent(v, f"{path}: flip_probabilities")
                                for p, v in data["flip_probabilities"].items()},
            top5_distances={p: float(v) for p, v in data["top5_distances"].items()}, dataset=data.get("dataset", ""),
            images=data.get("images"), perturbation_images=data.get("perturbation_images"))
    except KeyError as e:
        raise ValueError(f"{path}: missing key {e.args[0]!r}") from None
    except (AttributeError, TypeError) as e:
        raise ValueError(f"{path}: not a deepres robustness report ({e})") from None


def baseline_from_report(path: str | os.PathLike) -> Baseline:
    """A previous run's robustness result (its robustness.json, or the folder holding it) as the baseline, named
    after that model and the file, so a report says which run it was compared with; it carries what it was
    measured on, for check_comparable."""
    report = read_report(path)
    source = Path(path)
    source = source / "robustness.json" if source.is_dir() else source
    if report.images is None:
        raise ValueError(f"{source}: the report does not say how many images its errors were measured on, so no "
                         f"CE can be computed against it; rerun `deepres robustness` on that run")
    return Baseline(name=f"{report.model} ({source})", errors={c: dict(e) for c, e in report.errors.items()},
                    clean_error=report.clean_error, flip_probabilities=dict(report.flip_probabilities),
                    top5_distances=dict(report.top5_distances), images=report.images,
                    severities=report.severities, perturbation_images=report.perturbation_images)


# ------------------------------------------------------------------------------------------- example grid
GRID_MIN_SIDE = 96  # px: smaller images are enlarged by a whole factor (nearest neighbour) to at least this
GRID_PAD = 4  # px between cells and around the grid
GRID_LABEL_WIDTH = 120  # px: the column of corruption names
GRID_HEADER_HEIGHT = 20  # px: the row of column titles


def _as_rgb(image: torch.Tensor, key) -> Image.Image:
    image = torch.as_tensor(image)
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"example {key}: expected a uint8 (1 or 3, H, W) tensor, got {image.dtype} "
                         f"{tuple(image.shape)}")
    return Image.fromarray(image.expand(3, -1, -1).permute(1, 2, 0).contiguous().numpy())


def write_example_grid(images: Mapping[tuple[str, int], torch.Tensor], path: str | os.PathLike,
                       clean: torch.Tensor | None = None) -> Path:
    """A PNG of examples: a row per corruption (in Hendrycks' order), a column per severity 1..5 (the clean image
    first when given), labelled; images of under GRID_MIN_SIDE px are enlarged by nearest neighbour so a 28 px
    Fashion-MNIST digit stays visible. All images must have one size; a missing cell stays blank."""
    if not images:
        raise ValueError("no example images to draw")
    stray = next((key for key in images if key[1] not in SEVERITIES), None)
    if stray is not None:
        raise ValueError(f"example {stray}: severity must be one of {SEVERITIES}")
    cells = {key: _as_rgb(image, key) for key, image in images.items()}
    clean_cell = None if clean is None else _as_rgb(clean, "clean")
    sizes = {key: cell.size for key, cell in cells.items()}
    if clean_cell is not None:
        sizes["clean"] = clean_cell.size
    first = next(iter(sizes.values()))
    odd = next((key for key, size in sizes.items() if size != first), None)
    if odd is not None:
        raise ValueError(f"example {odd} is {sizes[odd][0]}x{sizes[odd][1]}, the others {first[0]}x{first[1]}")
    scale = max(1, math.ceil(GRID_MIN_SIDE / max(first)))
    width, height = first[0] * scale, first[1] * scale
    rows = _ordered(list(dict.fromkeys(c for c, _ in images)))
    columns = (["clean"] if clean is not None else []) + [str(s) for s in SEVERITIES]
    grid = Image.new("RGB", (GRID_LABEL_WIDTH + len(columns) * (width + GRID_PAD) + GRID_PAD,
                             GRID_HEADER_HEIGHT + len(rows) * (height + GRID_PAD) + GRID_PAD), "white")
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default()
    for j, title in enumerate(columns):
        x = GRID_LABEL_WIDTH + GRID_PAD + j * (width + GRID_PAD)
        draw.text((x, 4), title if title == "clean" else f"severity {title}", fill="black", font=font)
    for i, corruption in enumerate(rows):
        y = GRID_HEADER_HEIGHT + GRID_PAD + i * (height + GRID_PAD)
        draw.text((GRID_PAD, y + height // 2 - 6), corruption, fill="black", font=font)
        for j, title in enumerate(columns):
            cell = clean_cell if title == "clean" else cells.get((corruption, int(title)))
            if cell is not None:
                x = GRID_LABEL_WIDTH + GRID_PAD + j * (width + GRID_PAD)
                grid.paste(cell.resize((width, height), Image.Resampling.NEAREST), (x, y))
    path = Path(path)
    atomic_write(path, lambda f: grid.save(f, format="PNG"))
    return path
