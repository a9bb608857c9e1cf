"""Run the `ragtune` entry point (`ragtune.cli.main`) in this process, as a user runs the command:
its exit code (2 for bad input, with the message on stderr) and output, without a subprocess's start-up."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ragtune.cli import main


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def run_ragtune(args: list[str | Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Result:
    monkeypatch.setattr(sys, "argv", ["ragtune", *map(str, args)])
    capsys.readouterr()  # what came before is not this command's output
    with pytest.raises(SystemExit) as exited:
        main()
    output = capsys.readouterr()
    code = exited.value.code
    return Result(code if isinstance(code, int) else 1, output.out, output.err)
