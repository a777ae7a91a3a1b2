"""`./dev` installs every external program the code base runs.

The programs are found by reading the sources (shutil.which("x"), and
subprocess calls whose command starts with a literal name), so a test that
starts calling a new program fails here until `./dev` installs it too.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("tests", "bench", "agent", "drivers", "strategies")
SPAWNERS = {"run", "Popen", "call", "check_call", "check_output", "create_subprocess_exec"}
# Part of every Debian system (Essential: yes); the test checks that claim below.
ESSENTIAL = {"bash", "dpkg", "dpkg-query"}


def programs_in(source: str, filename: str = "<source>") -> set[str]:
    """Names of the external programs a Python source runs."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        first = node.args[0]
        if name in ("which", "create_subprocess_exec"):
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.add(first.value)
        if name in SPAWNERS and isinstance(first, ast.List | ast.Tuple) and first.elts:
            head = first.elts[0]
            if isinstance(head, ast.Constant) and isinstance(head.value, str):
                found.add(head.value)
    return found


def programs_of_the_code_base() -> dict[str, set[Path]]:
    where: dict[str, set[Path]] = {}
    for top in SCANNED:
        for path in (REPO / top).rglob("*.py"):
            for prog in programs_in(path.read_text(), str(path)):
                where.setdefault(prog, set()).add(path.relative_to(REPO))
    return where


def dev_tools() -> dict[str, str]:
    """`./dev tools --list`: program -> the Debian package it comes from."""
    out = subprocess.run(
        [str(REPO / "dev"), "tools", "--list"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return dict(line.split() for line in out.splitlines())


def locate(prog: str) -> str | None:
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin:{REPO / '.venv/bin'}"
    return shutil.which(prog, path=path)


def test_the_scan_sees_every_way_of_calling_a_program() -> None:
    # Sample names, not programs: the sample source is assembled from call forms so that no
    # reader of this file (a person or a tool) takes them for programs the tests need.
    forms = {
        "a = shutil.which({!r})": "sample-by-which",
        "subprocess.run([{!r}, '-x'], check=True)": "sample-by-run",
        "subprocess.Popen(({!r},))": "sample-by-popen",
        "asyncio.create_subprocess_exec({!r}, 'arg')": "sample-by-exec",
    }
    source = "import shutil, subprocess, asyncio, sys\n" + "".join(
        form.format(name) + "\n" for form, name in forms.items()
    )
    source += "subprocess.run([sys.executable, '-m', 'agent.cli'])\n"  # the project's own Python: not a tool
    source += "subprocess.run([a, 'check'])\n"  # already counted at its which()
    assert programs_in(source) == set(forms.values())


def test_dev_installs_every_program_the_code_base_runs() -> None:
    used = programs_of_the_code_base()
    assert {"mosquitto", "socat"} <= set(used), "the scan no longer finds the programs the tests run"
    listed = dev_tools()
    missing = {p: sorted(map(str, used[p])) for p in set(used) - set(listed) - ESSENTIAL}
    assert not missing, f"add these programs and their Debian package to TOOLS in ./dev: {missing}"


def test_each_program_comes_from_the_package_dev_names() -> None:
    # After `./dev tools` (which `./dev test` runs) every program is here; the
    # package named in ./dev is the one that installed it.
    unpacked = (REPO / "dev").read_text().split('UNPACK="', 1)[1].split('"', 1)[0].split()
    for prog, package in dev_tools().items():
        found = locate(prog)
        assert found, f"{prog} is not installed: run ./dev tools"
        if package in unpacked:
            assert Path(found) == REPO / ".venv/bin" / prog, found
            continue
        owner = subprocess.run(["dpkg", "-S", f"*bin/{prog}"], capture_output=True, text=True)
        assert owner.stdout.startswith(f"{package}: "), f"{prog}: ./dev says {package}, dpkg says {owner}"
    for prog in ESSENTIAL:
        pkg = subprocess.run(["dpkg", "-S", f"*bin/{prog}"], capture_output=True, text=True).stdout
        essential = subprocess.run(
            ["dpkg-query", "-W", "-f=${Essential}", pkg.split(":")[0]], capture_output=True, text=True
        )
        assert essential.stdout == "yes", f"{prog} is not on every Debian system: add it to ./dev's TOOLS"
