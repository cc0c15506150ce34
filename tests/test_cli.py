"""The robust-encoders command line: built-ins, help examples, and the registration contract for later commands."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from robust_encoders import cli

ADVUNLEARN = ["nudity", "vangogh", "church", "garbage_truck", "parachute", "tench"]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_list_table(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:3] == ["NAME", "CONCEPT", "KIND"] and "LICENSE" in header and "SOURCE" in header
    for name in ADVUNLEARN:
        assert f"OPTML-Group/AdvUnlearn/{name}_unlearned" in out
    assert "cc-by-4.0" in out


def test_list_json_and_filters(capsys):
    assert cli.main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in data][:6] == ADVUNLEARN
    assert cli.main(["list", "--kind", "style", "--family", "sd1", "--json"]) == 0
    assert [d["name"] for d in json.loads(capsys.readouterr().out)] == ["vangogh"]
    assert cli.main(["list", "--family", "miniature", "--json"]) == 0
    assert [d["name"] for d in json.loads(capsys.readouterr().out)] == [
        "miniature/star", "miniature/red", "miniature/stripes"]
    assert cli.main(["list", "--family", "no-such-family"]) == 0
    assert "No prebuilt encoders match" in capsys.readouterr().out


def test_info(capsys):
    assert cli.main(["info", "Garbage-Truck"]) == 0
    out = capsys.readouterr().out
    assert "garbage_truck_unlearned" in out and "OPTML-Group/AdvUnlearn" in out
    assert "robust-encoders pull garbage_truck" in out
    assert 'hf download OPTML-Group/AdvUnlearn --include "garbage_truck_unlearned/*"' in out
    assert "apply_robust_encoder(pipe, 'garbage_truck')" in out
    assert cli.main(["info", "nudity", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["subfolder"] == "nudity_unlearned" and data["cached_at"] is None


def test_info_unknown_name_is_a_clean_error(capsys):
    assert cli.main(["info", "nuditty"]) == 1
    captured = capsys.readouterr()
    assert "Did you mean 'nudity'?" in captured.err
    assert "Traceback" not in captured.err


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 0
    assert "Examples:" in capsys.readouterr().out


def test_every_command_has_examples_in_its_help():
    parser = cli.build_parser()
    assert "Examples:" in (parser.epilog or "")
    commands = _subparsers(parser)
    assert {"list", "info"} <= set(commands)
    for name, sub in commands.items():
        if sub.get_default("_broken"):
            continue  # a contributed module that failed to import: its help explains that instead
        assert "examples:" in (sub.epilog or "").lower(), f"`robust-encoders {name} --help` has no examples"
        assert f"robust-encoders {name}" in sub.epilog, f"examples of {name} do not show the command"


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "list" in out and "info" in out
    with pytest.raises(SystemExit) as info:
        cli.main(["info", "--help"])
    assert info.value.code == 0 and "robust-encoders info nudity" in capsys.readouterr().out


def test_version(capsys):
    from robust_encoders import __version__

    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert __version__ in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ registration
@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on sys.path where tests write contributed command modules."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("re_test_")]:
        del sys.modules[name]


def test_registered_module_adds_a_command(plugin_dir, capsys):
    (plugin_dir / "re_test_hello.py").write_text(textwrap.dedent("""
        from robust_encoders.cli import add_command

        def add_parser(subparsers):
            p = add_command(subparsers, "hello", help="say hello",
                            examples=["robust-encoders hello world"])
            p.add_argument("who")
            p.set_defaults(func=lambda args: print(f"hello {args.who}") or 3)
            return p
    """))
    parser = cli.build_parser(extra=[("hello", "re_test_hello")])
    args = parser.parse_args(["hello", "world"])
    assert args.func(args) == 3
    assert "hello world" in capsys.readouterr().out
    assert "robust-encoders hello world" in _subparsers(parser)["hello"].epilog


def test_custom_function_name(plugin_dir):
    (plugin_dir / "re_test_multi.py").write_text(textwrap.dedent("""
        from robust_encoders.cli import add_command

        def add_push_parser(subparsers):
            p = add_command(subparsers, "push", help="push", examples=["robust-encoders push runs/x org/x"])
            p.set_defaults(func=lambda args: 0)
            return p
    """))
    parser = cli.build_parser(extra=[("push2", "re_test_multi:add_push_parser")])
    assert "push" in _subparsers(parser)


def test_missing_module_is_simply_not_offered():
    parser = cli.build_parser(extra=[("ghost", "re_test_no_such_module"), ("ghost2", "re_test_no_pkg.sub.cli")])
    assert not {"ghost", "ghost2"} & set(_subparsers(parser))


def test_broken_module_is_listed_and_explains(plugin_dir, capsys):
    (plugin_dir / "re_test_broken.py").write_text("import re_test_dependency_that_is_missing\n")
    parser = cli.build_parser(extra=[("broken", "re_test_broken")])
    sub = _subparsers(parser)["broken"]
    assert "unavailable" in parser.format_help()
    args = parser.parse_args(["broken"])
    assert args.func(args) == 1
    assert "re_test_dependency_that_is_missing" in capsys.readouterr().err
    assert sub.get_default("_broken")


def test_add_command_requires_examples():
    sub = argparse.ArgumentParser().add_subparsers()
    with pytest.raises(ValueError, match="example"):
        cli.add_command(sub, "x", help="x", examples=[])


def test_subcommand_table_shape():
    names = [name for name, _ in cli.SUBCOMMANDS]
    assert {"train", "evaluate", "attack", "export", "push", "pull", "miniature"} <= set(names)
    assert len(names) == len(set(names))
    for _, target in cli.SUBCOMMANDS:
        assert target.startswith("robust_encoders.")


# ------------------------------------------------------------------------------------------------ entry points
def test_console_script_and_python_m():
    exe = shutil.which("robust-encoders")
    runs = [[sys.executable, "-m", "robust_encoders", "list"]]
    if exe:
        runs.append([exe, "list"])
    for cmd in runs:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "garbage_truck" in result.stdout


def test_builtin_commands_do_not_import_torch():
    code = ("import sys; from robust_encoders.cli import main; main(['list']); main(['info', 'nudity']); "
            "assert 'torch' not in sys.modules, 'list/info imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, capture_output=True)
