"""Failpoints: make a named component of a running agent raise, for the fault tests.

Off unless the environment sets DR_AGENT_FAILPOINTS; then `hit(name)` is a
dict lookup per component loop. The value is a spec, or `file:<path>` to read
the spec from a file that is re-read whenever it changes (a test arms a
failure mid-event by writing it). A spec is `;`-separated entries:

    <component>:<Exception>[@after=N][,times=M]

`component` is a supervised component (`poll`, `control`, `mqtt`, `flush`,
`report`, `state`, `metrics`); `poll` matches every `poll[<endpoint>]`, or name
one endpoint. `Exception` is a builtin exception name (ValueError,
RuntimeError, OverflowError, ...). The entry lets `after` hits pass (default
0), then raises on the next `times` hits (default 1; 0 = every hit from then on).

    DR_AGENT_FAILPOINTS="report:ValueError@after=3"
    DR_AGENT_FAILPOINTS="control:RuntimeError@times=0"     # control fails for good
"""

from __future__ import annotations

import builtins
import os
from dataclasses import dataclass
from pathlib import Path

ENV = "DR_AGENT_FAILPOINTS"


@dataclass
class Failpoint:
    component: str
    exc: type[BaseException]
    after: int = 0
    times: int = 1
    hits: int = 0

    def matches(self, name: str) -> bool:
        return name == self.component or name.startswith(self.component + "[")


def parse(spec: str) -> list[Failpoint]:
    """The entries of a spec; a malformed one is a ValueError naming it."""
    out = []
    for raw in spec.replace("\n", ";").split(";"):
        entry = raw.strip()
        if not entry:
            continue
        head, _, opts = entry.partition("@")
        component, sep, exc_name = head.partition(":")
        exc = getattr(builtins, exc_name.strip(), None)
        if not sep or not component.strip() or not (isinstance(exc, type) and issubclass(exc, Exception)):
            raise ValueError(f"{ENV}: bad entry {entry!r} (want <component>:<Exception>[@after=N][,times=M])")
        fp = Failpoint(component.strip(), exc)
        for opt in filter(None, (o.strip() for o in opts.split(","))):
            key, _, value = opt.partition("=")
            if key not in ("after", "times") or not value.isdigit():
                raise ValueError(f"{ENV}: bad option {opt!r} in {entry!r} (after=N, times=M)")
            setattr(fp, key, int(value))
        out.append(fp)
    return out


class Failpoints:
    def __init__(self, spec: str | None) -> None:
        self._file: Path | None = None
        self._mtime: int | None = None
        self.points: list[Failpoint] = []
        if spec and spec.startswith("file:"):
            self._file = Path(spec[5:])
        elif spec:
            self.points = parse(spec)

    @property
    def enabled(self) -> bool:
        return self._file is not None or bool(self.points)

    def _reload(self) -> None:
        assert self._file is not None
        try:
            st = self._file.stat()
        except OSError:
            self.points, self._mtime = [], None
            return
        if st.st_mtime_ns != self._mtime:
            self._mtime = st.st_mtime_ns
            self.points = parse(self._file.read_text(encoding="utf-8"))

    def hit(self, name: str) -> None:
        if self._file is not None:
            self._reload()
        for fp in self.points:
            if not fp.matches(name):
                continue
            fp.hits += 1
            n = fp.hits - fp.after
            if n >= 1 and (fp.times == 0 or n <= fp.times):
                raise fp.exc(f"injected fault in {name} (failpoint {fp.component}, hit {fp.hits})")


_active = Failpoints(os.environ.get(ENV))


def hit(name: str) -> None:
    """Raise here if a failpoint for component `name` is armed; nothing at all when none is set."""
    if _active.enabled:
        _active.hit(name)


def configure(spec: str | None) -> None:
    """Replace the failpoints (tests in-process); None turns them off."""
    global _active
    _active = Failpoints(spec)
