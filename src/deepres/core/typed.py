"""The one typed-YAML engine: a dataclass tree is the schema, a YAML mapping or `a.b=c` overrides are the input.

Every key is checked against the dataclass fields (an unknown key fails with its full dotted name, the file or
option it came from, and close matches) and every value against the field's type (bool, int, float, str,
Literal, unions, lists, fixed tuples, dicts, nested dataclasses) and against the rule declared with the field
(`setting(0.9, ge=0, lt=1)`: bounds, a test, a late-listed set of names). A rule that spans fields is the
section's `cross_check()`. Training recipes (deepres.core.config) and study files (deepres.studies.spec) are
both read through it.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
from collections.abc import Callable, Mapping
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


# ------------------------------------------------------------------------------------------- field rules
class Choices:
    """The names a str field may take, listed at run time by a package the schema's module cannot import
    (deepres.data lists its dataset formats for data.name). Until a source is provided every name passes."""

    def __init__(self, what: str):
        self.what = what  # the noun an error uses: "dataset format"
        self._source: Callable[[], Mapping[str, Any]] | None = None

    def provide(self, source: Callable[[], Mapping[str, Any]]) -> None:
        """source() -> {name: what the config may ask about it}, called at every check (names added later count)."""
        self._source = source

    def known(self) -> Mapping[str, Any] | None:
        """name -> its entry; None while nothing has provided them."""
        return None if self._source is None else self._source()


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a field's value must be beyond its type (None always passes); declared with the field by `setting`."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    each: bool = False  # the bounds hold for every item of a list
    test: Callable[[Any], bool] | None = None  # any other condition on the whole value
    text: str = ""  # what an error says instead of the bounds ("must be a percentage")
    note: str = ""  # what a special value means, after the text in brackets ("0 = off")
    choices: Choices | None = None

    def broken(self, value: Any) -> str | None:
        """Why `value` breaks the rule (the text after "key=value: "); None when it keeps it."""
        if value is None:
            return None
        known = self.choices.known() if self.choices is not None else None
        if known is not None and value not in known:
            return f"unknown {self.choices.what}; known: {', '.join(known)}"
        items = value if self.each else [value]
        return None if all(map(self.within, items)) and (self.test is None or self.test(value)) else self.describe()

    def within(self, v: Any) -> bool:
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def describe(self) -> str:
        bounds = [(op, b) for op, b in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                  if b is not None]
        if self.text or not bounds:
            text = self.text or "is not allowed"
        elif len(bounds) == 2:  # a range: [0, 1), (0, 1], ...
            (low, a), (high, b) = bounds
            text = f"must be in {'[' if low == '>=' else '('}{a}, {b}{']' if high == '<=' else ')'}"
        else:
            text = "must be {} {}".format(*bounds[0])
        return f"{text} ({self.note})" if self.note else text


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, ge=None, gt=None, le=None,
            lt=None, each: bool = False, test=None, text: str = "", note: str = "", choices: Choices | None = None,
            **marks: bool) -> Any:
    """A dataclass field with its rule and marks: `lr: float = setting(0.1, gt=0)`; `workers: int = setting(2,
    ge=0, resume_safe=True)`. A mark is a flag `Schema.marked` lists the keys of."""
    rule = Rule(ge, gt, le, lt, each, test, text, note, choices)
    metadata = {**marks, "rule": rule} if rule != Rule() else marks
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


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
        hints, fields = self.fields(cls), {f.name: f for f in dataclasses.fields(cls)}
        out = {}
        for name, value in raw.items():
            key = f"{prefix}{name}"
            if name not in hints:
                self.unknown_key(key, list(hints), where)
            out[name] = self.coerce(value, hints[name], key, where)
            self.enforce(fields[name], out[name], key, where)
        return out

    def coerce(self, value: Any, tp: Any, key: str, where: str) -> Any:
        if dataclasses.is_dataclass(tp):
            return self.check_section(tp, value, key + ".", where)
        return coerce_value(value, tp, key, where)

    @staticmethod
    def enforce(f: dataclasses.Field | None, value: Any, key: str, where: str) -> None:
        """The rule declared with field `f`, on its (coerced) value; ValueError "where: key=value: why"."""
        rule = f.metadata.get("rule") if f is not None else None
        why = rule.broken(value) if rule is not None else None
        if why:
            raise ValueError(f"{where}: {key}={value!r}: {why}")

    def validate(self, obj: Any, where: str = "", prefix: str = "") -> None:
        """A dataclass tree (made in Python or instantiated from checked values) against its field rules and
        Literal choices (other types are trusted), then each section's `cross_check()`, which yields (field, why)
        for every cross-field rule it breaks. `prefix`: obj's dotted key when it is a section of the root."""
        where = where or self.kind
        hints = get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value, tp, key = getattr(obj, f.name), hints[f.name], prefix + f.name
            if dataclasses.is_dataclass(tp):
                self.validate(value, where, key + ".")
                continue
            if get_origin(tp) is Literal:
                coerce_value(value, tp, key, where)
            self.enforce(f, value, key, where)
        for name, why in getattr(obj, "cross_check", tuple)():
            raise ValueError(f"{where}: {prefix}{name}={getattr(obj, name)!r}: {why}")

    def marked(self, mark: str, cls=None, prefix: str = "") -> tuple[str, ...]:
        """Dotted keys of the fields, or whole sections, declared with `mark` (e.g. resume_safe=True)."""
        cls = cls or self.root
        hints, out = get_type_hints(cls), []
        for f in dataclasses.fields(cls):
            if f.metadata.get(mark):
                out.append(prefix + f.name)
            elif dataclasses.is_dataclass(hints[f.name]):
                out += self.marked(mark, hints[f.name], f"{prefix}{f.name}.")
        return tuple(out)

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
    def field_at(self, parts: list[str], where: str) -> tuple[Any, dataclasses.Field | None]:
        """The declared type and field at a dotted path ((None, None) inside a free-form dict); unknown keys raise
        KeyError."""
        cls: Any = self.root
        f = None
        for i, name in enumerate(parts):
            if cls is None or cls is dict or get_origin(cls) is dict:
                return None, None  # free-form mapping (model.kwargs, data.extra): any key
            if not dataclasses.is_dataclass(cls):
                raise KeyError(f"{where}: {'.'.join(parts[:i])} is a {type_name(cls)}, it has no key {name!r}")
            hints = self.fields(cls)
            if name not in hints:
                self.unknown_key(".".join(parts[: i + 1]), list(hints), where)
            f = next(x for x in dataclasses.fields(cls) if x.name == name)
            cls = hints[name]
        return cls, f

    def parse_override(self, item: str) -> tuple[str, Any]:
        """`a.b=c` -> ("a.b", value): the value read as YAML and checked against the field's type."""
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=0.05")
        tp, f = self.field_at(key.split("."), f"--set {item}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item}: the value of {key} is not valid YAML ({e.problem or e})") from None
        if tp is str and not isinstance(value, str) and value is not None:
            value = text  # a str field takes the text as typed (run.name=2024 stays "2024")
        if tp is not None:
            checked = {k: v for k, v in value.items() if k != REPLACE_KEY} if isinstance(value, dict) else value
            self.enforce(f, self.coerce(checked, tp, key, f"--set {item}"), key, f"--set {item}")
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


REPLACE_KEY = "_delete_"  # in a mapping: replace the mapping it lands on instead of merging into it (mmengine's)


def set_path(raw: dict, parts: list[str], value: Any) -> None:
    node = raw
    for name in parts[:-1]:
        if not isinstance(node.get(name), dict):
            node[name] = {}
        node = node[name]
    if isinstance(value, dict):
        deep_merge(node, {parts[-1]: value})  # merged into a mapping there, or replacing it with `_delete_: true`
    else:
        node[parts[-1]] = value


def deep_merge(into: dict, new: dict) -> None:
    """Merge `new` into `into`, mappings key by key; a mapping of `new` with `_delete_: true` replaces `into`'s
    instead (as in mmengine's configs: a base recipe's model.kwargs for one backbone, a derived recipe's for
    another)."""
    for k, v in new.items():
        if isinstance(v, dict):
            if v.get(REPLACE_KEY) is True or not isinstance(into.get(k), dict):
                into[k] = {}
            deep_merge(into[k], {key: value for key, value in v.items() if key != REPLACE_KEY})
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
