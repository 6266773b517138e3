"""How long ``gradscope --help`` takes, against a bare typer CLI, side by side.

    python bench/help_startup.py              # 7 alternating rounds
    python bench/help_startup.py --rounds 15

Each round runs, in a fresh process each and in turn: ``python -c pass`` (the
interpreter alone), a bare typer app with one command printing its ``--help`` (the
least a typer CLI costs), and ``python -m gradscope --help``.  Medians of the wall times,
and gradscope's ratio against the bare typer app.  The issue-15 target for
``gradscope --help`` is 150 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

BARE_TYPER = """
import typer
app = typer.Typer()
@app.command()
def inspect(model: str) -> None:
    "Inspect a model."
@app.command()
def hessian(model: str) -> None:
    "Curvature."
app()
"""

COMMANDS = {
    "python": [sys.executable, "-c", "pass"],
    "bare typer --help": [sys.executable, "-c", BARE_TYPER, "--help"],
    "gradscope --help": [sys.executable, "-m", "gradscope", "--help"],
}


def _seconds(command: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=REPO)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for command in COMMANDS.values():
        _seconds(command)  # warm the file cache
    for _ in range(rounds):
        for name, command in COMMANDS.items():
            times[name].append(_seconds(command))
    base = statistics.median(times["bare typer --help"])
    print(f"{rounds} alternating rounds, medians (wall, ms)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:20s} {1000 * median:7.1f} ms  x{median / base:.2f} of bare typer")


if __name__ == "__main__":
    main()
