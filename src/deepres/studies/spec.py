"""Study files: a base recipe, named variants (override lists), seeds, and what to report.

A study expands into one ordinary training config per (variant, seed). The overrides of one run are applied
in this order, later ones winning:

    base recipe < data preset (`data:` / --data) < budget (`budget:` / --budget) < `overrides:`
                < the variant's overrides < `set:` and --set < train.seed, run.out_dir, run.name (the study's)

Every override goes through deepres.core.config (the same `a.b=c` parsing, type checks and unknown-key
errors as `deepres train --set`); a bad one is reported with the study file and the variant it came from.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

from deepres.core.checkpoint import resolve_checkpoint
from deepres.core.config import RECIPES_DIR, Config, load_config, resolve_recipe
from deepres.core.typed import Schema, read_yaml_mapping
from deepres.data import get_format, resolve_root
from deepres.models import list_models
from deepres.models.pretrained import is_pretrained_name

# Studies shipped with the repository: <repo>/studies/<name>.yaml (DEEPRES_STUDIES overrides)
STUDIES_DIR = Path(os.environ.get("DEEPRES_STUDIES") or RECIPES_DIR.parent / "studies")

# Data presets: everything that changes with the dataset when a study moves from one to another (the
# CIFAR recipes' data block, the Fashion-MNIST demo's data block). Means and stds are training-set channel
# statistics on the 0-1 scale; root "" = the format's default location (--set data.root=DIR for yours).
DATA_PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": dict(name="cifar10", root="", val_split="test", image_size=32, crop_padding=4, hflip=True,
                    normalize="meanstd", mean=[0.4914, 0.4822, 0.4465], std=[0.2470, 0.2435, 0.2616]),
    "cifar100": dict(name="cifar100", root="", val_split="test", image_size=32, crop_padding=4, hflip=True,
                     normalize="meanstd", mean=[0.5071, 0.4865, 0.4409], std=[0.2673, 0.2564, 0.2762]),
    # 28x28 grayscale: pad 2 px and crop back to 28, as the Fashion-MNIST demo recipe does
    "fashion_mnist": dict(name="fashion_mnist", root="", val_split="test", image_size=28, crop_padding=2,
                          hflip=True, normalize="meanstd", mean=[0.2860], std=[0.3530]),
    # digits are not mirror-symmetric: no flip
    "mnist": dict(name="mnist", root="", val_split="test", image_size=28, crop_padding=2, hflip=False,
                  normalize="meanstd", mean=[0.1307], std=[0.3081]),
}

# Extra columns a report may show (report.columns): name -> (header, csv header)
COLUMNS = {
    "params": ("params", "params"),
    "gmacs": ("GMACs", "gmacs"),
    "epochs": ("epochs", "epochs"),
    "steps": ("steps", "steps"),
    "train_time": ("train time / run", "train_time_s"),
    "train_loss": ("final training loss (last epoch's mean)", "train_loss"),
    # From RUN/robustness/robustness.json (`deepres robustness RUN`), mean ± std over the runs that have one:
    "corruption_error": ("corruption error (%): mean over corruptions and severities", "corruption_error"),
    "mce": ("mCE (%) vs the robustness baseline", "mce"),
}
# Keys a study sets itself for every run; --set or overrides that touch them are errors.
STUDY_OWNED_KEYS = ("train.seed", "run.out_dir", "run.name")


@dataclass
class ReportConfig:
    # Final error = 100 - this accuracy (%), read after the LAST epoch (never the best one)
    metric: Literal["top1", "top5", "miou"] = "top1"  # miou: a segmentation study (error = 100 - mIoU)
    # Shaded band around the seed mean in curves.png: min-max over seeds, or mean ± sample std
    band: Literal["minmax", "std"] = "minmax"
    # Extra columns after variant, n, mean ± std, min, max, per-seed errors (see report.COLUMNS)
    columns: list[str] = field(default_factory=lambda: ["params", "gmacs", "epochs", "train_time"])
    # Also show the best epoch's error. Optimistic: that epoch is selected on the test set; labelled as such.
    best_epoch: bool = False


@dataclass
class StudyConfig:
    base: str = ""  # recipe name (e.g. cifar10/resnet20) or path, relative to the study file or recipes/
    description: str = ""  # the question the study asks; heads the report
    name: str = ""  # output folder name under studies_out/; "" = the study file's stem
    data: str = ""  # a data preset (DATA_PRESETS) applied to every run; "" = the base recipe's data
    budget: str = ""  # a key of `budgets` applied to every run; "" = the base recipe's own schedule
    budgets: dict[str, list[str]] = field(default_factory=dict)  # named override lists (e.g. a short schedule)
    seeds: list[int] = field(default_factory=lambda: [0])  # every variant runs once per seed
    overrides: list[str] = field(default_factory=list)  # `a.b=c` applied to every run
    # name -> overrides (a list of `a.b=c`, or a mapping {a.b: c}); the order here is the report's order
    variants: dict[str, Any] = field(default_factory=dict)
    # `a.b=c` applied after each variant's overrides; --set adds to these (the stored study.yaml holds both)
    set: list[str] = field(default_factory=list)
    report: ReportConfig = field(default_factory=ReportConfig)
    path: str = ""  # the study file this was loaded from (set by load_study)


@dataclass
class PlannedRun:
    variant: str
    seed: int
    overrides: list[str]  # everything applied on top of the base recipe, in order
    config: Config
    run_dir: Path


# ------------------------------------------------------------------------------------------------ loading


def resolve_study(path_or_name: str | os.PathLike) -> Path:
    """A study path as given, or a name like `block_variants` under the repository's studies/ directory."""
    p = Path(path_or_name)
    for c in (p, p.with_name(p.name + ".yaml"), STUDIES_DIR / p, STUDIES_DIR / f"{p}.yaml"):
        if c.is_file():
            return c
    shipped = sorted(q.stem for q in STUDIES_DIR.glob("*.yaml")) if STUDIES_DIR.is_dir() else []
    raise FileNotFoundError(f"study {str(path_or_name)!r} not found (looked in . and {STUDIES_DIR}); "
                            f"shipped studies: {', '.join(shipped) or 'none'}")


def _training_key_hint(key: str) -> str:
    if key in get_type_hints(Config):
        return f" (training config keys go in `overrides:` or a variant as {key}.KEY=VALUE)"
    return ""


SCHEMA = Schema(StudyConfig, kind="study", free=("budgets", "variants"), skip=("path",), hint=_training_key_hint)


def load_study(path_or_name: str | os.PathLike) -> StudyConfig:
    """Read and type-check a study file; unknown keys and bad values are errors naming the key and file."""
    path = resolve_study(path_or_name)
    study = SCHEMA.instantiate(SCHEMA.check(read_yaml_mapping(path, "study"), str(path)))
    study.path = str(path)
    study.variants = {str(k): _variant_overrides(v, f"{path}: variants.{k}") for k, v in study.variants.items()}
    validate_study(study)
    return study


def _variant_overrides(value: Any, where: str) -> list[str]:
    """A variant's overrides as `a.b=c` strings, from a list of them or a {a.b: c} mapping (None = [])."""
    if value is None:
        return []
    if isinstance(value, dict):
        # JSON is valid YAML: the value is parsed back exactly as the mapping held it
        return [f"{k}={json.dumps(v)}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"{where}: expected a list of KEY=VALUE strings or a mapping {{KEY: VALUE}}, got {value!r}")


def validate_study(study: StudyConfig) -> None:
    """Checks the types cannot express: names, seeds, presets, budgets, report columns."""
    where = study.path or "study"
    if not study.base:
        raise ValueError(f"{where}: 'base' is missing: name the recipe every run starts from (e.g. cifar10/resnet20)")
    if not study.variants:
        raise ValueError(f"{where}: 'variants' is empty: a study compares at least one variant")
    for name in study.variants:
        if not name or "/" in name or name in (".", "..", "report") or name.startswith("."):
            raise ValueError(f"{where}: variant name {name!r} must be a plain folder name (not 'report')")
    if not study.seeds or len(set(study.seeds)) != len(study.seeds) or min(study.seeds) < 0:
        raise ValueError(f"{where}: seeds={study.seeds}: need at least one seed, all different and >= 0")
    if study.data and study.data not in DATA_PRESETS:
        raise ValueError(f"{where}: data={study.data!r}: not a data preset; presets: {', '.join(DATA_PRESETS)}")
    for name, items in study.budgets.items():
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"{where}: budgets.{name}: expected a list of KEY=VALUE strings, got {items!r}")
    if study.budget and study.budget not in study.budgets:
        raise ValueError(f"{where}: budget={study.budget!r}: not in budgets "
                         f"({', '.join(study.budgets) or 'none defined'})")
    bad = [c for c in study.report.columns if c not in COLUMNS]
    if bad:
        raise ValueError(f"{where}: report.columns: unknown {', '.join(map(repr, bad))}; "
                         f"columns: {', '.join(COLUMNS)}")


def with_selection(study: StudyConfig, *, data: str | None = None, budget: str | None = None,
                   seeds: list[int] | None = None, variants: list[str] | None = None) -> StudyConfig:
    """The study with command-line choices applied (--data, --budget, --seeds, --variants), re-validated."""
    changes: dict[str, Any] = {}
    if data is not None:
        changes["data"] = "" if data in ("", "base") else data
    if budget is not None:
        changes["budget"] = "" if budget in ("", "base") else budget
    if seeds is not None:
        changes["seeds"] = list(seeds)
    if variants is not None:
        unknown = [v for v in variants if v not in study.variants]
        if unknown:
            raise KeyError(f"--variants: {', '.join(unknown)} not in {study.path}; "
                           f"variants: {', '.join(study.variants)}")
        changes["variants"] = {v: study.variants[v] for v in variants}
    study = dataclasses.replace(study, **changes)
    validate_study(study)
    return study


def resolved_study_dict(study: StudyConfig, cli_overrides: list[str] = ()) -> dict:
    """The study as a loadable study file: selections applied, --set folded into `set`, base made absolute
    when it was a path beside the study file (so the copy in the output folder still finds it)."""
    d = json.loads(json.dumps(dataclasses.asdict(study)))
    d.pop("path")
    d["name"] = study.name or Path(study.path).stem
    d["set"] = [*study.set, *cli_overrides]
    if study.path and (Path(study.path).parent / study.base).is_file():
        d["base"] = str((Path(study.path).parent / study.base).resolve())
    return d


# ----------------------------------------------------------------------------------------------- planning


def data_preset_overrides(name: str) -> list[str]:
    """The `data.KEY=VALUE` overrides of a data preset ("" = none)."""
    if not name:
        return []
    if name not in DATA_PRESETS:
        raise ValueError(f"data preset {name!r} unknown; presets: {', '.join(DATA_PRESETS)}")
    return [f"data.{k}={json.dumps(v)}" for k, v in DATA_PRESETS[name].items()]


def default_study_dir(study: StudyConfig, out_root: str | os.PathLike = "studies_out") -> Path:
    return Path(out_root) / (study.name or Path(study.path).stem)


def common_overrides(study: StudyConfig) -> list[str]:
    """The overrides every run of a study shares, before its variant's: data preset, budget, study overrides."""
    return [*data_preset_overrides(study.data), *(study.budgets.get(study.budget, []) if study.budget else []),
            *study.overrides]


def plan_study(study: StudyConfig, study_dir: str | os.PathLike, cli_overrides: list[str] = ()) -> list[PlannedRun]:
    """Every (variant, seed) as a checked training config living in study_dir/<variant>/seed<k>/."""
    study_dir = Path(study_dir)
    where = study.path or "study"
    base = _resolve_base(study)
    late = [*study.set, *cli_overrides]
    for item in late:
        _refuse_owned(item, "--set")
    common = common_overrides(study)
    for item in common:
        _refuse_owned(item, where)
    runs = []
    for variant, variant_overrides in study.variants.items():
        for item in variant_overrides:
            _refuse_owned(item, f"{where}: variants.{variant}")
        for seed in study.seeds:
            owned = [f"train.seed={seed}", f"run.out_dir={json.dumps(str(study_dir / variant))}",
                     f"run.name=seed{seed}"]
            overrides = [*common, *variant_overrides, *late, *owned]
            try:
                cfg = load_config(base, overrides)
            except (KeyError, ValueError) as e:
                msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
                raise type(e)(f"{where}: variant {variant!r}: {msg}") from None
            runs.append(PlannedRun(variant, seed, overrides, cfg, study_dir / variant / f"seed{seed}"))
    return runs


# Format options that name a file or folder (relative to data.root): checked by missing_files when set
DATA_PATH_OPTIONS = ("val_ground_truth", "synset_map", "image_root", "class_names", "sbd_root")


def missing_files(cfg: Config, made: tuple[Path, ...] = ()) -> list[str]:
    """What training `cfg` would read and cannot find, one `key=value (why)` each: model.pretrained,
    train.kd_teacher (a run directory, checkpoint, published weights, model or recipe name), train.kd_logits,
    data.root (or the format's default location) and its format's file options. Cheap: nothing is opened or
    downloaded (published weights count as present). A path at or below one of `made` (run folders an earlier run
    of the same study writes) counts as present."""
    def absent(value: str) -> str | None:
        """Why the run directory, checkpoint or file `value` cannot be read; None if it can."""
        path = Path(value).expanduser()
        if any(path.resolve().is_relative_to(folder.resolve()) for folder in made):
            return None
        if not path.exists():
            return "does not exist"
        try:
            resolve_checkpoint(str(path))
        except FileNotFoundError:
            return "no checkpoints/best.safetensors or last.safetensors in this folder"
        return None

    missing = []
    pretrained = cfg.model.pretrained
    if pretrained and not is_pretrained_name(pretrained) and (why := absent(pretrained)):
        missing.append(f"model.pretrained={pretrained} ({why})")
    teacher = cfg.train.kd_teacher
    if teacher and not (is_pretrained_name(teacher) or teacher in list_models() or _is_recipe(teacher)) and \
            (why := absent(teacher)):
        missing.append(f"train.kd_teacher={teacher} ({why})")
    logits = cfg.train.kd_logits
    if logits and not Path(logits).expanduser().is_file():
        missing.append(f"train.kd_logits={logits} (no such file)")
    if get_format(cfg.data.name).needs_root:
        try:
            root = resolve_root(cfg.data)
        except FileNotFoundError:
            missing.append(f"data.root={cfg.data.root} (does not exist)")
        except ValueError as e:  # not set, and the format's default location holds nothing
            missing.append(f"data.root ({e})")
        else:
            missing += [f"data.{key}={getattr(cfg.data, key)} ({root / getattr(cfg.data, key)} does not exist)"
                        for key in DATA_PATH_OPTIONS
                        if getattr(cfg.data, key) and not (root / Path(getattr(cfg.data, key)).expanduser()).exists()]
    return missing


def _is_recipe(name: str) -> bool:
    try:
        resolve_recipe(name)
    except FileNotFoundError:
        return False
    return True


def _resolve_base(study: StudyConfig) -> Path:
    if study.path:
        beside = Path(study.path).parent / study.base
        if beside.is_file():
            return beside
    try:
        return resolve_recipe(study.base)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{study.path or 'study'}: base: {e}") from None


def _refuse_owned(item: str, where: str) -> None:
    key = item.partition("=")[0].strip()
    if key in STUDY_OWNED_KEYS:
        raise ValueError(f"{where}: {item!r}: the study sets {key} itself (seeds come from `seeds:` / --seeds, "
                         f"the run folder from --out)")
