"""Every example in README.md runs as written, against servers this module starts (Sybil parses it).

- `python` and `sh` blocks run (ports `127.0.0.1:41NN` become free ports, the same number always
  the same port); `console` blocks run each `$ command` and compare the lines after it.
- A comment `#=> text` after a line states output that must appear (`...` matches anything), so a
  figure shown in the README cannot go stale.
- A `toml` block is validated as a config file (or a mock rules file when it holds `[[rules]]`). A
  block whose first line is a comment naming a file (`# cap.toml`, `# test_summary.py`) is also
  written to that file, in the folder every example runs in, before any example runs.
- `<!-- readme: skip "reason" -->` right before a block skips it visibly (the real OpenAI API, the
  set-up commands that .ci/run itself runs).

The folder the examples run in holds a copy of the shipped config.toml and fixtures/; `oaigate serve`
(4141) and `oaigate mock` (4142) run there for the whole module, as the README's tour assumes.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sybil import Document, Example
from sybil.parsers.markdown import CodeBlockParser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
PORT = re.compile(r"(?<=127\.0\.0\.1:)41\d\d\b|(?<=localhost:)41\d\d\b|(?<=--port )41\d\d\b")
SKIP = re.compile(r'<!--\s*readme:\s*skip\s+"([^"]+)"\s*-->\s*$')
EXPECT = re.compile(r"^[ \t]*#=> ?(.*)$", re.MULTILINE)
NAMED_FILE = re.compile(r"^# ([\w.-]+\.(?:toml|py|yml|yaml|json))\s*$")
BLOCK_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Workspace:
    """The folder the examples run in, and the port each README port number stands for."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.ports = folder, dict[str, str]()

    def port(self, number: str) -> str:
        if number not in self.ports:
            self.ports[number] = str(_free_port())
        return self.ports[number]

    def rewrite(self, source: str) -> str:
        return PORT.sub(lambda m: self.port(m.group(0)), source)

    def env(self) -> dict[str, str]:
        return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
                "NO_COLOR": "1", "COLUMNS": "200"}


WORKSPACE: Workspace | None = None


def _source(example: Example) -> str:
    return str(example.parsed)


def _skip_if_marked(example: Example) -> None:
    before = example.document.text[:example.start].rstrip().rsplit("\n", 1)[-1]
    if match := SKIP.search(before):
        pytest.skip(f"README line {example.line}: {match.group(1)}")


def _pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*?".join(re.escape(part) for part in expected.split("...")), re.DOTALL)


def check_expectations(source: str, output: str) -> None:
    """Each run of consecutive `#=>` lines must appear in the output (`...` matches anything)."""
    groups: list[list[str]] = []
    previous_end = -2
    for match in EXPECT.finditer(source):
        line = source.count("\n", 0, match.start())
        if line != previous_end + 1 or not groups:
            groups.append([])
        groups[-1].append(match.group(1).rstrip())
        previous_end = line
    for group in groups:
        lines = [_pattern(line) for line in group]
        found = any(all(p.search(out) for p, out in zip(lines, output.splitlines()[i:i + len(lines)], strict=False))
                    and len(output.splitlines()[i:]) >= len(lines)
                    for i in range(len(output.splitlines())))
        assert found, "README shows:\n" + "\n".join(group) + "\n\nbut the example printed:\n" + output[-4000:]


def _run_shell(script: str, workspace: Workspace, timeout: float = BLOCK_TIMEOUT_S) -> tuple[int, str]:
    """Run a script with bash in its own process group; anything it left in the background is ended."""
    out = workspace.folder / ".readme-output"
    with out.open("wb") as sink:
        proc = subprocess.Popen(["bash", "-o", "pipefail", "-c", script], cwd=workspace.folder, env=workspace.env(),
                                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = -1
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    return code, out.read_text(errors="replace")


def _needs_tools(source: str) -> None:
    """The README's shell examples use curl and sqlite3; .ci/run installs them, elsewhere a missing one
    skips the example (under CI it fails)."""
    for tool in ("curl", "sqlite3", "redis-server", "pg_virtualenv"):
        if re.search(rf"\b{tool}\b", source) and shutil.which(tool) is None:
            if os.environ.get("CI") == "true":
                raise AssertionError(f"{tool} is not installed (.ci/run installs it)")
            pytest.skip(f"{tool} is not installed")


def evaluate_sh(example: Example) -> None:
    _skip_if_marked(example)
    assert WORKSPACE is not None
    source = _source(example)
    _needs_tools(source)
    script = "set -e\n" + WORKSPACE.rewrite(source)
    code, output = _run_shell(script, WORKSPACE)
    assert code == 0, f"README line {example.line}: exit {code}:\n{output[-4000:]}"
    check_expectations(source, output)


def evaluate_console(example: Example) -> None:
    """`$ command` lines run in order; the lines up to the next command are its expected output."""
    _skip_if_marked(example)
    assert WORKSPACE is not None
    steps: list[tuple[str, list[str]]] = []
    for line in _source(example).splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps and line.strip():
            steps[-1][1].append(line)
    for command, expected in steps:
        _, output = _run_shell(WORKSPACE.rewrite(command), WORKSPACE)
        shown = [line.rstrip() for line in output.splitlines() if line.strip()]
        for want in expected:
            assert any(_pattern(want).fullmatch(got) for got in shown), \
                f"README line {example.line}: `{command}` printed:\n{output}\nnot: {want}"


def evaluate_python(example: Example) -> None:
    _skip_if_marked(example)
    assert WORKSPACE is not None
    source = _source(example)
    if NAMED_FILE.match(source.split("\n", 1)[0]):
        compile(source, source.split("\n", 1)[0][2:], "exec")  # a file the README asks to save: written at setup
        return
    buffer = io.StringIO()
    namespace: dict[str, object] = {"__name__": "__readme__"}
    cwd = os.getcwd()
    os.chdir(WORKSPACE.folder)
    try:
        with contextlib.redirect_stdout(buffer):
            exec(compile(WORKSPACE.rewrite(source), f"README.md:{example.line}", "exec"), namespace)
    finally:
        os.chdir(cwd)
    check_expectations(source, buffer.getvalue())


def evaluate_toml(example: Example) -> None:
    _skip_if_marked(example)
    from mockserver.engine.rules import load_file
    from proxy.config import Config

    source = _source(example)
    data = tomllib.loads(source)
    if "rules" in data:
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"readme-rules-{example.line}.toml"
        path.write_text(source)
        assert load_file(str(path)), "no rules"
        path.unlink()
    else:
        Config.model_validate(data)


PARSERS = [CodeBlockParser(language, evaluator) for language, evaluator in (
    ("python", evaluate_python), ("sh", evaluate_sh), ("console", evaluate_console), ("toml", evaluate_toml))]
DOCUMENT = Document.parse(str(README), *PARSERS)
EXAMPLES = list(DOCUMENT)


def _named_files() -> dict[str, str]:
    files = {}
    for example in EXAMPLES:
        source = _source(example)
        if match := NAMED_FILE.match(source.split("\n", 1)[0]):
            files[match.group(1)] = source
    return files


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """A copy of the shipped config and fixtures, the README's files, a gateway on 4141 and a mock on 4142."""
    global WORKSPACE
    folder = tmp_path_factory.mktemp("readme")
    shutil.copy(ROOT / "config.toml", folder / "config.toml")
    shutil.copytree(ROOT / "fixtures", folder / "fixtures", ignore=shutil.ignore_patterns(".oaigate-hits"))  # as cloned
    for name, text in _named_files().items():
        (folder / name).write_text(text)
    WORKSPACE = workspace = Workspace(folder)
    servers = []
    env = workspace.env()
    for command, number in ((["serve"], "4141"), (["mock"], "4142")):
        servers.append(subprocess.Popen([str(BIN / "oaigate"), *command, "--port", workspace.port(number)],
                                        cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))
    try:
        for number in ("4141", "4142"):
            _wait_for(int(workspace.port(number)))
        yield workspace
    finally:
        WORKSPACE = None
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


def _wait_for(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"line{e.line}-{e.region.lexemes['arguments']}" for e in EXAMPLES])
def test_readme_example(example: Example, workspace: Workspace) -> None:
    example.evaluate()


def test_every_shell_and_python_block_is_an_example() -> None:
    """A fenced block in a language this module does not run is a mistake (or needs adding here)."""
    fences = re.findall(r"^[ \t]*```(\w*)", README.read_text(), re.MULTILINE)
    languages = {f for f in fences if f}
    assert languages <= {"python", "sh", "console", "toml", "text"}, languages
    runnable = sum(1 for f in fences if f in ("python", "sh", "console", "toml"))
    assert runnable == len(EXAMPLES)


def test_a_stale_figure_fails_the_check() -> None:
    source = "python demo.py\n#=> request 13: 429 Budget exceeded ... spent $0.000384, ...\n"
    check_expectations(source, "noise\nrequest 13: 429 Budget exceeded for key:ci (day): spent $0.000384, reserved\n")
    with pytest.raises(AssertionError, match="README shows"):
        check_expectations(source, "request 13: 429 Budget exceeded for key:ci (day): spent $0.000403, reserved\n")
    with pytest.raises(AssertionError):
        check_expectations("x\n#=> line one\n#=> line two\n", "line two\nline one\n")  # consecutive lines, in order
