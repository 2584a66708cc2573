"""Issue 16 item 3: a CLI that explains itself. Every option of every command (the tledge
command with its kiosk, hub and gallery-sync plug-ins, and tledge-gui) has a help text that
shows its default; every command's help ends with examples; --version names the components;
progress bars show on a terminal only, and never with --quiet."""

import argparse
import io
import subprocess
import sys
from dataclasses import fields

import pytest

from tledge.cli import build_parser, main
from tledge.samples import enroll_dir


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for ``parser`` and every sub-parser below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))


def gui_parser():
    pytest.importorskip("PySide6")
    from tledge_gui.app import build_parser as gui

    return gui()


def all_parsers():
    yield from walk(build_parser(), ("tledge",))
    yield from walk(gui_parser(), ("tledge-gui",))


def flat(text: str) -> str:
    return " ".join(text.split())


def options_of(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:  # hidden on purpose (tledge-gui --pin: refused)
            continue
        yield action


def shows_default(action: argparse.Action) -> bool:
    d = action.default
    return not (d is None or d is False or d is argparse.SUPPRESS or d in ((), []))


def test_the_walk_reaches_every_command_and_plug_in():
    names = {" ".join(path) for path, _ in all_parsers()}
    for expected in ("tledge export", "tledge finetune", "tledge eval fewshot", "tledge kiosk",
                     "tledge hub status", "tledge gallery sync", "tledge gallery calibrate",
                     "tledge bench", "tledge demo", "tledge-gui"):
        assert expected in names
    assert len(names) >= 35


def test_every_option_has_help_that_shows_its_default():
    missing, no_default, checked = [], [], 0
    for path, parser in all_parsers():
        rendered = flat(parser.format_help())
        for action in options_of(parser):
            name = f"{' '.join(path)} {action.option_strings or action.dest}"
            checked += 1
            if not (action.help or "").strip():
                missing.append(name)
            elif shows_default(action) and str(action.default) not in rendered:
                no_default.append(f"{name} (default {action.default!r})")
    assert checked > 200
    assert not missing, f"options without help: {missing}"
    assert not no_default, f"help without the default: {no_default}"


def test_defaults_are_shown_once_and_none_is_never_printed():
    for path, parser in all_parsers():
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, path
        for action in options_of(parser):
            if action.help:
                assert flat(action.help).count("(default") <= 1, (path, action.dest)


def test_every_command_ends_with_examples():
    for path, parser in all_parsers():
        if path[-1] == "gui":  # a placeholder: `tledge gui` hands its arguments to tledge-gui
            continue
        help_ = parser.format_help().rstrip()
        assert "\nexamples:\n" in help_, path
        example = help_.split("\nexamples:\n")[-1].splitlines()
        assert example and all(line.strip().split()[0] in ("tledge", "tledge-gui", "torchrun")
                               for line in example), (path, example)


@pytest.mark.parametrize(("command", "config"), [
    ("finetune", "tledge.train.finetune:FinetuneConfig"),
    ("adapt", "tledge.train.adapt:AdaptConfig"),
    ("multitask", "tledge.train.multitask:MultitaskConfig"),
])
def test_training_help_shows_the_library_defaults(command, config):
    """The training options stay None in the parser (the config decides); their help must
    state the config's real defaults, written out so that parsing never imports torch."""
    import importlib

    module, name = config.split(":")
    cls = getattr(importlib.import_module(module), name)
    parser = dict(walk(build_parser()))[(command,)]
    by_dest = {a.dest: a for a in options_of(parser)}
    compared = 0
    for f in fields(cls):
        action = by_dest.get(f.name)
        if action is None or f.default in (None, ()):
            continue
        assert action.default is None, f.name
        assert f"(default: {f.default})" in flat(action.help), (command, f.name, f.default)
        compared += 1
    assert compared >= 10


def test_version_names_every_component(capsys):
    import faiss
    import onnxruntime
    import torch

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    from tledge import __version__

    assert out.startswith(f"tledge {__version__}\n")
    assert f"ONNX Runtime {onnxruntime.__version__}" in out
    assert "CPUExecutionProvider" in out
    assert f"FAISS {faiss.__version__}" in out
    assert f"torch {torch.__version__.split('+')[0]}" in out
    assert "PySide6" in out


def test_version_without_the_optional_packages():
    """torch and PySide6 absent (blocked): --version still answers and says how to add them."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['PySide6'] = None\n"
            "import importlib.metadata as m\n"
            "real = m.version\n"
            "def version(name):\n"
            "    if name.lower().startswith(('torch', 'pyside6')):\n"
            "        raise m.PackageNotFoundError(name)\n"
            "    return real(name)\n"
            "m.version = version\n"
            "from tledge.cli import main; sys.exit(main(['--version']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'torch: not installed (training: pip install "tledge[train]")' in out.stdout
    assert "PySide6: not installed" in out.stdout and "ONNX Runtime" in out.stdout


def test_python_dash_m_runs_the_package():
    out = subprocess.run([sys.executable, "-m", "tledge.cli", "export", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage: tledge export" in out.stdout
    assert "--qat-steps" in out.stdout and "(default: 200)" in out.stdout


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("quiet", "tty", "shown"), [
    (False, True, True), (True, True, False), (False, False, False)])
def test_progress_only_on_a_terminal_and_never_with_quiet(tiny_model, tmp_path, monkeypatch,
                                                          quiet, tty, shown):
    err = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    argv = [*(["--quiet"] if quiet else []), "enroll", "--model", str(tiny_model), "--gallery",
            str(tmp_path / "g"), "--folder", str(enroll_dir()), "--shots", "1"]
    assert main(argv) == 0
    assert ("enrolling" in err.getvalue()) is shown, err.getvalue()
    assert sys.stderr is err  # --quiet's stand-in is gone after the command
