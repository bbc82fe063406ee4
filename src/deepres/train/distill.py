"""Offline knowledge distillation: a teacher's logits on every training image, computed once and stored by
training-image index (as the Assemble-ResNet paper trains from stored teacher logits), then looked up per batch
by train.kd_logits instead of running the teacher in the loop (train.kd_teacher).

`deepres teacher-logits TEACHER RECIPE --out FILE [--set KEY=VALUE ...]` (deepres.commands) writes FILE (safetensors: `logits`,
float16, one row per image of the recipe's training split in its stored order; metadata: teacher, data, classes).
The teacher sees each training image once, through the recipe's evaluation transform (no augmentation); a mixed
batch gets the teacher's distributions mixed with the same lam as its labels."""
import json
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
    """Store logits (float16) with what they belong to; refuses to replace an existing file."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; remove it or choose another --out")
    meta = {"format": FORMAT, "teacher": teacher, "data_name": cfg.data.name, "data_root": cfg.data.root,
            "train_split": cfg.data.train_split, "num_images": str(len(logits)), "classes": json.dumps(classes)}
    blob = save({"logits": logits.to(torch.float16).contiguous()}, metadata=meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(blob))


def read_teacher_logits(path: str | Path, *, num_images: int, classes: list[str]) -> torch.Tensor:
    """The stored logits (float32) for a run training on `num_images` images (the file's first rows:
    data.limit_train keeps the first images) of `classes`; ValueError naming the file when they do not fit."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"train.kd_logits={path} does not exist (`deepres teacher-logits` writes it)")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT or "logits" not in f.keys():
            raise ValueError(f"train.kd_logits={path} is not a teacher-logits file (written by `deepres "
                             f"teacher-logits`)")
        logits = f.get_tensor("logits").float()
    stored = json.loads(meta["classes"])
    if stored != list(classes):
        raise ValueError(f"train.kd_logits={path} holds logits over {len(stored)} classes ({stored[:3]}...) but "
                         f"this run trains on {len(classes)} ({list(classes)[:3]}...)")
    if len(logits) < num_images:
        raise ValueError(f"train.kd_logits={path} has {len(logits)} rows but the run trains on {num_images} "
                         f"images; compute it on the same training split")
    return logits[:num_images]
