"""The one typed-YAML engine: a dataclass tree is the schema, a YAML mapping or `a.b=c` overrides are the input.

Every key is checked against the dataclass fields (an unknown key fails with its full dotted name, the file or
option it came from, and close matches) and every value against the field's type (bool, int, float, str,
Literal, unions, lists, fixed tuples, dicts, nested dataclasses). Training recipes (deepres.core.config) and
study files (deepres.studies.spec) are both read through it.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml


def read_yaml_mapping(path: Path, what: str) -> dict:
    """A YAML file's top-level mapping ({} for an empty file); errors name the file."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a {what} must be a YAML mapping, got {type(raw).__name__}")
    return raw


@dataclasses.dataclass(frozen=True)
class Schema:
    """A dataclass tree and how its errors speak: `kind` names its keys ("config", "study"); `free` lists the
    dotted keys of free-form mappings (any key below them); `skip` lists fields never read from files; `hint`
    adds a sentence to an unknown top-level key's error."""

    root: type
    kind: str = "config"
    free: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    hint: Any = None  # callable(key) -> str, or None

    def fields(self, cls) -> dict[str, Any]:
        return {k: v for k, v in get_type_hints(cls).items() if not (cls is self.root and k in self.skip)}

    def all_keys(self, cls=None, prefix: str = "") -> list[str]:
        out = []
        for name, tp in self.fields(cls or self.root).items():
            key = f"{prefix}{name}"
            out += self.all_keys(tp, key + ".") if dataclasses.is_dataclass(tp) else [key]
        return out

    # --------------------------------------------------------------------------------------- checking
    def check(self, raw: Any, where: str) -> dict:
        """A (possibly partial) mapping checked against the root; values coerced to their field types."""
        return self.check_section(self.root, raw, "", where)

    def check_section(self, cls, raw: Any, prefix: str, where: str) -> dict:
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: {prefix.rstrip('.') or 'the ' + self.kind} must be a mapping "
                             f"(a {self.kind} section), got {raw!r}")
        hints = self.fields(cls)
        out = {}
        for name, value in raw.items():
            key = f"{prefix}{name}"
            if name not in hints:
                self.unknown_key(key, list(hints), where)
            out[name] = self.coerce(value, hints[name], key, where)
        return out

    def coerce(self, value: Any, tp: Any, key: str, where: str) -> Any:
        if dataclasses.is_dataclass(tp):
            return self.check_section(tp, value, key + ".", where)
        return coerce_value(value, tp, key, where)

    def unknown_key(self, key: str, siblings: list[str], where: str):
        leaf = key.rsplit(".", 1)[-1]
        everywhere = self.all_keys()
        same_leaf = [k for k in everywhere if k.rsplit(".", 1)[-1] == leaf]
        close = same_leaf + [c for c in difflib.get_close_matches(key, everywhere, n=3, cutoff=0.75)
                             if c not in same_leaf]
        close += [f"{key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{s}"
                  for s in difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.6)]
        close = list(dict.fromkeys(close))
        prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
        hint = f"; did you mean: {', '.join(close)}?" if close else \
            f"; valid keys here: {', '.join(prefix + s for s in siblings)}"
        if self.hint is not None and "." not in key:
            hint += self.hint(key)
        raise KeyError(f"{where}: unknown {self.kind} key {key!r}{hint}")

    def instantiate(self, values: dict, cls=None):
        """The dataclass tree from checked values (missing keys keep their defaults)."""
        cls = cls or self.root
        hints = get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in values:
                tp = hints[f.name]
                kwargs[f.name] = self.instantiate(values[f.name], tp) if dataclasses.is_dataclass(tp) \
                    else values[f.name]
        return cls(**kwargs)

    # --------------------------------------------------------------------------------------- overrides
    def field_type(self, parts: list[str], where: str):
        """The declared type at a dotted path (None inside a free-form dict); unknown keys raise KeyError."""
        cls: Any = self.root
        for i, name in enumerate(parts):
            if cls is None or cls is dict or get_origin(cls) is dict:
                return None  # free-form mapping (model.kwargs, data.extra): any key
            if not dataclasses.is_dataclass(cls):
                raise KeyError(f"{where}: {'.'.join(parts[:i])} is a {type_name(cls)}, it has no key {name!r}")
            hints = self.fields(cls)
            if name not in hints:
                self.unknown_key(".".join(parts[: i + 1]), list(hints), where)
            cls = hints[name]
        return cls

    def parse_override(self, item: str) -> tuple[str, Any]:
        """`a.b=c` -> ("a.b", value): the value read as YAML and checked against the field's type."""
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=0.05")
        tp = self.field_type(key.split("."), f"--set {item}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item}: the value of {key} is not valid YAML ({e.problem or e})") from None
        if tp is str and not isinstance(value, str) and value is not None:
            value = text  # a str field takes the text as typed (run.name=2024 stays "2024")
        if tp is not None:
            self.coerce(value, tp, key, f"--set {item}")
        return key, value

    def apply_overrides(self, raw: dict, overrides) -> dict:
        for item in overrides:
            key, value = self.parse_override(item)
            set_path(raw, key.split("."), value)
        return raw

    def diff(self, a: dict, b: dict, ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
        """(dotted key, value in a, value in b) for every leaf that differs, skipping keys under `ignore`."""
        out: list[tuple[str, Any, Any]] = []

        def walk(x, y, prefix):
            if prefix.rstrip(".") in ignore:
                return
            if isinstance(x, dict) and isinstance(y, dict) and prefix.rstrip(".") not in self.free:
                for k in list(dict.fromkeys([*x, *y])):
                    walk(x.get(k), y.get(k), f"{prefix}{k}.")
            elif x != y:
                out.append((prefix.rstrip("."), x, y))

        walk(a, b, "")
        return out


def set_path(raw: dict, parts: list[str], value: Any) -> None:
    node = raw
    for name in parts[:-1]:
        if not isinstance(node.get(name), dict):
            node[name] = {}
        node = node[name]
    if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
        deep_merge(node[parts[-1]], value)
    else:
        node[parts[-1]] = value


def deep_merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            deep_merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


def plain(x: Any) -> Any:
    """Dicts, lists (not tuples), numbers and strings only: what YAML, JSON and torch.load(weights_only) accept."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = dataclasses.asdict(x)
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def coerce_value(value: Any, tp: Any, key: str, where: str) -> Any:
    """Return `value` converted to the field type `tp`, or raise ValueError naming key, type and value."""
    origin, args = get_origin(tp), get_args(tp)

    def bad():
        return ValueError(f"{where}: {key} expects {type_name(tp)}, got {value!r} ({type(value).__name__})")

    if tp is Any:
        return copy.deepcopy(value)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        # str last, so "1e-3" becomes a float when a float is allowed
        for arm in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return coerce_value(value, arm, key, where)
            except ValueError:
                continue
        raise bad()
    if origin is Literal:
        if value not in args or isinstance(value, bool):
            raise ValueError(f"{where}: {key} expects one of {', '.join(repr(a) for a in args)}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            # YAML reads 224_256 as the int 224256 and yes/no as booleans
            raise ValueError(f"{where}: {key} expects str, got {value!r} ({type(value).__name__}); "
                             f"quote it in YAML to keep it as text")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise bad()
        return copy.deepcopy(value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad()
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise bad()
            items = [coerce_value(v, a, f"{key}[{i}]", where) for i, (v, a) in enumerate(zip(value, args))]
        else:
            items = [coerce_value(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    raise TypeError(f"config field {key} has an unsupported type {tp!r}")  # a bug in the schema, not user input


def type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {type_name(args[0])}"
        return f"a list of {len(args)} ({', '.join(type_name(a) for a in args)})"
    if origin is list:
        return f"a list of {type_name(args[0])}"
    if tp is type(None):
        return "null"
    if tp is dict or origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", repr(tp))
