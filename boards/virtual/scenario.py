"""Run a Wokwi automation scenario (the YAML that `wokwi-cli --scenario` runs) on the virtual
board, so the same files run in CI here and on Wokwi.

    python -m boards.virtual.scenario boards/car boards/car/low_battery.test.yaml
    python -m boards.virtual.scenario boards/station s.yaml --file config.json=my.json -v

Format (wokwi-cli's): `name`, `version: 1`, optional `author`, and `steps`, each a mapping
with one command and an optional `name`:

    delay: 500ms                 units required: ns, us, ms, s
    wait-serial: "text"          a serial line containing text
    write-serial: "text"         (or a list of byte values) to the board's serial input
    set-control: {part-id: pot1, control: position, value: 0.2}
                                 pushbutton `pressed` 0/1, potentiometer `position` 0..1,
                                 slide switch `position` 0/1
    expect-pin: {part-id: led1, pin: A, value: 1}     the pin's level now (0/1)
    wait-pin: {part-id: esp, pin: 2, value: 1}        wait for it (newer wokwi-cli)

As on Wokwi, wait-serial only sees lines printed after the previous delay step (the
simulator drops serial output while no wait-serial is pending); there is no per-step
timeout, the whole run has one (--timeout, 30 s like wokwi-cli's default). Time is wall
time here, simulated time on Wokwi. take-screenshot is skipped. Exit status: 0 passed,
1 a step failed (named on stderr), 2 the scenario or the board could not be set up.
"""
from __future__ import annotations

import argparse
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .board import VirtualBoard
from .diagram import DiagramError
from .errors import BoardError
from .flash import cli_flash_files

COMMANDS = ("delay", "wait-serial", "write-serial", "set-control", "expect-pin", "wait-pin",
            "take-screenshot")
_TIME = re.compile(r"^(\d+(\.\d*)?)\s*(ns|us|ms|s)$|^0(\.?0*)$", re.IGNORECASE)


class ScenarioError(Exception):
    """The scenario file is not a valid scenario."""


class StepFailed(Exception):
    pass


def parse_time(text) -> float:
    """Wokwi's duration syntax ("500ms", "1.5s", "0") in seconds; units are required."""
    s = str(text).strip()
    m = _TIME.match(s)
    if not m:
        try:
            float(s)
        except ValueError:
            raise ScenarioError(f"invalid time: {text!r}") from None
        raise ScenarioError(f"missing units: {text!r} (e.g. 500ms)")
    if m.group(1) is None:
        return 0.0
    return float(m.group(1)) * {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(3).lower()]


def load(source) -> dict:
    """A scenario from a path or an already parsed mapping, validated like wokwi-cli does."""
    if isinstance(source, (str, Path)):
        import yaml
        try:
            data = yaml.safe_load(Path(source).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ScenarioError(f"{source}: {e}") from e
    else:
        data = source
    if not isinstance(data, dict):
        raise ScenarioError("a scenario is a mapping with name, version and steps")
    if not isinstance(data.get("name"), str):
        raise ScenarioError("scenario name is missing or not a string")
    if data.get("version") != 1:
        raise ScenarioError(f"unsupported scenario version: {data.get('version')!r}")
    steps = data.get("steps")
    if not isinstance(steps, list):
        raise ScenarioError("scenario steps must be a list")
    for i, step in enumerate(steps, 1):
        if not isinstance(step, dict):
            raise ScenarioError(f"step {i} must be a mapping")
        cmds = [k for k in step if k != "name"]
        bad = [k for k in cmds if k not in COMMANDS]
        if bad:
            raise ScenarioError(f"step {i}: invalid step key {bad[0]!r}")
        if len(cmds) != 1:
            raise ScenarioError(f"step {i}: needs exactly one command, has {cmds}")
        if cmds[0] == "delay":
            parse_time(step["delay"])
    return data


@dataclass
class Result:
    name: str
    passed: bool
    steps_run: int
    failed_step: int | None = None  # 1-based
    message: str = ""
    log: list[str] = field(default_factory=list)

    def __bool__(self):
        return self.passed


def _describe(step: dict) -> str:
    cmd = next(k for k in step if k != "name")
    label = f" ({step['name']})" if "name" in step else ""
    return f"{cmd}: {step[cmd]!r}{label}"


def run(board: VirtualBoard, scenario, *, timeout: float = 30.0, log=None) -> Result:
    """Run a scenario (path or mapping) on a started board. Never raises for a failing step:
    the Result says which one failed and why."""
    sc = load(scenario)
    res = Result(sc["name"], False, 0)

    def say(msg):
        res.log.append(msg)
        if log:
            log(f"[{sc['name']}] {msg}")

    deadline = time.monotonic() + timeout
    cursor = 0  # serial lines before this index are not seen by wait-serial
    for i, step in enumerate(sc["steps"], 1):
        cmd = next(k for k in step if k != "name")
        arg = step[cmd]
        say(f"step {i}: {_describe(step)}")
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise StepFailed(f"scenario timeout ({timeout} s) reached")
            if cmd == "delay":
                secs = parse_time(arg)
                if secs > left:
                    time.sleep(left)
                    raise StepFailed(f"scenario timeout ({timeout} s) reached")
                time.sleep(secs)
                cursor = board.mark()
            elif cmd == "wait-serial":
                try:
                    board.wait_serial(str(arg), timeout=left, since=cursor, partial=False)
                except TimeoutError:
                    raise StepFailed(f"serial text {arg!r} not seen within the scenario's "
                                     f"{timeout} s") from None
                cursor = board.cursor
            elif cmd == "write-serial":
                if isinstance(arg, list):
                    board.write_serial(bytes(arg))
                else:
                    board.write_serial(str(arg))
            elif cmd == "set-control":
                board.set_control(_get(arg, "part-id"), _get(arg, "control"), _get(arg, "value"))
            elif cmd == "expect-pin":
                part, pin, want = _get(arg, "part-id"), str(_get(arg, "pin")), _get(arg, "value")
                got = board.part_pin(part, pin)
                if got != want:
                    raise StepFailed(f"pin {part}:{pin} expected to be {want} but was {got}")
            elif cmd == "wait-pin":
                part, pin, want = _get(arg, "part-id"), str(_get(arg, "pin")), _get(arg, "value")
                try:
                    board.wait_until(lambda p=part, n=pin, w=want: board.part_pin(p, n) == w, left,
                                     f"pin {part}:{pin} = {want}")
                except TimeoutError:
                    raise StepFailed(f"pin {part}:{pin} did not become {want} within the "
                                     f"scenario's {timeout} s") from None
            elif cmd == "take-screenshot":
                say("take-screenshot: skipped (no screen on the virtual board)")
        except StepFailed as e:
            res.failed_step, res.message, res.steps_run = i, f"step {i} ({_describe(step)}): {e}", i
            say(f"FAILED {res.message}")
            return res
        except (DiagramError, BoardError, KeyError, TypeError, ValueError) as e:
            res.failed_step, res.steps_run = i, i
            res.message = f"step {i} ({_describe(step)}): {e}"
            say(f"FAILED {res.message}")
            return res
        res.steps_run = i
    res.passed = True
    say("scenario completed successfully")
    return res


def _get(arg, key):
    if not isinstance(arg, dict) or key not in arg:
        raise KeyError(f"missing {key!r}")
    return arg[key]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m boards.virtual.scenario",
                                 description="Run a Wokwi automation scenario on the virtual board.")
    ap.add_argument("board_dir", help="directory with diagram.json (e.g. boards/car)")
    ap.add_argument("scenario", help="scenario YAML file")
    ap.add_argument("--file", action="append", default=[], metavar="DEST=SRC",
                    help="put host file/dir SRC at DEST in the flash (after the defaults)")
    ap.add_argument("--flash", help="use this directory as the flash instead of the defaults")
    ap.add_argument("--timeout", type=float, default=30.0, help="whole run, seconds (30)")
    ap.add_argument("--heapsize", default="96k")
    ap.add_argument("--serial-log", help="write the board's serial output here")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the serial output too")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the board on kill too

    board_dir = Path(args.board_dir)
    try:
        files = cli_flash_files(board_dir, args.flash, args.file)
    except ValueError as e:
        ap.error(str(e))
    try:
        sc = load(args.scenario)
    except ScenarioError as e:
        print(f"scenario: {e}", file=sys.stderr)
        return 2
    board = None
    try:
        board = VirtualBoard(board_dir, files, flash_dir=args.flash, heapsize=args.heapsize,
                             name=board_dir.resolve().name)
        board.start()
        res = run(board, sc, timeout=args.timeout, log=print)
    except (BoardError, DiagramError, OSError) as e:
        print(f"scenario: cannot run the board: {e}", file=sys.stderr)
        return 2
    finally:
        if board is not None:
            text = board.serial_text()
            board.stop()
            if args.serial_log:
                Path(args.serial_log).write_text(text)
            if args.verbose:
                print("---- serial ----\n" + text.rstrip() + "\n----------------")
    if not res.passed:
        print(f"scenario {sc['name']!r} FAILED at {res.message}", file=sys.stderr)
        tail = "\n".join(text.splitlines()[-15:])
        print(f"last serial output:\n{tail}", file=sys.stderr)
        return 1
    print(f"scenario {sc['name']!r} passed ({res.steps_run} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
