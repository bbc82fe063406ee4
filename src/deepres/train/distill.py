"""Offline knowledge distillation: a teacher's logits on every training image, computed once and stored by
training-image index (as the Assemble-ResNet paper trains from stored teacher logits), then looked up per batch
by train.kd_logits instead of running the teacher in the loop (train.kd_teacher).

`deepres teacher-logits TEACHER RECIPE --out FILE [--set KEY=VALUE ...]` (deepres.commands) writes FILE (safetensors: `logits`,
float16, one row per image of the recipe's training split in its stored order; metadata: teacher, data, classes).
The teacher sees each training image once, through the recipe's evaluation transform (no augmentation); a mixed
batch gets the teacher's distributions mixed with the same lam as its labels."""
import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from deepres.core.config import Config
from deepres.core.files import atomic_write
from deepres.data import build_eval_loader
from deepres.tasks.build import load_model

FORMAT = "deepres.teacher_logits.v1"


def compute_teacher_logits(teacher: str, cfg: Config, *, device: str = "cpu") -> tuple[torch.Tensor, list[str]]:
    """(logits float32 (images, classes), class names) of `teacher` (a run, checkpoint or `arch.tag`) on cfg's
    training split, in the dataset's order (data.limit_train applies), through cfg's evaluation transform."""
    data = cfg.data
    if data.on_bad_image != "error":
        raise ValueError(f"data.on_bad_image={data.on_bad_image}: teacher logits are stored by image index, so "
                         f"every training image must decode; use data.on_bad_image=error")
    loaded = load_model(teacher)
    # The training split read as an evaluation split: in order, each image once, no augmentation
    loader, info = build_eval_loader(data, device, split="train")
    if len(loaded.class_names) != info.num_classes:
        raise ValueError(f"teacher {teacher} has {len(loaded.class_names)} outputs but data.name={data.name} has "
                         f"{info.num_classes} classes")
    model = loaded.model.to(device).eval()
    rows = []
    with torch.no_grad():
        for images, _ in loader:
            rows.append(model(images).float().cpu())
    logits = torch.cat(rows)
    if len(logits) != info.eval_size:
        raise RuntimeError(f"the teacher saw {len(logits)} of {info.eval_size} training images")
    return logits, list(info.classes)


def write_teacher_logits(path: str | Path, logits: torch.Tensor, classes: list[str], *, teacher: str,
                         cfg: Config) -> None:
    """Store logits (float16) with what they belong to; refuses to replace an existing file, and logits that are
    not finite or beyond float16's range (a student would train on inf)."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; remove it or choose another --out")
    stored = logits.to(torch.float16).contiguous()
    bad = _first_nonfinite(stored)
    if bad is not None:
        row, value = bad[0], logits[bad].item()
        why = (f"{value:g} is beyond float16's range (±{torch.finfo(torch.float16).max:g}), in which they are stored"
               if math.isfinite(value) else f"{value}")
        raise ValueError(f"teacher {teacher} gives a logit on training image {row} that cannot be stored: {why}; "
                         f"check the teacher on the recipe's data")
    meta = {"format": FORMAT, "teacher": teacher, "data_name": cfg.data.name, "data_root": cfg.data.root,
            "train_split": cfg.data.train_split, "num_images": str(len(logits)), "classes": json.dumps(classes)}
    blob = save({"logits": stored}, metadata=meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(blob))


def read_teacher_logits(path: str | Path, *, num_images: int, classes: list[str]) -> torch.Tensor:
    """The stored logits (float32) for a run training on `num_images` images (the file's first rows:
    data.limit_train keeps the first images) of `classes`. Checked whole before a run starts: a file that is not
    one `deepres teacher-logits` wrote, a tensor that is not (images >= num_images, len(classes)), a non-finite
    value or malformed metadata is a ValueError in one line, `train.kd_logits=PATH: ...`."""
    path = Path(path)
    where = f"train.kd_logits={path}"
    if not path.exists():
        raise FileNotFoundError(f"{where}: does not exist (`deepres teacher-logits` writes it)")
    if not path.is_file():
        raise ValueError(f"{where}: not a file (`deepres teacher-logits --out FILE` writes one)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or "logits" not in f.keys():
                raise ValueError(f"{where}: not a teacher-logits file (no {FORMAT} 'logits'; `deepres "
                                 f"teacher-logits` writes one)")
            logits = f.get_tensor("logits")
    except OSError as e:
        raise ValueError(f"{where}: cannot be read ({e.strerror or e})") from None
    except ValueError:
        raise
    except Exception as e:  # safetensors' own error types, for a file that is not one
        raise ValueError(f"{where}: not a readable safetensors file ({_one_line(e)})") from None
    stored = _stored_classes(meta, where)
    if logits.ndim != 2:
        raise ValueError(f"{where}: logits of shape {tuple(logits.shape)}; expected 2-D (images, classes)")
    rows, columns = logits.shape
    if not logits.is_floating_point():
        raise ValueError(f"{where}: logits are {str(logits.dtype).removeprefix('torch.')}; expected floating point")
    if columns != len(stored):
        raise ValueError(f"{where}: logits have {columns} columns but its metadata names {len(stored)} classes; "
                         f"the file is damaged: compute it again")
    if meta.get("num_images") not in (None, str(rows)):
        raise ValueError(f"{where}: metadata num_images={meta['num_images']!r} but the file holds {rows} rows; "
                         f"the file is damaged: compute it again")
    if stored != list(classes):
        raise ValueError(f"{where}: logits over {len(stored)} classes ({stored[:3]}...) but this run trains on "
                         f"{len(classes)} ({list(classes)[:3]}...)")
    if rows < num_images:
        raise ValueError(f"{where}: {rows} rows but the run trains on {num_images} images; compute it on the same "
                         f"training split")
    bad = _first_nonfinite(logits)
    if bad is not None:
        count = int((~torch.isfinite(logits)).sum())
        raise ValueError(f"{where}: row {bad[0]} (training image {bad[0]}) holds {logits[bad].item()}, and {count} "
                         f"of {logits.numel()} values are NaN or inf; compute it again with a teacher whose logits "
                         f"are finite")
    return logits[:num_images].float()


def _stored_classes(meta: dict, where: str) -> list[str]:
    """The class names in the file's metadata (a JSON list of strings, one per column)."""
    text = meta.get("classes")
    if text is None:
        raise ValueError(f"{where}: metadata has no 'classes' (the class names of its columns); compute it again "
                         f"with `deepres teacher-logits`")
    try:
        classes = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: metadata 'classes' is not JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise ValueError(f"{where}: metadata 'classes' must be a JSON list of class names, got {text[:60]!r}")
    return classes


def _first_nonfinite(logits: torch.Tensor) -> tuple[int, int] | None:
    """(row, column) of the first NaN or inf, None when all are finite."""
    bad = ~torch.isfinite(logits)
    if not bad.any():
        return None
    row, column = bad.nonzero()[0].tolist()
    return row, column


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
