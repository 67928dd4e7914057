"""Every command and code block of the README and the docs runs, so none of them can rot.

Each page (README.md, docs/**/*.md) is one test: its fenced blocks run in order, in a fresh
working folder beside a link to ../shared, with one namespace for all its ```python blocks.
```bash and ```console blocks run command by command: `nas ...` in this process through
`nas.app.cli.main`, `python` and `torchrun` as subprocesses of this interpreter (a trailing
`&` starts one in the background, `wait` waits for them), `cd` and `export` as a shell would.
```text blocks (pictures, output) are never run; any other language must say what to do.
Inline code is prose, not run: the benchmarks' commands (minutes to hours each) are quoted
inline, and a test checks that their scripts and flags exist.

A block that cannot run as written says so right above itself, visibly, in the page source:

    <!-- test: replace "OLD" "NEW" -->   run the block with OLD replaced (OLD must occur)
    <!-- test: run "CMD" ["CMD" ...] --> run these commands instead (e.g. "make -n demo")
    <!-- test: file "NAME" -->            write the block to NAME (a config, a script)
    <!-- test: check-install -->          check pip lines against pyproject.toml and Makefile

In NEW and CMD, `{pg_url}` is the test PostgreSQL (EDGE_NAS_TEST_PG_URL, which `make pytest`
sets; without it the page runs up to that block and the test skips, or fails under CI=true),
`{port}` a free local port and `{uid}` a name unique to this run. A page that starts with `<!-- test: continues "PAGE" -->`
runs after PAGE, in its folder and namespace (one test for both).
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED, shared_file

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]

#: pages whose blocks take more than a few seconds (real runtimes, training, a whole run)
SLOW = {
    "docs/how-to/real-runtime-lut.md",
    "docs/how-to/calibrate.md",
    "docs/how-to/postgresql-workers.md",
    "docs/how-to/torchrun.md",
    "docs/how-to/train-on-your-images.md",
    "docs/how-to/read-a-report.md",
    "docs/how-to/hardware-aware-training.md",
    "docs/how-to/federated.md",
    "docs/how-to/on-device-learning.md",
}

#: commands known to fail today: (prefix of the command, the error it must raise, why). Strict,
#: like xfail(strict=True): the page's other blocks still run, the test xfails when the command
#: fails as expected and fails when it passes (then remove the entry).
KNOWN_FAILURES: list[tuple[str, type[BaseException], str]] = []

NEVER_RUN = {"text"}
TIMEOUT_S = 900


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


# -- reading pages ---------------------------------------------------------------------------
@dataclass
class Block:
    page: str
    line: int  # 1-based line of the block's first code line
    lang: str
    code: str
    directives: list[list[str]] = field(default_factory=list)


_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<lang>[\w+-]*)\s*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*test:\s*(?P<body>.*?)\s*-->\s*$")


def read_blocks(page: Path) -> tuple[list[Block], list[list[str]]]:
    """The fenced blocks of `page` with the directives right above each, and the page's own
    directives (those not right above a block)."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    page_directives: list[list[str]] = []
    pending: list[list[str]] = []
    i = 0
    while i < len(lines):
        directive = _DIRECTIVE.match(lines[i])
        fence = _FENCE.match(lines[i])
        if directive:
            pending.append(shlex.split(directive["body"]))
        elif fence:
            indent, ticks = len(fence["indent"]), fence["fence"]
            end = i + 1
            while end < len(lines) and lines[end].strip() != ticks:
                end += 1
            assert end < len(lines), f"{_rel(page)}:{i + 1}: unclosed code fence"
            body = "\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n"
            blocks.append(Block(_rel(page), i + 2, fence["lang"] or "", body, pending))
            pending = []
            i = end
        else:
            if lines[i].strip():
                page_directives += pending
                pending = []
        i += 1
    return blocks, page_directives + pending


# -- substitutions ---------------------------------------------------------------------------
class Tokens:
    """Values of {pg_url}, {port} and {uid}; a missing PostgreSQL is remembered, not raised."""

    def __init__(self) -> None:
        self.uid = uuid.uuid4().hex[:8]
        self.missing: list[str] = []

    def expand(self, text: str, where: str) -> str | None:
        """`text` with its tokens filled in, or None when it needs what this machine lacks."""
        if "{pg_url}" in text:
            url = os.environ.get("EDGE_NAS_TEST_PG_URL", "")
            if not url:
                message = f"{where}: needs EDGE_NAS_TEST_PG_URL (make pytest starts one)"
                if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                    pytest.fail(message + "; CI=true, so a missing server is a failure")
                self.missing.append(message)
                return None
            text = text.replace("{pg_url}", url)
        while "{port}" in text:
            text = text.replace("{port}", str(_free_port()), 1)
        return text.replace("{uid}", self.uid)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- running commands ------------------------------------------------------------------------
def logical_lines(text: str, console: bool) -> Iterator[str]:
    """Commands of a shell block: continuation lines joined, comments and output dropped."""
    if console:
        text = "\n".join(line[2:] for line in text.splitlines() if line.startswith("$ "))
    for line in text.replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            yield line


class Shell:
    """Runs a page's commands in its folder, as a shell would, `nas` in this process."""

    def __init__(self, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cwd = cwd
        self.monkeypatch = monkeypatch
        self.background: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.known: list[str] = []  # KNOWN_FAILURES that failed as expected

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH", "")
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""),
            "OMP_NUM_THREADS": "1",
            **extra,
        }

    def run(self, line: str, where: str) -> None:
        words = shlex.split(os.path.expandvars(line), comments=True)
        background = bool(words) and words[-1] == "&"
        words = words[:-1] if background else words
        extra: dict[str, str] = {}
        while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
            key, value = words.pop(0).split("=", 1)
            extra[key] = value
        if not words:
            return
        name, args = words[0], words[1:]
        if name == "python" and args[:2] == ["-m", "nas"]:
            name, args = "nas", args[2:]
        known = next((k for k in KNOWN_FAILURES if shlex.join(words).startswith(k[0])), None)
        if known is not None:
            try:
                self.nas(args, extra)
            except known[1]:
                self.known.append(known[2])
            else:
                pytest.fail(f"{where}: `{line}` passes now; remove it from KNOWN_FAILURES")
        elif name == "nas" and not background:
            self.nas(args, extra)
        elif name in ("nas", "python", "torchrun"):
            argv = {
                "nas": [sys.executable, "-m", "nas"],
                "python": [sys.executable],
                "torchrun": [sys.executable, "-m", "torch.distributed.run"],
            }[name] + args
            self.spawn(argv, extra, background, where)
        elif name == "make":
            assert "-n" in args, f"{where}: `make` runs only as a dry run (-n) in a test: {line}"
            self.spawn(["make", "-C", str(ROOT), *args], extra, background, where)
        elif name == "cd":
            self.cwd = (self.cwd / args[0]).resolve()
            self.monkeypatch.chdir(self.cwd)
        elif name == "export":
            for assignment in args:
                key, value = assignment.split("=", 1)
                self.monkeypatch.setenv(key, value)
        elif name == "wait":
            self.wait(where)
        else:
            pytest.fail(f"{where}: no way to run {name!r} in a test; add a test directive: {line}")

    def nas(self, args: list[str], extra: dict[str, str]) -> None:
        from nas.app.cli import main

        with self.monkeypatch.context() as mp:
            for key, value in extra.items():
                mp.setenv(key, value)
            try:
                code = main(args)
            except SystemExit as stop:  # argparse's errors
                code = stop.code if isinstance(stop.code, int) else 2
        assert code == 0, f"`nas {shlex.join(args)}` exited {code}"

    def spawn(self, argv: list[str], extra: dict[str, str], background: bool, where: str) -> None:
        proc = subprocess.Popen(argv, cwd=self.cwd, env=self.env(extra))
        if background:
            self.background.append((shlex.join(argv), proc))
            return
        code = proc.wait(timeout=TIMEOUT_S)
        assert code == 0, f"{where}: `{shlex.join(argv)}` exited {code}"

    def wait(self, where: str) -> None:
        failed = []
        for text, proc in self.background:
            code = proc.wait(timeout=TIMEOUT_S)
            if code != 0:
                failed.append(f"`{text}` exited {code}")
        self.background = []
        assert not failed, f"{where}: " + "; ".join(failed)

    def close(self) -> None:
        for _, proc in self.background:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# -- install lines ---------------------------------------------------------------------------
def check_install(block: Block) -> None:
    """`pip install` lines name only extras that pyproject.toml declares and pin what the
    Makefile pins (they install from the network, so a test checks them instead)."""
    import tomllib

    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    makefile = (ROOT / "Makefile").read_text()
    pins = dict(re.findall(r"(torch|torch-pruning)==([\w.+]+)", makefile))
    checked = 0
    for line in logical_lines(block.code, console=False):
        words = shlex.split(line, comments=True)
        if "pip" not in words or "install" not in words:
            continue
        for word in words:
            named = re.fullmatch(r"\.\[([\w,-]+)\]", word)
            if named:
                unknown = set(named[1].split(",")) - extras
                assert not unknown, f"{block.page}: extras {unknown} not in pyproject: {line}"
                checked += 1
            pinned = re.fullmatch(r"(torch|torch-pruning)==([\w.+]+)", word)
            if pinned:
                assert pins.get(pinned[1]) == pinned[2], f"{block.page}: the Makefile pins {pins}"
                checked += 1
    assert checked, f"{block.page}:{block.line}: check-install found no pip install line to check"


# -- running a page --------------------------------------------------------------------------
def run_block(block: Block, shell: Shell, namespace: dict[str, Any], tokens: Tokens) -> bool:
    """Run one block; False when it needs what this machine lacks (the page stops there)."""
    where = f"{block.page}:{block.line}"
    code, commands, verbs = block.code, None, [d[0] for d in block.directives]
    for directive in block.directives:
        verb, args = directive[0], directive[1:]
        if verb == "replace":
            old, new = args
            assert old in code, f"{where}: stale substitution, {old!r} is not in the block"
            filled = tokens.expand(new, where)
            if filled is None:
                return False
            code = code.replace(old, filled)
        elif verb == "run":
            expanded = [tokens.expand(c, where) for c in args]
            if None in expanded:
                return False
            commands = [c for c in expanded if c is not None]
        elif verb == "file":
            (shell.cwd / args[0]).write_text(code)
        elif verb == "check-install":
            check_install(block)
        else:
            pytest.fail(f"{where}: unknown test directive {directive}")
    if "file" in verbs or "check-install" in verbs:
        return True
    if commands is not None:
        for command in commands:
            shell.run(command, where)
    elif block.lang == "python":
        compiled = compile("\n" * (block.line - 1) + code, block.page, "exec")
        exec(compiled, namespace)
    elif block.lang in ("bash", "console"):
        for line in logical_lines(code, console=block.lang == "console"):
            shell.run(line, where)
    else:
        assert block.lang in NEVER_RUN, (
            f"{where}: a ```{block.lang or '(no language)'} block: use python, bash or console "
            f"(run), text (never run), or say what the test does with it (file, run)"
        )
    return True


def _chains() -> list[list[Path]]:
    """Pages in test order: a page that continues another runs after it, in one test."""
    follows = {}
    for page in PAGES:
        for directive in read_blocks(page)[1]:
            if directive[0] == "continues":
                follows[page] = (page.parent / directive[1]).resolve()
    chains = [[p] for p in PAGES if p not in follows]
    for page, before in follows.items():
        chain = next((c for c in chains if c[-1] == before), None)
        assert chain is not None, f"{_rel(page)} continues {before}, which is not a page"
        chain.append(page)
    return chains


def _param(chain: list[Path]) -> Any:
    name = "+".join(_rel(p) for p in chain)
    marks = [pytest.mark.slow] if any(_rel(p) in SLOW for p in chain) else []
    return pytest.param(chain, id=name, marks=marks)


@pytest.fixture
def registries() -> Iterator[None]:
    """Devices and spaces a page registers are gone after it (other tests list them all)."""
    import latency_models
    import search_spaces

    saved = [
        (reg, dict(reg._factories), dict(reg._help))
        for reg in (latency_models.DEVICES, latency_models.LATENCY_MODELS, search_spaces.SPACES)
    ]
    yield
    for reg, factories, helps in saved:
        reg._factories.clear()
        reg._factories.update(factories)
        reg._help.clear()
        reg._help.update(helps)


@pytest.fixture(scope="session")
def docs_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One artifact and data cache for every page (programs lowered once, digits made once)."""
    return tmp_path_factory.mktemp("edge-nas-cache")


@pytest.mark.parametrize("chain", [_param(c) for c in _chains()])
def test_page_runs(
    chain: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    registries: None,
    docs_cache: Path,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    blocks = [b for page in chain for b in read_blocks(page)[0]]
    if any("../shared/" in b.code for b in blocks):
        shared_file("benchmarks/nb201/nb201.csv")  # skip here, or fail under CI=true
        (tmp_path / "shared").symlink_to(SHARED)
    monkeypatch.chdir(work)
    monkeypatch.setenv("EDGE_NAS_CACHE", str(docs_cache))
    shell, namespace, tokens = Shell(work, monkeypatch), {"__name__": "__docs__"}, Tokens()
    ran = 0
    try:
        for block in blocks:
            if not run_block(block, shell, namespace, tokens):
                break
            ran += 1
        shell.wait("end of page")
    finally:
        shell.close()
    if tokens.missing:
        pytest.skip(f"ran {ran} block(s), then: " + "; ".join(tokens.missing))
    if shell.known:
        pytest.xfail("; ".join(shell.known))
    fences = sum(page.read_text().count("```") for page in chain)
    assert ran > 0 or fences == 0, f"{chain}: {fences} fences but no block ran"


# -- what the pages promise beyond their blocks ----------------------------------------------
def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert len(text.splitlines()) <= 150, "the README is a user's guide: 150 lines at most"


def test_readme_names_every_extra() -> None:
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    text = README.read_text()
    for extra in pyproject["project"]["optional-dependencies"]:
        assert f"`{extra}`" in text, f"the README does not say what the extra {extra!r} brings"


def _subcommands(parser: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    import argparse

    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield prefix
        return
    if parser.get_default("func") is not None:  # `nas search` runs, and has `nas search worker`
        yield prefix
    for name, sub in actions[0].choices.items():
        yield from _subcommands(sub, (*prefix, name))


def test_readme_cli_table_lists_every_command() -> None:
    from nas.app.cli import build_parser

    rows = re.findall(r"^\| `nas ([a-z]+(?: [a-z]+)*)(?: [A-Z][^`]*)?`", README.read_text(), re.M)
    listed = {tuple(r.split()) for r in rows}
    commands = set(_subcommands(build_parser()))
    assert listed == commands, (
        f"README's CLI table: missing {sorted(commands - listed)}, unknown {sorted(listed - commands)}"
    )


def test_readme_links_resolve() -> None:
    for target in re.findall(r"\]\((?!https?://|#)([^)#]+)", README.read_text()):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def _doc_texts() -> Iterator[tuple[str, str]]:
    for page in PAGES:
        yield _rel(page), page.read_text()


def test_docs_name_no_module_inside_a_package() -> None:
    """Dotted names in the README and the docs stop at packages (`nas.search.run_search`, not
    `nas.search.tabular`): modules inside packages move as the code is split."""
    for name, text in _doc_texts():
        for dotted in re.findall(r"\b((?:nas|latency_models|search_spaces)(?:\.\w+)+)", text):
            parts = dotted.split(".")
            for i in range(1, len(parts) + 1):
                module = ROOT.joinpath(*parts[:i]).with_suffix(".py")
                assert not module.is_file(), f"{name} names the module {'.'.join(parts[:i])}"


def _script_source(script: Path) -> str:
    """A benchmark's text with its own helper modules' (`from benchmarks._x import ...`), where
    a long script keeps its command line."""
    text = script.read_text()
    helpers = re.findall(r"^from benchmarks\.(_\w+) import", text, flags=re.M)
    return "\n".join([text, *((script.parent / f"{h}.py").read_text() for h in helpers)])


def test_benchmark_commands_name_real_flags() -> None:
    """Benchmarks run for minutes to hours, so the docs quote their commands inline: each
    script exists and takes every flag quoted."""
    checked = 0
    for name, text in _doc_texts():
        flat = re.sub(r"\s*\n\s*", " ", text)
        for script, args in re.findall(r"`python (benchmarks/\w+\.py)([^`]*)`", flat):
            source = _script_source(ROOT / script)
            for flag in re.findall(r"(?<!\S)(--[\w-]+)", args):
                assert f'"{flag}"' in source, f"{name}: {script} has no flag {flag}"
            checked += 1
    assert checked >= 5


def test_every_page_is_in_the_site_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        assert page.relative_to(ROOT / "docs").as_posix() in nav, f"{page} is not in mkdocs.yml"
