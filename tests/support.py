"""Helpers shared by tests: Debian programs a test needs, free loopback ports."""

from __future__ import annotations

import os
import shutil
import socket

import pytest


def require_program(program: str, package: str) -> str:
    """The path of `program`, or skip the test naming the Debian package to install.
    Under CI=true a missing program fails the test instead: CI must run everything."""
    path = shutil.which(program)
    if path:
        return path
    message = f"needs {program} from the Debian package {package}: apt-get install {package}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
