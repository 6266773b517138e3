"""How long ``gradscope --help`` takes, against a bare typer CLI, side by side.

    python bench/help_startup.py              # 7 alternating rounds
    python bench/help_startup.py --rounds 15

Each round runs, in a fresh process each and in turn: ``python -c pass`` (the
interpreter alone), a bare typer app with one command printing its ``--help`` (the
least a typer CLI costs), and ``python -m gradscope --help``, from its help cache
(filled by the untimed warm-up round, in a temporary folder) and with the cache off
(``GRADSCOPE_HELP_CACHE=0``: typer renders it).  Medians of the wall times, and the
ratios against the bare typer app.  The issue-15 target for ``gradscope --help`` is
150 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
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

GRADSCOPE_HELP = [sys.executable, "-m", "gradscope", "--help"]
COMMANDS: dict[str, tuple[list[str], dict[str, str]]] = {
    "python": ([sys.executable, "-c", "pass"], {}),
    "bare typer --help": ([sys.executable, "-c", BARE_TYPER, "--help"], {}),
    "gradscope --help": (GRADSCOPE_HELP, {"GRADSCOPE_HELP_CACHE": "1"}),
    "  (help cache off)": (GRADSCOPE_HELP, {"GRADSCOPE_HELP_CACHE": "0"}),
}


def _seconds(command: list[str], extra_env: dict[str, str], cache: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": cache, **extra_env}
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=REPO)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with tempfile.TemporaryDirectory() as cache:
        for command, env in COMMANDS.values():
            _seconds(command, env, cache)  # warm the file cache; fill the help cache
        for _ in range(rounds):
            for name, (command, env) in COMMANDS.items():
                times[name].append(_seconds(command, env, cache))
    base = statistics.median(times["bare typer --help"])
    print(f"{rounds} alternating rounds, medians (wall, ms)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:20s} {1000 * median:7.1f} ms  x{median / base:.2f} of bare typer")


if __name__ == "__main__":
    main()
