"""The `metertwin` console script as a user meets it: every command's --help explains it
with an example, and a user's mistake is one line on stderr with exit status 2."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from control.cli import main

MALL = str(Path(__file__).resolve().parents[2] / "scenarios" / "mall.toml")
COMMANDS = ["simulate", "run", "bill", "keys", "users", "emulate", "export", "evaluate",
            "keys create", "keys list", "keys revoke", "users add", "users list"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_has_an_example(command, capsys):
    """Each command's --help exits 0 with a description and at least one example line."""
    with pytest.raises(SystemExit) as stop:
        main([*command.split(), "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "example" in text and f"metertwin {command.split()[0]} " in text.split("example", 1)[1]


def test_run_help_names_the_dashboard_and_opcua_sources(capsys):
    """`run --help` says where the dashboard is and that [[opcua]] and [[modbus]] tables
    bring real devices in."""
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "dashboard" in text and "[[opcua]]" in text and "[[modbus]]" in text
    assert max(len(line) for line in text.splitlines()[:12]) <= 100  # the description is wrapped


@pytest.mark.parametrize("argv", [["simulate", "x.toml", "--start", "yesterday"], ["simulate", "x.toml", "--days", "0"],
                                  ["run", "--port", "eighty"], ["bill", "x.toml"], ["frobnicate"]])
def test_a_usage_mistake_is_one_line(argv, capsys):
    """A bad option value, a missing argument or an unknown command: one line naming it and
    pointing at --help, exit status 2."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "error:" in err and "--help" in err


def test_run_on_a_port_in_use_says_so_before_building_anything(tmp_path, capsys):
    """`run` on an HTTP port another program holds stops at once: one line naming the port
    and the option to change, exit 2, no traceback, no data directory made."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code = main(["run", "--data", str(tmp_path / "data"), "--port", str(port), "--no-opcua", "--no-modbus"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"127.0.0.1:{port}" in err and "--port" in err and "in use" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_run_refuses_the_same_port_for_http_and_opcua(tmp_path, capsys):
    """--opcua-port equal to --port is a mistake named before anything starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["run", "--data", str(tmp_path / "data"), "--port", str(port), "--opcua-port", str(port)]) == 2
    assert "--opcua-port" in capsys.readouterr().err


def test_help_text_has_no_stray_format_marks(capsys):
    """A description is printed as written: no doubled percent signs (only help strings are
    %-formatted by argparse)."""
    for command in ("evaluate", "export", "emulate", "simulate", "run", "bill"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "%%" not in capsys.readouterr().out, command


def test_emulate_on_a_port_in_use_says_so(capsys):
    """`emulate` whose gateway port another program holds: one line naming the port and
    --modbus-port, exit 2, before the world is built."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code = main(["emulate", MALL, "--modbus-port", str(port)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"127.0.0.1:{port}" in err and "--modbus-port" in err and "building the world" not in err
    assert len(err.strip().splitlines()) == 1


def test_run_refuses_a_data_directory_another_run_holds(tmp_path, capsys):
    """Two platforms on one data directory would write one ledger twice: the second `run`
    names the directory and the holder's pid, exit 2."""
    import os

    from control.cli import lock_data_dir

    held = lock_data_dir(str(tmp_path / "data"))
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        code = main(["run", "--data", str(tmp_path / "data"), "--port", str(port), "--no-opcua", "--no-modbus"])
    finally:
        held.close()
    err = capsys.readouterr().err
    assert code == 2 and "in use by another metertwin run" in err and f"pid {os.getpid()}" in err
    assert len(err.strip().splitlines()) == 1
