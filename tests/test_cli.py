"""The `klrl` command itself: `--version` names the installed package's version."""

import contextlib
import io
from importlib.metadata import version

import pytest

import klrl
from klrl import cli


def test_version_prints_the_package_version_and_exits_0():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert out.getvalue().strip() == f"klrl {klrl.__version__}" == f"klrl {version('klrl')}"
