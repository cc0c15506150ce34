"""The export / push / pull / convert sub-commands: parsers, help, exit codes, error messages."""

from __future__ import annotations

import argparse
import json

import pytest

from hub_runs import EVAL_RESULTS, digest_tree, make_run
from robust_encoders.hub import cli

COMMANDS = ("export", "push", "pull", "convert")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="robust-encoders")
    sub = p.add_subparsers(dest="command")
    cli.register(sub)
    return p


def run(*argv: str) -> int:
    args = parser().parse_args(list(argv))
    return args.func(args)


def test_register_adds_four_documented_commands():
    p = parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMANDS)
    for name in COMMANDS:
        command = sub.choices[name]
        assert command.epilog.startswith("Examples:") and f"robust-encoders {name} " in command.epilog
        assert callable(command.get_default("func"))
    # one-parser-per-function form, for robust_encoders.cli.SUBCOMMANDS
    single = argparse.ArgumentParser().add_subparsers()
    assert cli.add_push_parser(single).prog.endswith("push")


def test_export_then_dry_run_push(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    run_dir = make_run(tmp_path / "run", eval_results=EVAL_RESULTS)
    out = tmp_path / "export"
    assert run("export", str(run_dir), "--out", str(out), "--repo-id", "alice/church-robust", "--license", "mit") == 0
    printed = capsys.readouterr().out
    assert "README.md" in printed and "robust-encoders push" in printed
    assert json.loads((out / "robust_encoder.json").read_text())["license"] == "mit"

    before = digest_tree(out)
    assert run("push", str(out), "--repo-id", "alice/church-robust", "--dry-run",
               "--endpoint", "http://127.0.0.1:9") == 0  # port 9 (discard): nothing may be sent anyway
    printed = capsys.readouterr().out
    assert "dry run: nothing was sent" in printed and "model.safetensors" in printed
    assert digest_tree(out) == before


def test_errors_print_one_message_and_exit_1(tmp_path, capsys):
    assert run("export", str(tmp_path), "--out", str(tmp_path / "o")) == 1
    err = capsys.readouterr().err
    assert err.startswith("robust-encoders export: error:") and "robust_encoder.json is missing" in err

    assert run("push", str(tmp_path), "--repo-id", "not a repo id") == 1
    assert "does not look like an exported encoder" in capsys.readouterr().err

    assert run("convert", str(tmp_path / "nothing.bin"), "--out", str(tmp_path / "c")) == 1
    assert "no such file or folder" in capsys.readouterr().err

    assert run("pull", "nuditty") == 1
    assert "Did you mean 'nudity'" in capsys.readouterr().err


def test_push_rejects_contradictory_options(tmp_path, capsys):
    out = tmp_path / "export"
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert run("push", str(out), "--repo-id", "alice/x", "--create-pr", "--revision", "dev", "--dry-run") == 1
    assert "pull request against the default branch" in capsys.readouterr().err


@pytest.mark.parametrize("name", COMMANDS)
def test_help_mentions_examples(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args([name, "--help"])
    assert exit_info.value.code == 0
    assert "Examples:" in capsys.readouterr().out


def test_plugs_into_the_main_cli_and_imports_cheaply():
    import subprocess
    import sys

    from robust_encoders import cli as main_cli

    main = main_cli.build_parser(extra=[("convert", "robust_encoders.hub.cli:add_convert_parser")])
    sub = next(a for a in main._actions if isinstance(a, argparse._SubParsersAction))
    assert "convert" in sub.choices and not sub.choices["convert"].get_default("_broken")
    code = "import sys, robust_encoders.hub.cli; sys.exit(int('torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0  # --help stays instant
