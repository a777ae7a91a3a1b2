"""YAML config loading that remembers where every key came from, and error reporting with it.

An operator fixing a config needs ``config.yaml:42:7: devices[2].unit_id: ...``, not a
pydantic dump, so we compose the YAML node graph ourselves, keep the source position of
every mapping key and sequence item, and map pydantic error locations back onto it.

Stricter than ``yaml.safe_load`` on purpose: duplicate keys (PyYAML keeps the last one
silently) and a non-mapping top level are errors.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, cast, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

__all__ = [
    "ConfigFileError",
    "FieldError",
    "LoadedYaml",
    "SourceLocation",
    "YamlPath",
    "did_you_mean",
    "expand_config_paths",
    "format_error_line",
    "format_path",
    "format_validation_errors",
    "load_yaml",
    "load_yaml_files",
]

YamlPath = tuple[Hashable, ...]
"""A path into the loaded data: mapping keys and list indices, e.g. ``("devices", 2, "name")``."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
#: Keys and items a config may hold once aliases are expanded; more is an alias bomb, not a site.
_MAX_NODES = 100_000
#: Deepest [ ] / { } nesting read; PyYAML's scanner slows with the square of it (3,000 deep: seconds).
_MAX_FLOW_DEPTH = 100
_FLOW = re.compile(r"[\[\]{}]")
# pydantic error types whose last loc item names a field that is absent from the input.
_MISSING_TYPES = frozenset({"missing", "missing_argument", "missing_keyword_argument"})
_MESSAGE_PREFIXES = {"value_error": "Value error, ", "assertion_error": "Assertion failed, "}


@dataclass(frozen=True, slots=True)
class SourceLocation:
    """A position in a config file; line and col are 1-based, as editors show them."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class FieldError(ValueError):
    """A validator's error about a field below the model it validates.

    A model validator's plain ValueError is reported at the model's own key (at
    the top level: the first line of the file); raising this instead points the
    error at ``field_path`` (e.g. ``("devices", 2, "endpoint")``), relative to
    that model, so ``validate`` shows the line to fix.
    """

    def __init__(self, message: str, *field_path: Hashable) -> None:
        super().__init__(message)
        self.field_path: YamlPath = field_path


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """``"did you mean 'x'?"`` for the choice closest to a misspelt ``word``, or ``""``."""
    if not isinstance(word, str):
        return ""
    by_folded = {str(c).casefold(): str(c) for c in choices}
    folded = word.casefold()
    for close in difflib.get_close_matches(folded, list(by_folded), n=3, cutoff=0.6):
        # Similar enough, or a slip of a key or two (bux for bus, tpc for tcp); not south for north.
        similar = difflib.SequenceMatcher(None, folded, close).ratio() >= 0.75
        if similar or _edits(folded, close) <= max(1, len(folded) // 4):
            return f"did you mean {by_folded[close]!r}?"
    return ""


def _edits(a: str, b: str) -> int:
    """Typing slips from a to b: insertions, deletions, substitutions, swapped neighbours."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


class ConfigFileError(Exception):
    """A config file cannot be read or parsed; ``str(err)`` is ready to print.

    The message starts with ``file:line:col:`` when the position is known.
    """

    def __init__(self, message: str, location: SourceLocation | None = None) -> None:
        super().__init__(message)
        self.location = location


@dataclass(frozen=True)
class LoadedYaml:
    """Parsed config data plus the source location of every key and list item in it.

    ``data`` is exactly what ``yaml.safe_load`` returns (merged, for several files);
    ``locations`` always holds the root path ``()``.
    """

    data: dict[Any, Any]
    locations: Mapping[YamlPath, SourceLocation]
    files: tuple[Path, ...]

    def locate(self, path: Iterable[Hashable]) -> SourceLocation:
        """Where ``path`` is defined; for a path that does not exist (a missing field),
        the nearest existing parent, i.e. the mapping that should have held it."""
        key = tuple(path)
        for n in range(len(key), -1, -1):
            found = self.locations.get(key[:n])
            if found is not None:
                return found
        raise KeyError("LoadedYaml has no root location")  # constructors always add ()


# --- loading -------------------------------------------------------------------------


def load_yaml(path: str | Path) -> LoadedYaml:
    """Load one YAML file whose top level must be a mapping, recording source locations.

    An empty (or comments-only) file loads as ``{}`` so a fully commented-out
    ``conf.d`` snippet is harmless. Raises `ConfigFileError` for anything else wrong.
    """
    file = Path(path)
    name = str(path)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise ConfigFileError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    return _parse(text, name, file)


def load_yaml_files(paths: Sequence[Path]) -> LoadedYaml:
    """Load several files and merge them in order, e.g. ``config.yaml`` then ``conf.d/*``.

    Mappings merge recursively and a later file wins for anything else: scalars, and
    lists, which are replaced whole (merging list items by position would be a guess).
    Every path keeps the location in the file its value came from.
    """
    if not paths:
        raise ValueError("load_yaml_files needs at least one path")
    first, *rest = (load_yaml(p) for p in paths)
    data = first.data
    locations = dict(first.locations)
    for later in rest:
        replaced: set[YamlPath] = set()
        data = _merge(data, later.data, (), replaced)
        locations = {
            p: loc for p, loc in locations.items() if not any(p[:n] in replaced for n in range(1, len(p) + 1))
        }
        # Every path of a later file survives the merge; only the root stays the main file's.
        locations.update((p, loc) for p, loc in later.locations.items() if p)
    return LoadedYaml(data, locations, tuple(Path(p) for p in paths))


def expand_config_paths(main: Path) -> list[Path]:
    """The main config file followed by ``<its dir>/conf.d/*.yaml`` sorted by name.

    Hidden files are skipped: editors leave ``.#foo.yaml``-style lock and swap files.
    """
    conf_d = main.parent / "conf.d"
    extra = (
        sorted(
            (p for p in conf_d.glob("*.yaml") if not p.name.startswith(".") and p.is_file()),
            key=lambda p: p.name,
        )
        if conf_d.is_dir()
        else []
    )
    return [main, *extra]


def _flow_too_deep(text: str) -> int | None:
    """Offset where [ and { nest past _MAX_FLOW_DEPTH, counted roughly (quotes not skipped), or None."""
    depth = 0
    for m in _FLOW.finditer(text):
        depth = depth + 1 if m.group() in "[{" else max(0, depth - 1)
        if depth > _MAX_FLOW_DEPTH:
            return m.start()
    return None


def _parse(text: str, name: str, file: Path) -> LoadedYaml:
    """Compose, check and construct one document; see `load_yaml`."""
    deep = _flow_too_deep(text)
    if deep is not None:
        where = _location_of_offset(name, text, deep)
        raise ConfigFileError(f"{where}: yaml: [ ] and {{ }} nested more than {_MAX_FLOW_DEPTH} deep", where)
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:  # the reader vets the whole text up front
        where = _location_of_offset(name, text, exc.position)
        char = exc.character if isinstance(exc.character, int) else ord(exc.character[:1])
        raise ConfigFileError(
            f"{where}: yaml: unacceptable character #x{char:04x}: {exc.reason}", where
        ) from exc
    try:
        node = loader.get_single_node()
        if node is None:
            return LoadedYaml({}, {(): SourceLocation(name, 1, 1)}, (file,))
        if not isinstance(node, yaml.MappingNode):
            kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
            at = _location(name, node.start_mark)
            raise ConfigFileError(
                f"{at}: yaml: the top level must be a mapping of keys to values, found {kind}",
                at,
            )
        _check_duplicate_keys(loader, node, name)
        try:
            data = loader.construct_document(node)
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            raise ConfigFileError(f"{name}: yaml: {exc}") from exc
        if not isinstance(data, dict):  # e.g. a top-level !!set
            at = _location(name, node.start_mark)
            raise ConfigFileError(f"{at}: yaml: the top level must be a plain mapping", at)
        # The root is where its first key is, not 1:1, which is often a comment line.
        locations: dict[YamlPath, SourceLocation] = {(): _location(name, node.start_mark)}
        _record_locations(loader, node, (), name, locations, set())
        return LoadedYaml(data, locations, (file,))
    except yaml.MarkedYAMLError as exc:
        mark_at, message = _describe_yaml_error(exc, name)
        raise ConfigFileError(message, mark_at) from exc
    except RecursionError:  # the parser and the walks below recurse once per level
        at = _location(name, loader.get_mark())  # how far the reader got: at or past the deep part
        raise ConfigFileError(f"{at}: yaml: nested too deeply", at) from None
    finally:
        loader.dispose()


def _location(name: str, mark: yaml.Mark) -> SourceLocation:
    return SourceLocation(name, mark.line + 1, mark.column + 1)


def _location_of_offset(name: str, text: str, offset: int) -> SourceLocation:
    line_start = text.rfind("\n", 0, offset) + 1
    return SourceLocation(name, text.count("\n", 0, offset) + 1, offset - line_start + 1)


def _describe_yaml_error(exc: yaml.MarkedYAMLError, name: str) -> tuple[SourceLocation | None, str]:
    """``file:line:col: yaml: <problem>``, plus PyYAML's context (e.g. where an unclosed
    quote started) when it points somewhere else, since that is often the real mistake."""
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.problem and exc.context:
        cm = exc.context_mark
        if cm is not None and (mark is None or (cm.line, cm.column) != (mark.line, mark.column)):
            problem += f" ({exc.context} at line {cm.line + 1}, column {cm.column + 1})"
        else:
            problem += f" ({exc.context})"
    if mark is None:
        return None, f"{name}: yaml: {problem}"
    at = _location(name, mark)
    return at, f"{at}: yaml: {problem}"


def _scalar_key(loader: yaml.SafeLoader, key_node: yaml.Node) -> Hashable:
    """The Python value of a scalar mapping key, as the constructor will build it."""
    key: Hashable = loader.construct_object(key_node, deep=True)
    return key


def _check_duplicate_keys(loader: yaml.SafeLoader, root: yaml.Node, name: str) -> None:
    """Refuse a key repeated in one mapping. Runs on the raw node graph, before merge keys
    (``<<: *base``) are flattened, so overriding a merged-in key is still allowed."""
    done: set[int] = set()
    stack: list[tuple[yaml.Node, YamlPath]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in done:  # aliases share nodes; check each once
            continue
        done.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[Hashable, yaml.Node] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    stack.append((value_node, path))
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    continue  # complex keys: the constructor reports them
                key = _scalar_key(loader, key_node)
                if key in seen:
                    first = seen[key].start_mark.line + 1
                    at = _location(name, key_node.start_mark)
                    line = format_error_line(
                        at,
                        format_path((*path, key)),
                        f"duplicate key {key!r} (first at line {first})",
                    )
                    raise ConfigFileError(line, at)
                seen[key] = key_node
                stack.append((value_node, (*path, key)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, i)) for i, item in enumerate(node.value))


def _check_size(out: dict[YamlPath, SourceLocation], last: YamlPath) -> None:
    if len(out) > _MAX_NODES:  # aliases expand: ten lists of ten aliases of ... is a billion nodes
        at = out[last]
        raise ConfigFileError(
            f"{at}: yaml: more than {_MAX_NODES} keys and items once aliases are expanded", at
        )


def _record_locations(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: YamlPath,
    name: str,
    out: dict[YamlPath, SourceLocation],
    active: set[int],
) -> None:
    """Record the position of every key and item under ``node``. Runs after construction,
    when merge keys are flattened into ``node.value`` and the last occurrence wins, exactly
    as in the constructed data."""
    if id(node) in active:  # a recursive anchor; the data is cyclic too
        return
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        entries: dict[Hashable, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                entries[_scalar_key(loader, key_node)] = (key_node, value_node)
        for key, (key_node, value_node) in entries.items():
            child = (*path, key)
            out[child] = _location(name, key_node.start_mark)
            _check_size(out, child)
            _record_locations(loader, value_node, child, name, out, active)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = (*path, i)
            out[child] = _location(name, item.start_mark)
            _check_size(out, child)
            _record_locations(loader, item, child, name, out, active)
    active.discard(id(node))


def _merge(
    base: dict[Any, Any], over: dict[Any, Any], path: YamlPath, replaced: set[YamlPath]
) -> dict[Any, Any]:
    """``over`` merged into a copy of ``base``; paths whose base value was replaced (rather
    than merged into) are added to ``replaced`` so their old locations can be dropped."""
    result = dict(base)
    for key, value in over.items():
        child = (*path, key)
        old = result.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            result[key] = _merge(old, value, child, replaced)
        else:
            if key in result:
                replaced.add(child)
            result[key] = value
    return result


# --- error reporting -----------------------------------------------------------------


def format_path(path: Iterable[Hashable]) -> str:
    """``("devices", 2, "registers")`` as ``devices[2].registers``."""
    out = ""
    for item in path:
        if isinstance(item, int) and not isinstance(item, bool):
            out += f"[{item}]"
        else:
            out += f".{item}" if out else str(item)
    return out


def format_error_line(loc: SourceLocation, path: str, message: str) -> str:
    """One error as ``file:line:col: path: message``; the path part is left out when
    empty (an error about the file as a whole)."""
    return f"{loc}: {path}: {message}" if path else f"{loc}: {message}"


def format_validation_errors(
    err: ValidationError,
    source: LoadedYaml,
    model: type[BaseModel] | None = None,
) -> list[str]:
    """One ``file:line:col: path: message`` line per pydantic error, in pydantic's order.

    ``model`` (the model that was validated) is optional; with it, unknown-field errors
    also list the allowed field names and suggest the closest one. A required field
    reported missing next to an unknown key that is its misspelling is left out: the
    misspelling is the one mistake to fix.
    """
    entries: list[tuple[YamlPath, str, str]] = []  # (path, message, what a typo was meant to be)
    for error in err.errors(include_url=False):
        etype = error["type"]
        path = _data_path(error["loc"], source.data, etype)
        message = error["msg"]
        ctx = error.get("ctx") or {}
        meant = ""
        if etype in _MISSING_TYPES:
            message = "required field missing"
        elif etype == "extra_forbidden" and path:
            message = f"unknown field {path[-1]!r}"
            allowed = _allowed_fields(model, path[:-1], source.data) if model else None
            if allowed:
                hint = did_you_mean(path[-1], allowed)
                meant = hint.split("'")[1] if hint else ""
                message += f"; {hint} allowed: " if hint else "; allowed: "
                message += ", ".join(allowed)
        elif etype in ("union_tag_invalid", "union_tag_not_found"):
            # Point at the discriminator key itself: that is the line to fix.
            tag_key = _unquote(str(ctx.get("discriminator", "")))
            if tag_key:
                path = (*path, tag_key)
            if etype == "union_tag_not_found":
                message = "required field missing"
            elif "tag" in ctx:
                expected = str(ctx.get("expected_tags"))
                hint = did_you_mean(ctx["tag"], _quoted(expected))
                message = (
                    f"unknown value {ctx['tag']!r}; {hint + ' ' if hint else ''}expected one of: {expected}"
                )
        elif etype in _MESSAGE_PREFIXES:
            message = message.removeprefix(_MESSAGE_PREFIXES[etype])
            cause = ctx.get("error")
            if isinstance(cause, FieldError):
                path = (*path, *cause.field_path)
        elif etype in ("literal_error", "enum") and _is_plain_scalar(error.get("input")):
            message += f", got {error['input']!r}"
            hint = did_you_mean(error.get("input"), _quoted(str(ctx.get("expected", ""))))
            if hint:
                message += f"; {hint}"
        entries.append((path, message, meant))
    typos = {(*p[:-1], meant) for p, _m, meant in entries if meant}
    return [
        format_error_line(source.locate(path), format_path(path), message)
        for path, message, _meant in entries
        if not (message == "required field missing" and path in typos)
    ]


def _data_path(loc: tuple[int | str, ...], data: Any, etype: str) -> YamlPath:
    """pydantic's ``loc`` as a path into the YAML data.

    Unions add entries that are not in the data: the tag of a discriminated union
    (``("devices", 0, "hvac", "setpoint")``) or the member's name (``("x", "int")``).
    pydantic never reports below a value that is absent, so any loc item missing from
    the data is such an entry and is dropped, except the last item of a *missing*
    error, which is the name of the missing field.
    """
    path: list[Hashable] = []
    cur: Any = data
    for i, item in enumerate(loc):
        if isinstance(cur, dict) and item in cur:
            cur = cur[item]
            path.append(item)
        elif isinstance(cur, list) and type(item) is int and 0 <= item < len(cur):
            cur = cur[item]
            path.append(item)
        elif i == len(loc) - 1 and etype in _MISSING_TYPES:
            path.append(item)
    return tuple(path)


def _unquote(text: str) -> str:
    match = re.fullmatch(r"'([^']*)'", text)
    return match.group(1) if match else ""


def _quoted(text: str) -> list[str]:
    """The quoted names in pydantic's ``'a', 'b' or 'c'``."""
    return re.findall(r"'([^']*)'", text)


def _is_plain_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _allowed_fields(model: type[BaseModel], path: YamlPath, data: Any) -> list[str] | None:
    """Best effort: the field names (aliases where set) of the model at ``path``, found by
    walking ``model``'s annotations alongside the data; None when the walk gets lost."""
    tp: Any = model
    cur: Any = data
    for item in path:
        sub = _pick_model(tp, cur)
        if sub is not None:
            field = _find_field(sub, item)
            if field is None:
                return None
            tp = field.annotation
        else:
            tp = _item_type(tp, item)
            if tp is None:
                return None
        cur = _child(cur, item)
    sub = _pick_model(tp, cur)
    if sub is None:
        return None
    return sorted(_field_key(name, f) for name, f in sub.model_fields.items())


def _child(cur: Any, item: Hashable) -> Any:
    if isinstance(cur, dict):
        return cur.get(item)
    if isinstance(cur, list) and type(item) is int and 0 <= item < len(cur):
        return cur[item]
    return None


def _field_key(name: str, field: FieldInfo) -> str:
    """The key a user writes in YAML for this field."""
    if isinstance(field.validation_alias, str):
        return field.validation_alias
    return field.alias or name


def _find_field(model: type[BaseModel], key: Hashable) -> FieldInfo | None:
    for name, field in model.model_fields.items():
        if key in (name, _field_key(name, field)):
            return field
    return None


def _strip(tp: Any) -> Any:
    """Unwrap ``Annotated[X, ...]`` and ``X | None`` to ``X``, and a type that builds its union
    when its schema is built (strategies' action union, from the kind registry) to that union."""
    while True:
        resolve = getattr(tp, "resolved_type", None) if isinstance(tp, type) else None
        if callable(resolve):
            tp = resolve()
            continue
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
            continue
        if origin in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _pick_model(tp: Any, value: Any) -> type[BaseModel] | None:
    """The model ``tp`` describes for ``value``; for a union of models, the member whose
    ``Literal`` fields (the discriminator) match the data."""
    tp = _strip(tp)
    if _is_model(tp):
        return cast(type[BaseModel], tp)
    if get_origin(tp) not in (Union, types.UnionType):
        return None
    members = [m for m in (_strip(a) for a in get_args(tp)) if _is_model(m)]
    if len(members) == 1:
        return cast(type[BaseModel], members[0])
    if not isinstance(value, dict):
        return None
    for member in members:
        for name, field in member.model_fields.items():
            annotation = _strip(field.annotation)
            key = _field_key(name, field)
            if get_origin(annotation) is Literal and key in value:
                if value[key] in get_args(annotation):
                    return cast(type[BaseModel], member)
    return None


def _item_type(tp: Any, item: Hashable) -> Any:
    """The element type of a list/tuple/set or the value type of a dict annotation."""
    tp = _strip(tp)
    origin = get_origin(tp)
    args = get_args(tp)
    if not args or origin is None:
        return None
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return args[1] if len(args) == 2 else None
    if type(item) is int and isinstance(origin, type) and issubclass(origin, Iterable):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return args[item] if item < len(args) else None
        return args[0]
    return None
