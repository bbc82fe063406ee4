"""Grouping any set of finished runs into variants, for `deepres compare` (deepres.commands.compare).

Runs are grouped into variants by their configs: runs whose config.yaml differ only in the seed (and in
bookkeeping: run.*, expect.*, eval batch size, data root, ...) form one variant, named by the keys that tell
the variants apart. --group-by-parent groups by the parent folder instead (a study's <variant>/seed<k>/).
"""
from __future__ import annotations

import json
from pathlib import Path

from deepres.core.config import RESUME_MAY_DIFFER

# Keys that do not make two runs different variants
NOT_A_VARIANT = (*RESUME_MAY_DIFFER, "train.seed")
MAX_NAME_KEYS = 3  # a variant name lists at most this many differing keys


def group_by_parent(dirs: list[Path]) -> list[str]:
    """Each run's variant name: its parent folder's name."""
    return [d.resolve().parent.name for d in dirs]


def group_by_config(configs: list[dict], dirs: list[Path]) -> list[str]:
    """Each run's variant name: `key=value` for the config keys that differ between groups of runs."""
    flat = [_flatten(c) if c else {"run directory": str(d)} for c, d in zip(configs, dirs)]
    keys = [json.dumps(f, sort_keys=True, default=str) for f in flat]
    distinct = list(dict.fromkeys(keys))
    if len(distinct) == 1:
        name = (configs[0].get("run") or {}).get("name") or dirs[0].name
        return [str(name)] * len(dirs)
    first_of = {k: flat[keys.index(k)] for k in distinct}
    all_keys = list(dict.fromkeys(k for f in first_of.values() for k in f))
    differing = [k for k in all_keys if len({json.dumps(f.get(k), default=str) for f in first_of.values()}) > 1]
    names = {}
    for k in distinct:
        f = first_of[k]
        parts = [f"{key}={f.get(key, '(unset)')}" for key in differing[:MAX_NAME_KEYS]]
        more = f", +{len(differing) - MAX_NAME_KEYS} keys" if len(differing) > MAX_NAME_KEYS else ""
        names[k] = ", ".join(parts) + more
    if len(set(names.values())) < len(names):  # cut-off names collide: number them
        names = {k: f"{i + 1}: {v}" for i, (k, v) in enumerate(names.items())}
    return [names[k] for k in keys]


def _flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if any(dotted == k or dotted.startswith(k + ".") for k in NOT_A_VARIANT):
            continue
        if isinstance(value, dict):
            out.update(_flatten(value, dotted + "."))  # an empty mapping adds no key
        else:
            out[dotted] = value
    return out
