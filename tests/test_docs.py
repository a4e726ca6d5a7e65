"""The docs run: every ```python block of README.md and docs/**/*.md is a script that works.

Each block is written to a file and run with this interpreter in a fresh working directory that
holds a copy of ``examples/`` (so paths read as from the repository root and nothing is written
into the checkout), against a fresh emulator that the environment variables the client reads
point at. A block that fails names its file and line. Fences must name their language, so a
snippet cannot dodge the check by being untagged: ```python for a runnable script, ```text,
```bash or ```console for everything else.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from runcomfy_async.testing import Emulator

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Simulated time runs this many times fast: a 1,000-step training run takes 1.5 s.
SPEED = 2000.0
#: The emulated account limit and the rate the docs' clients pace themselves to (RUNCOMFY_RATE).
RATE_LIMIT = 100.0
CLIENT_RATE = 50.0
#: Blocks run at once: they mostly wait on polls, so several share the cores well.
PARALLEL_BLOCKS = 4
#: Seconds one block may take.
BLOCK_TIMEOUT = 90.0
#: Spellings of Python that are neither run nor allowed: say ```python or ```text instead.
AMBIGUOUS = {"py", "python3", "py3", "pycon", "ipython", "python-repl"}
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
#: What a clean run never prints on stderr.
STDERR_ALARMS = ("Traceback", "Exception ignored", "ResourceWarning", "was never awaited")


class Block(NamedTuple):
    """One fenced code block: where it is, its language tag and its text."""

    doc: str
    line: int
    lang: str
    code: str

    @property
    def where(self) -> str:
        """``README.md:42``: the file (relative to the repository) and the fence's line."""
        return f"{self.doc}:{self.line}"


def doc_files() -> list[Path]:
    """README.md and every Markdown file under docs/, whoever added it."""
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one Markdown file, in order, with their opening line."""
    doc = path.relative_to(REPO_ROOT).as_posix()
    blocks: list[Block] = []
    opened: tuple[int, str, str] | None = None
    body: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = FENCE.match(line)
        if opened is None:
            if match:
                info = match["info"].strip()
                opened = (number, match["fence"], info.split()[0].lower() if info else "")
                body = []
            continue
        start, fence, lang = opened
        closes = (
            match is not None
            and match["fence"][0] == fence[0]
            and len(match["fence"]) >= len(fence)
            and not match["info"].strip()
        )
        if closes:
            blocks.append(Block(doc, start, lang, "\n".join(body) + "\n"))
            opened = None
        else:
            body.append(line)
    if opened is not None:
        raise AssertionError(f"{doc}:{opened[0]}: this code fence is never closed")
    return blocks


def all_blocks() -> list[Block]:
    """Every fenced block of every doc."""
    return [block for path in doc_files() for block in fenced_blocks(path)]


PYTHON_BLOCKS = [block for block in all_blocks() if block.lang == "python"]


def test_the_docs_have_runnable_blocks() -> None:
    """The harness finds the README tour (guards against a parser that silently finds nothing)."""
    assert any(block.doc == "README.md" for block in PYTHON_BLOCKS)


def test_every_fence_names_its_language() -> None:
    """Untagged or ambiguous fences are refused, naming the file, the line and the fix."""
    bad = [
        f"{block.where}: fence tagged {block.lang!r}"
        if block.lang
        else f"{block.where}: fence without a language"
        for block in all_blocks()
        if not block.lang or block.lang in AMBIGUOUS
    ]
    assert not bad, (
        "tag every code fence: ```python for a complete script that runs as-is against the "
        "emulator (tests/test_docs.py runs it), ```text / ```bash / ```console otherwise:\n  "
        + "\n  ".join(bad)
    )


def test_readme_opens_with_the_two_commands() -> None:
    """The README's first block is the demo and test commands a fresh machine can run."""
    first = fenced_blocks(REPO_ROOT / "README.md")[0]
    commands = [line.split("#")[0].strip() for line in first.code.splitlines()]
    assert first.lang == "bash"
    assert [c for c in commands if c] == ["./scripts/demo", "./scripts/test"]


def test_nothing_shipped_cites_files_the_repository_lacks() -> None:
    """No doc, docstring, comment or example points at the project's internal notes."""
    cited = re.compile(r"\.\./shared|\bshared/seeds|\b(?:API|DESIGN)\." + "md\\b")
    roots = [
        "README.md",
        "pyproject.toml",
        "docs",
        "examples",
        "runcomfy_async",
        "benchmarks",
        "tests",
    ]
    found = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
        for root in roots
        for path in (
            [REPO_ROOT / root] if (REPO_ROOT / root).is_file() else (REPO_ROOT / root).rglob("*")
        )
        if path.is_file()
        and path.suffix in {".md", ".py", ".toml", ".yaml", ".yml", ".json", ".txt"}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if cited.search(line)
    ]
    assert not found, (
        "these lines cite files users of the repository do not have; state the fact or point at "
        "docs/ (docs/wire.md describes the APIs):\n  " + "\n  ".join(found)
    )


def test_relative_links_in_the_docs_resolve() -> None:
    """Every relative Markdown link of README.md and docs/ names a file the repository has."""
    link = re.compile(r"\]\((?!https?:|mailto:|#)([^)#\s]+)")
    broken = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {target}"
        for path in doc_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        for target in link.findall(line)
        if not (path.parent / target).exists()
    ]
    assert not broken, "these links point at files the repository does not have:\n  " + "\n  ".join(
        broken
    )


async def run_block(block: Block, workdir: Path) -> str | None:
    """Run one block as a script in ``workdir`` against a fresh emulator; None, or what failed."""
    shutil.copytree(
        REPO_ROOT / "examples",
        workdir / "examples",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    script = workdir / (re.sub(r"\W", "_", f"{block.doc}_line{block.line}") + ".py")
    script.write_text(block.code, encoding="utf-8")
    # Signed URLs keep their usual real-time life despite the fast clock.
    async with Emulator(rate_limit=RATE_LIMIT, burst=10, speed=SPEED, url_ttl=900 * SPEED) as emu:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONDONTWRITEBYTECODE": "1",
            "RUNCOMFY_API_TOKEN": emu.token,
            "RUNCOMFY_USER_ID": emu.user_id,
            "RUNCOMFY_TRAINER_URL": emu.url,
            "RUNCOMFY_MODEL_URL": emu.url,
            "RUNCOMFY_SERVER_URL": emu.url,
            "RUNCOMFY_RATE": str(CLIENT_RATE),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            cwd=workdir,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), BLOCK_TIMEOUT)
        except TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
            problem = f"did not finish within {BLOCK_TIMEOUT:g} s"
        else:
            alarms = [alarm for alarm in STDERR_ALARMS if alarm in err.decode(errors="replace")]
            if proc.returncode == 0 and not alarms:
                return None
            problem = f"exited with status {proc.returncode}" + (
                f"; stderr shows {', '.join(alarms)}" if alarms else ""
            )
    return (
        f"{block.where}: the ```python block starting on this line {problem} "
        f"(line N of {script.name} is line {block.line} + N of the doc)\n"
        f"--- stdout ---\n{out.decode(errors='replace')}\n"
        f"--- stderr ---\n{err.decode(errors='replace')}"
    )


@pytest.mark.asyncio
async def test_every_python_block_runs_as_a_script(tmp_path: Path) -> None:
    """Each block exits 0 with a clean stderr against its own emulator (run side by side)."""
    gate = asyncio.Semaphore(PARALLEL_BLOCKS)

    async def one(number: int, block: Block) -> str | None:
        """Run one block in its own directory, a few at a time."""
        async with gate:
            workdir = tmp_path / str(number)
            workdir.mkdir()
            return await run_block(block, workdir)

    results = await asyncio.gather(*(one(n, b) for n, b in enumerate(PYTHON_BLOCKS)))
    failures = [failure for failure in results if failure is not None]
    assert not failures, f"{len(failures)} of {len(PYTHON_BLOCKS)} doc blocks failed:\n\n" + (
        "\n\n".join(failures)
    )
