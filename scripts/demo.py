"""`make demo`: the whole loop on the embedded base, step by step, resumable.

Each step is a CLI call (the same commands a user runs); finished steps are recorded in
.lorafleet/demo/state.json and skipped on a rerun.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STATE = REPO / ".lorafleet" / "demo" / "state.json"
console = Console()


def lorafleet(*args: str, capture: bool = False) -> str:
    cmd = [str(BIN / "lorafleet"), *args]
    console.print(f"[dim]$ lorafleet {' '.join(args)}[/]")
    result = subprocess.run(cmd, cwd=REPO, text=True, capture_output=capture)
    if result.returncode != 0:
        if capture:
            sys.stderr.write(result.stderr)
        raise SystemExit(f"demo: `lorafleet {' '.join(args)}` failed (exit {result.returncode})")
    return result.stdout if capture else ""


def step_prepare_base() -> None:
    lorafleet("base", "prepare")
    lorafleet("base", "info")


STEPS = [
    ("prepare the embedded base model", step_prepare_base),
]


def load_state() -> dict[str, float]:
    return json.loads(STATE.read_text()) if STATE.exists() else {}


def save_state(state: dict[str, float]) -> None:
    STATE.parent.mkdir(parents=True, exist_ok=True)
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(STATE)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fresh", action="store_true", help="Forget finished steps.")
    parser.add_argument("--stop", action="store_true", help="Stop background services.")
    args = parser.parse_args()
    if args.stop:
        return
    state = {} if args.fresh else load_state()
    for i, (title, fn) in enumerate(STEPS, start=1):
        console.print(Rule(f"[bold]{i}/{len(STEPS)} {title}"))
        if title in state:
            console.print(f"[green]✓ done before[/] ({state[title]:.0f} s) — skipped")
            continue
        start = time.monotonic()
        fn()
        state[title] = time.monotonic() - start
        save_state(state)
    console.print(Rule("[bold]the base model answers"))
    lorafleet("base", "generate", "What is the capital of France?")


if __name__ == "__main__":
    main()
