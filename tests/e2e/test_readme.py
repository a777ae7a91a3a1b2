"""Every ```sh block of README.md runs as written, after the two set-up commands.

Each block runs in a fresh shell whose PATH starts with the venv's bin (what
`./dev` gives a new shell: the `dr-agent` link, or `./dev shell`), in a scratch
folder that shows the checkout's files under their own names, so relative
paths such as config/demo-site.yaml resolve and what the commands write
(schema, database, chart) stays out of the checkout. Every command must exit 0
and print the line EXPECT names for it. ```console blocks are transcripts of a
site (root, /etc/dr-agent, systemd) and are not run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)

# A line each README command prints (a substring of its output, or of the file
# it redirects into). A command added to the README needs its line here.
EXPECT = {
    "dr-agent validate -c config/demo-site.yaml": "config/demo-site.yaml: OK (site demo-plant",
    "dr-agent plan -c config/demo-site.yaml --target-pct 10 --sim": "result: about",
    "dr-agent simulate -c config/demo-site.yaml --event strategies/examples/factory.event.json": (
        "settlement: verified"
    ),
    "dr-agent schema > site-config.schema.json": '"$schema"',
    "dr-agent demo --speed 300 --keep-db demo.sqlite": "verified reduction",
    "dr-agent report --db demo.sqlite latest --png chart.png": "wrote chart.png",
}


def blocks(lang: str) -> list[tuple[int, list[str]]]:
    """(line number, commands) of each fenced block of this language; comments and continuations joined."""
    text = README.read_text()
    found = []
    for m in FENCE.finditer(text):
        if m.group(1) != lang:
            continue
        commands, pending = [], ""
        for line in m.group(2).splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            line = pending + line
            pending = ""
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
        found.append((text[: m.start()].count("\n") + 1, commands))
    return found


def without_comment(command: str) -> str:
    """The command as the shell sees it: the trailing `# ...` dropped, spaces normalised."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return " ".join(shlex.quote(t) if t not in (">", "|", "&&", ";") else t for t in lexer)


def runnable_blocks() -> list[tuple[int, list[str]]]:
    # The set-up block (./dev demo, ./dev test) is what this test runs after.
    return [(n, cmds) for n, cmds in blocks("sh") if not any(c.startswith("./dev ") for c in cmds)]


def scratch(tmp: Path) -> Path:
    """A folder where the checkout's top-level files appear under their own names."""
    tmp.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".git", ".venv") and not (tmp / entry.name).exists():
            (tmp / entry.name).symlink_to(entry)
    return tmp


def run_block(cwd: Path, commands: list[str]) -> list[str]:
    """Runs the commands in order; returns what went wrong (empty: all good)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    for command in commands:
        proc = subprocess.run(
            ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=100
        )
        out = proc.stdout + proc.stderr
        redirect = re.search(r">\s*(\S+)", without_comment(command))
        if redirect and (cwd / redirect.group(1)).is_file():
            out += (cwd / redirect.group(1)).read_text()
        want = EXPECT[without_comment(command)]
        if proc.returncode != 0:
            return [f"{command}\n  exit {proc.returncode}:\n{out[-2000:]}"]
        if want not in out:
            return [f"{command}\n  printed no line with {want!r}:\n{out[-2000:]}"]
    return []


def test_every_readme_command_has_an_expected_line() -> None:
    commands = [without_comment(c) for _, cmds in runnable_blocks() for c in cmds]
    assert len(commands) >= 4, "the README lost its command blocks"
    unknown = [c for c in commands if c not in EXPECT]
    assert not unknown, f"README commands without an expected line in EXPECT: {unknown}"
    stale = set(EXPECT) - set(commands)
    assert not stale, f"EXPECT names commands the README no longer has: {stale}"


def test_site_transcripts_are_only_what_needs_a_site() -> None:
    # A command that runs from the checkout belongs in a ```sh block, where this test runs it.
    for line, lines in blocks("console"):
        for c in (x.removeprefix("$ ") for x in lines if x.startswith("$ ")):
            assert "/etc/dr-agent" in c or c.startswith(("sudo ", "systemctl ", "journalctl ")), (
                f"README.md:{line}: {c!r} runs without a site: put it in a ```sh block"
            )


def test_every_readme_command_block_runs_as_written(tmp_path: Path) -> None:
    todo = runnable_blocks()

    # The blocks are independent: each gets its own folder, and they run side by side.
    def one(i: int, line: int, commands: list[str]) -> list[str]:
        return [f"README.md:{line}: {p}" for p in run_block(scratch(tmp_path / f"block{i}"), commands)]

    with ThreadPoolExecutor(max_workers=len(todo)) as pool:
        results = list(pool.map(lambda item: one(item[0], *item[1]), enumerate(todo)))
    failures = [p for r in results for p in r]
    assert not failures, "\n\n".join(failures)
