"""The documentation stays buildable and true: the MkDocs site builds with ``--strict``, every
relative link and image in README.md resolves, and the public API has docstrings."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Markdown links and images: [text](target) / ![alt](target), and HTML src="..." / href="...".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|(?:src|href)=\"([^\"]+)\"")
EXTERNAL = ("http://", "https://", "mailto:", "#")


def _mkdocs_or_skip() -> None:
    """Skip when MkDocs is missing, unless TLEDGE_REQUIRE_DOCS=1 makes that a failure (CI)."""
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError as error:
        if os.environ.get("TLEDGE_REQUIRE_DOCS") == "1":
            pytest.fail(f"TLEDGE_REQUIRE_DOCS=1 but the docs tools are missing ({error}); "
                        "install them with: pip install -e '.[docs]'")
        pytest.skip(f"MkDocs is not installed ({error}); pip install -e '.[docs]' to build the site")


def test_site_builds_strict(tmp_path):
    """`mkdocs build --strict`: no warnings (broken links, anchors, missing pages, API errors)."""
    _mkdocs_or_skip()
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    for page in ("index.html", "getting-started/index.html", "measurements/index.html",
                 "reference/runtime/index.html", "reference/export/index.html"):
        assert (site / page).is_file(), f"{page} was not built"
    # The API reference is generated from the docstrings, not written by hand.
    runtime = (site / "reference/runtime/index.html").read_text(encoding="utf-8")
    for name in ("Embedder", "Gallery", "Recognizer", "open_source", "ArtifactError"):
        assert name in runtime, f"{name} is missing from the generated API reference"
    # Every page works offline: nothing is loaded from another host.
    for html in site.rglob("*.html"):
        remote = re.findall(r"<(?:script|link)[^>]+(?:src|href)=\"(https?://[^\"]+)\"",
                            html.read_text(encoding="utf-8"))
        assert not remote, f"{html.relative_to(site)} loads {remote}"


def _targets(markdown: str) -> list[str]:
    """Relative link and image targets of a Markdown text, code blocks and spans excluded."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    found = [a or b for a, b in LINK.findall(text)]
    return [t for t in found if not t.startswith(EXTERNAL)]


def test_readme_links_resolve():
    """Every relative link and image in README.md names a file (or folder) of the repository."""
    readme = ROOT / "README.md"
    targets = _targets(readme.read_text(encoding="utf-8"))
    assert targets, "README.md has no relative links: it should point into docs/"
    broken = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert not broken, f"README.md links to missing files: {broken}"
    assert "docs/gui.png" in targets, "the README shows the desktop app's screenshot"


def test_link_extraction_sees_links_and_images():
    """The link finder itself: links, images and HTML count; code and URLs do not."""
    text = ('See [a](docs/a.md#x) and ![b](docs/b.png "t") and <img src="c.png">.\n'
            "`[no](code.md)`\n```\n[no](block.md)\n```\n[web](https://example.org)")
    assert _targets(text) == ["docs/a.md#x", "docs/b.png", "c.png"]


def _public_members(cls: type) -> list[tuple[str, object]]:
    """Public methods and properties a class defines or inherits from tledge code."""
    members = []
    for klass in cls.__mro__:
        if not klass.__module__.startswith("tledge"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in dict(members):
                continue
            func = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
            if inspect.isfunction(func):
                members.append((name, func))
    return members


def _has_doc(obj: object) -> bool:
    doc = obj.__doc__
    if inspect.isclass(obj) and doc and doc.startswith(f"{obj.__name__}("):
        return False  # the signature a dataclass writes when the class has no docstring
    return bool(doc and doc.strip())


def _undocumented(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [
        name for name, obj in vars(module).items()
        if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module_name]
    missing = []
    for name in names:
        obj = getattr(module, name)
        if not _has_doc(obj):
            missing.append(f"{module_name}.{name}")
        if inspect.isclass(obj):
            missing += [f"{module_name}.{name}.{member}" for member, func in _public_members(obj)
                        if not _has_doc(func)]
    return missing


@pytest.mark.parametrize("module_name", ["tledge.runtime", "tledge.train.export", "tledge.errors"])
def test_public_api_has_docstrings(module_name):
    """Every public class, function, method and property of the documented API says what it does."""
    if module_name == "tledge.train.export":
        pytest.importorskip("torch", reason="tledge.train needs PyTorch (the train extra)")
    missing = _undocumented(module_name)
    assert not missing, "no docstring: " + ", ".join(missing)


# -- every `tledge ...` command shown in the README and the docs parses -----------------------

def _shown_commands(commands: set[str]) -> list[tuple[str, list[str]]]:
    """(page, argv after `tledge`) for each command line in a fenced block of the README or
    docs; lines with placeholders (`...`, `[--option]`, `<x>`) are illustrations and skipped."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found = []
    for page in pages:
        for block in re.findall(r"```[a-z]*\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                argv = _tledge_argv(line, commands)
                if argv is not None:
                    found.append((str(page.relative_to(ROOT)), argv))
    return found


def _tledge_argv(line: str, commands: set[str]) -> list[str] | None:
    """The arguments after the `tledge` executable (or `-m tledge.cli`) on a shell line, when
    a command of ``commands`` follows it."""
    if "..." in line or re.search(r"\[-|<\w+>|\|", line):
        return None
    try:  # a command substitution stands for one word
        words = shlex.split(re.sub(r"\$\([^)]*\)", "X", line), comments=True)
    except ValueError:
        return None
    for i, word in enumerate(words[:-1]):
        is_tledge = word in ("tledge", "tledge-gui") or word.endswith("/tledge")
        module = word == "-m" and words[i + 1] == "tledge.cli"
        if module:
            return words[i + 2:]
        if is_tledge and (words[i + 1] in commands or word == "tledge-gui"):
            return (["gui"] if word == "tledge-gui" else []) + words[i + 1:]
    return None


def test_shown_commands_are_found():
    """The finder: the executable in any form, placeholders skipped."""
    names = {"gallery", "finetune", "recognize", "hub"}
    assert _tledge_argv("sudo -u tledge /opt/tledge/venv/bin/tledge gallery list -g G",
                        names) == ["gallery", "list", "-g", "G"]
    assert _tledge_argv("tledge gallery backup -g G /b/g-$(date +%F).sqlite", names) == [
        "gallery", "backup", "-g", "G", "/b/g-X.sqlite"]
    assert _tledge_argv("torchrun --nproc-per-node 4 -m tledge.cli finetune d -o r",
                        names) == ["finetune", "d", "-o", "r"]
    assert _tledge_argv("sudo -u postgres createdb -O tledge tledge", names) is None
    assert _tledge_argv("tledge recognize ... --json", names) is None
    assert _tledge_argv("tledge hub status --url URL [--json]", names) is None
    assert len(_shown_commands(names)) > 20


def test_shown_commands_parse(capsys):
    """Every command the README and the docs show is accepted by the real parser: no option
    that was renamed or removed survives in the documentation."""
    pytest.importorskip("onnxruntime")
    from tledge.cli import build_parser

    parser = build_parser()
    commands = {"gui", *next(a for a in parser._actions if a.dest == "command").choices}
    wrong = []
    for page, argv in _shown_commands(commands):
        if argv[:1] == ["gui"]:
            gui = pytest.importorskip("tledge_gui.app", reason="the gui extra")
            target, args = gui.build_parser(), argv[1:]
        else:
            target, args = parser, argv
        if {"-h", "--help", "--version"} & set(args):
            continue  # these print and exit by design
        try:
            target.parse_args(args)
        except SystemExit:
            error = capsys.readouterr().err.strip().splitlines() or ["(no message)"]
            wrong.append(f"{page}: tledge {shlex.join(argv)}: {error[-1]}")
    assert not wrong, "\n".join(wrong)
