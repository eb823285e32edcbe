"""Mosquitto configuration for a region's gateway broker: conf, password file and ACL.

The conf comes from deploy/mosquitto/recarga-gateway.conf.template (string.Template; shipped
with the package); the ACL is built only from recarga/core/protocol/access.py (acl_gateway, acl_car,
acl_station), so the topic tree has one home; passwords are hashed by Mosquitto's own
`mosquitto_passwd`.

    python -m recarga.core.broker_config --region berlin --dir /etc/mosquitto/recarga \\
        --tls-cafile /etc/recarga/tls/ca.crt --tls-certfile /etc/recarga/tls/berlin-broker.crt \\
        --tls-keyfile /etc/recarga/tls/berlin-broker.key \\
        --gateway-user gateway --gateway-password-file pw.txt \\
        --car car-1:secret --station st-1:secret --dropin

Devices connect to the TLS listener (0.0.0.0:8883); plain TCP listens on 127.0.0.1:1883
only (the gateway on this machine, development).

docs/deployment.md explains how the result is used with Debian's mosquitto service.

The conf, password file and ACL writers here serve the central broker too
(recarga.core.central_broker); the directory's file names and reading them back live in
recarga.core.broker_dir, the bridge section to central in recarga.core.bridge.
"""
from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from recarga.core import resources
from recarga.core.bridge import BridgeSettings, render_bridge
from recarga.core.broker_dir import (
    ACCESS,
    ACL_NAME,
    CONF_NAME,
    LOG_NAME,
    PASSWD_NAME,
    PERSISTENCE_NAME,
    BrokerConfigError,
    KeptDevices,
    check_line,
    check_user,
    provisioned_devices,
)
from recarga.core.config_file import is_loopback
from recarga.core.protocol import access as ACL
from recarga.core.protocol import device as D

TEMPLATE = resources.DEPLOY / "mosquitto" / "recarga-gateway.conf.template"

# Debian's /etc/mosquitto/mosquitto.conf sets these itself; a conf.d drop-in must not repeat them.
DEBIAN_PERSISTENCE = "/var/lib/mosquitto/"
DEBIAN_LOG = "/var/log/mosquitto/mosquitto.log"
_MAIN_CONF_PREFIX = "#[main conf] "

DEFAULT_MAX_PACKET_SIZE = 65536
TLS_PORT = 8883


@dataclass(frozen=True)
class TlsListener:
    """A broker's TLS listener: its certificate and key, and the CA that signed them (the
    file its clients trust), as made by recarga.core.certs or supplied by the operator."""

    cafile: str | Path
    certfile: str | Path
    keyfile: str | Path
    port: int = TLS_PORT
    host: str = "0.0.0.0"


def _listeners(port: int | None, host: str, tls: TlsListener | None) -> str:
    """The conf's listener lines: the TLS listener first (the one devices are given), then
    plain TCP if `port` is set."""
    lines = []
    if tls is not None:
        if not 0 < tls.port < 65536:
            raise BrokerConfigError(f"TLS port {tls.port} outside 1..65535")
        if tls.port == port:
            raise BrokerConfigError(f"the TLS listener and the plain one both on port {port}")
        for what in ("cafile", "certfile", "keyfile"):
            if not Path(getattr(tls, what)).is_file():
                raise BrokerConfigError(f"TLS {what} {getattr(tls, what)} not found")
        lines += [f"listener {tls.port} {check_line('TLS host', tls.host)}",
                  "protocol mqtt",
                  f"cafile {check_line('cafile', str(Path(tls.cafile).resolve()))}",
                  f"certfile {check_line('certfile', str(Path(tls.certfile).resolve()))}",
                  f"keyfile {check_line('keyfile', str(Path(tls.keyfile).resolve()))}",
                  "tls_version tlsv1.2"]
    if port is not None:
        if not 0 < port < 65536:
            raise BrokerConfigError(f"port {port} outside 1..65535")
        lines += [f"listener {port} {check_line('host', host)}", "protocol mqtt"]
    if not lines:
        raise BrokerConfigError("no listener: give a plain port, a TLS listener or both")
    return "\n".join(lines)


def check_plain_host(host: str, what: str = "--host") -> str:
    """Plain MQTT only on loopback: elsewhere passwords would cross the network in clear text."""
    if not is_loopback(host):
        raise BrokerConfigError(f"{what} {host!r}: plain MQTT only on a loopback address; devices and "
                                "other machines connect over TLS (docs/deployment.md)")
    return host


def write_password_file(path: str | Path, users: Mapping[str, str], *,
                        mosquitto_passwd: str = "mosquitto_passwd",
                        hashed: Mapping[str, str] | None = None) -> Path:
    """Write a Mosquitto password file holding `users` (name -> plain password), hashed,
    and the lines of `hashed` (name -> its line from a password file) as they are.

    Writes `name:password` lines to a temporary file (mode 0600) and hashes them all with one
    `mosquitto_passwd -U`, so a thousand devices take a fraction of a second and no password
    appears on a command line. A password holding ':' (which `-U` would cut there) is added
    afterwards with `mosquitto_passwd -b`, which puts it on the command line of a short-lived
    local process. The temporary file replaces `path` only when all succeeded; the result is
    mode 0640.
    """
    path = Path(path)
    for name, password in users.items():
        check_user(name)
        check_line(f"password of {name!r}", password)
    tool = shutil.which(mosquitto_passwd)
    if tool is None:
        raise BrokerConfigError(
            f"{mosquitto_passwd!r} not found on PATH; it comes with Debian's 'mosquitto' package "
            "(scripts/setup installs it)")
    batch = {n: p for n, p in users.items() if ":" not in p}
    single = {n: p for n, p in users.items() if ":" in p}
    tmp = path.with_name(path.name + ".tmp")
    backup = tmp.with_name(tmp.name + ".tmp")  # `mosquitto_passwd -U` copies the input there
    for f in (tmp, backup):
        f.unlink(missing_ok=True)

    def run(args: list[str], what: str) -> None:
        proc = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            out = (proc.stderr + proc.stdout).strip()
            raise BrokerConfigError(f"mosquitto_passwd failed for {what} (exit {proc.returncode}): {out}")

    try:
        # Plain passwords sit in these two files until they are hashed: owner-only from birth
        # (mosquitto_passwd truncates an existing backup file, which keeps its mode).
        for f in (tmp, backup):
            os.close(os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        if batch:
            with open(tmp, "w") as f:
                f.writelines(f"{name}:{password}\n" for name, password in batch.items())
            names = ", ".join(repr(n) for n in list(batch)[:3]) + (", ..." if len(batch) > 3 else "")
            run(["-U", str(tmp)], f"user {names}" if len(batch) == 1 else f"users {names}")
        with open(tmp, "a") as f:  # after -U, which would hash the hashes again
            f.writelines(f"{line}\n" for name, line in (hashed or {}).items() if name not in users)
        for name, password in single.items():
            run(["-b", str(tmp), name, password], f"user {name!r}")
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        backup.unlink(missing_ok=True)
    return path

def render_user_block(comment: str, user: str, rules: Sequence[tuple[str, str]]) -> list[str]:
    """One user's ACL block: `# comment`, `user NAME`, its `topic ACCESS TOPIC` lines, a blank line."""
    lines = [f"# {comment}", f"user {check_user(user)}"]
    for access, topic in rules:
        if access not in ACCESS:
            raise BrokerConfigError(f"access {access!r} for user {user!r} is not one of {ACCESS}")
        lines.append(f"topic {access} {check_line('topic', topic)}")
    return lines + [""]


def render_acl(region: str, gateway_user: str, cars: Sequence[str], stations: Sequence[str],
               extra_users: Mapping[str, Sequence[tuple[str, str]]] | None = None,
               central: bool = False) -> str:
    """The ACL file: one explicit `user NAME` block per client, topics from recarga.core.protocol.access.

    Car ids and station ids are the broker user names. Nothing stands before the first
    `user` line, so no topic is open to every client, and no `%u` pattern is used.
    `extra_users` maps further user names to (access, topic) pairs (e.g. a monitoring user).
    central=True also gives the gateway its region's central subtree (overflow over a bridge).
    """
    extra_users = extra_users or {}
    names = [gateway_user, *cars, *stations, *extra_users]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BrokerConfigError(f"user names used twice (gateway, car, station, extra): {dupes}")
    lines = [
        f"# Mosquitto ACL of the Recarga gateway broker for region {region!r}.",
        "# Generated by recarga.core.broker_config from recarga/core/protocol/access.py; do not edit.",
        "# A topic no line grants is denied.",
        "",
    ]
    gateway_rules = ACL.acl_gateway(region) + (ACL.acl_gateway_central(region) if central else [])
    lines += render_user_block("gateway", gateway_user, gateway_rules)
    for cid in cars:
        lines += render_user_block(f"car {cid}", cid, ACL.acl_car(region, cid))
    for sid in stations:
        lines += render_user_block(f"station {sid}", sid, ACL.acl_station(region, sid))
    for name, rules in extra_users.items():
        lines += render_user_block(f"extra user {name}", name, rules)
    return "\n".join(lines)


def render_conf(region: str, *, password_file: str | Path, acl_file: str | Path,
                port: int | None = 1883, host: str = "127.0.0.1", tls: TlsListener | None = None,
                persistence_location: str | Path = DEBIAN_PERSISTENCE,
                log_file: str | Path | None = None, run_as: str = "mosquitto",
                dropin: bool = False, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
                template: str | Path = TEMPLATE) -> str:
    """The broker's mosquitto.conf text, from the template.

    log_file None logs to stdout (journald under systemd). run_as is the account a broker
    started as root switches to (without effect when started by another user). With
    dropin=True the result is a conf.d drop-in for Debian's /etc/mosquitto/mosquitto.conf:
    user, persistence and log_dest are left to the main file (commented out here).
    `port` None: no plain listener; `tls`: a TLS listener (listed first).
    """
    D.region_root(region)  # validates the region id
    listeners = _listeners(port, host, tls)
    location = str(persistence_location)
    if not location.endswith("/"):
        location += "/"  # as Debian writes it; Mosquitto 1.x appended "mosquitto.db" directly
    values = {
        "region": region,
        "mode": "conf.d drop-in for Debian's mosquitto.conf" if dropin else "standalone",
        "standalone": _MAIN_CONF_PREFIX if dropin else "",
        "run_as": check_user(run_as),
        "host": check_line("host", host),
        "port": str(port),
        "listeners": listeners,
        "password_file": check_line("password_file", str(password_file)),
        "acl_file": check_line("acl_file", str(acl_file)),
        "persistence_location": check_line("persistence_location", location),
        "log_dest": "stdout" if log_file is None else "file " + check_line("log file", str(log_file)),
        "max_packet_size": str(int(max_packet_size)),
    }
    try:
        text = Path(template).read_text()
    except FileNotFoundError:
        raise BrokerConfigError(f"template {template} not found: pass the template's path") from None
    try:
        return Template(text).substitute(values)
    except (KeyError, ValueError) as e:
        raise BrokerConfigError(f"template {template}: bad or unknown placeholder {e}") from None


def write_broker_dir(dir: str | Path, region: str, port: int | None, users: Mapping[str, str],
                     cars: Sequence[str], stations: Sequence[str], gateway_user: str,
                     host: str = "127.0.0.1", *, run_as: str = "mosquitto", log_stdout: bool = False,
                     dropin: bool = False,
                     extra_acl: Mapping[str, Sequence[tuple[str, str]]] | None = None,
                     max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
                     template: str | Path = TEMPLATE, bridge: BridgeSettings | None = None,
                     tls: TlsListener | None = None, keep_devices: bool = True) -> Path:
    """Write conf, password file, ACL and (standalone) persistence dir into `dir`.

    With keep_devices (the default) the cars and stations `dir` already holds (added by
    `recarga-device provision` or an earlier run; provisioned_devices) stay, with their
    passwords; a device given again in `cars`/`stations` gets the password now given.

    `port` and `host` are the plain TCP listener (None: none), `tls` the TLS listener.

    With `bridge`, the conf ends with the bridge to central (render_bridge; the conf then
    holds the bridge's password and is mode 0640 like the other secrets) and the gateway
    user may use the region's central subtree.

    `users` maps every user name (gateway, cars, stations, extra users) to its password.
    Returns the path of the conf (`dir/recarga-gateway.conf`); start it with
    `mosquitto -c <conf>`. Standalone, the broker keeps its database in `dir/persistence/`
    and logs to `dir/mosquitto.log` (or stdout with log_stdout=True). As a drop-in
    (dropin=True) those come from Debian's main conf.
    """
    needed = [gateway_user, *cars, *stations, *(extra_acl or {})]
    missing = [n for n in needed if n not in users]
    if missing:
        raise BrokerConfigError(f"no password given for {missing}")
    d = Path(dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    kept = provisioned_devices(d, region, skip=needed) if keep_devices else KeptDevices()
    cars, stations = [*cars, *kept.cars], [*stations, *kept.stations]
    acl = render_acl(region, gateway_user, cars, stations, extra_acl, central=bridge is not None)
    persistence, log_file = state_paths(d, dropin, log_stdout)
    conf = render_conf(region, password_file=d / PASSWD_NAME, acl_file=d / ACL_NAME, port=port,
                       host=host, tls=tls, persistence_location=persistence, log_file=log_file,
                       run_as=run_as, dropin=dropin, max_packet_size=max_packet_size,
                       template=template)
    if bridge is not None:
        conf += "\n" + render_bridge(region, bridge)
    return write_dir(d, conf, CONF_NAME, acl, users, run_as, dropin=dropin, log_file=log_file,
                     secret_conf=bridge is not None, hashed=kept.passwd)


def state_paths(d: Path, dropin: bool, log_stdout: bool) -> tuple[str | Path, str | Path | None]:
    """Persistence location and log file: Debian's as a drop-in, else inside `d`."""
    if dropin:
        return DEBIAN_PERSISTENCE, DEBIAN_LOG
    persistence = d / PERSISTENCE_NAME
    persistence.mkdir(exist_ok=True)
    return persistence, None if log_stdout else d / LOG_NAME


def write_dir(d: Path, conf: str, conf_name: str, acl: str, users: Mapping[str, str], run_as: str, *,
              dropin: bool, log_file: str | Path | None, secret_conf: bool,
              hashed: Mapping[str, str] | None = None, extra_secrets: Sequence[Path] = ()) -> Path:
    """Write a broker directory's password file, ACL and conf (`conf_name`; mode 0640 with
    secret_conf) and hand them to the account `run_as` (with `extra_secrets`). Returns the
    conf's path."""
    write_password_file(d / PASSWD_NAME, users, hashed=hashed)
    (d / ACL_NAME).write_text(acl)
    os.chmod(d / ACL_NAME, 0o640)
    conf_path = d / conf_name
    if secret_conf:  # a bridge's remote_password: never readable by others, not even briefly
        conf_path.unlink(missing_ok=True)
        os.close(os.open(conf_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
    conf_path.write_text(conf)
    _hand_over(d, run_as, dropin=dropin, log_file=log_file,
               secrets=[*([conf_path] if secret_conf else []), *extra_secrets])
    return conf_path


def _hand_over(d: Path, run_as: str, *, dropin: bool, log_file: str | Path | None,
               secrets: Sequence[Path] = ()) -> None:
    """Let the account the broker switches to read its files and write its state.

    Mosquitto 2.0 opens the password file, the ACL and its log only after it has dropped
    root privileges, so when root generates the directory for another account, that
    account needs the group on the secrets (mode 0640) and owns its persistence and log.
    """
    if os.geteuid() != 0 or run_as == "root":
        return
    try:
        entry = pwd.getpwnam(run_as)
    except KeyError:
        raise BrokerConfigError(f"account {run_as!r} (run_as) does not exist on this machine") from None
    for path in (d / PASSWD_NAME, d / ACL_NAME, *secrets):
        os.chown(path, 0, entry.pw_gid)
    if dropin:
        return
    os.chown(d / PERSISTENCE_NAME, entry.pw_uid, entry.pw_gid)
    if log_file is not None:
        Path(log_file).touch()
        os.chown(log_file, entry.pw_uid, entry.pw_gid)

# ---------------------------------------------------------------- command line

def _credential(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name or not password:
        raise argparse.ArgumentTypeError(f"expected ID:PASSWORD, got {text!r}")
    return name, password


def add_listener_arguments(p: argparse.ArgumentParser) -> None:
    """The listener options this command and `recarga-central broker-config` share."""
    p.add_argument("--port", type=int, default=1883, help="plain TCP listener's port (0: none)")
    p.add_argument("--host", default="127.0.0.1", help="plain TCP listener's address: loopback only")
    p.add_argument("--tls-cafile", type=Path, help="TLS listener: the CA its clients trust (python -m recarga.core.certs)")
    p.add_argument("--tls-certfile", type=Path, help="TLS listener: the broker's certificate")
    p.add_argument("--tls-keyfile", type=Path, help="TLS listener: the broker's key")
    p.add_argument("--tls-port", type=int, default=TLS_PORT)
    p.add_argument("--tls-host", default="0.0.0.0", help="TLS listener's address (default: all interfaces)")


def listeners_from(args: argparse.Namespace) -> tuple[int | None, TlsListener | None]:
    """(plain port or None, TLS listener or None) from add_listener_arguments' options;
    BrokerConfigError for a plain listener off loopback or TLS files given only in part."""
    files = (args.tls_cafile, args.tls_certfile, args.tls_keyfile)
    if any(files) and not all(files):
        raise BrokerConfigError("--tls-cafile, --tls-certfile and --tls-keyfile go together")
    tls = TlsListener(*files, port=args.tls_port, host=args.tls_host) if all(files) else None
    port = args.port or None
    if port is not None:
        check_plain_host(args.host)
    return port, tls


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m recarga.core.broker_config",
        description="Generate the Mosquitto configuration (conf, password file, ACL) of a "
                    "region's gateway broker into one directory and print the conf's path.")
    p.add_argument("--region", required=True, help="region id, e.g. berlin")
    p.add_argument("--dir", required=True, type=Path, help="output directory")
    add_listener_arguments(p)
    p.add_argument("--gateway-user", required=True)
    pw = p.add_mutually_exclusive_group(required=True)
    pw.add_argument("--gateway-password")
    pw.add_argument("--gateway-password-file", type=Path,
                    help="file holding the gateway's password, e.g. the gateway.toml's "
                         "[broker] password_file (keeps it out of `ps`)")
    p.add_argument("--car", action="append", default=[], type=_credential, metavar="ID:PASSWORD")
    p.add_argument("--station", action="append", default=[], type=_credential, metavar="ID:PASSWORD")
    p.add_argument("--forget-devices", action="store_true",
                   help="drop the cars and stations DIR already holds (added by `recarga-device provision` "
                        "or an earlier run); without it they stay, with their passwords")
    p.add_argument("--run-as", default="mosquitto", help="account a root-started broker switches to")
    p.add_argument("--log-stdout", action="store_true", help="log to stdout instead of DIR/mosquitto.log")
    p.add_argument("--template", type=Path, default=TEMPLATE, help=f"default: {TEMPLATE}")
    p.add_argument("--dropin", action="store_true",
                   help="write a conf.d drop-in for Debian's mosquitto.conf (docs/deployment.md)")
    p.add_argument("--bridge-host", help="the central broker: write a bridge to it (docs/central.md)")
    p.add_argument("--bridge-port", type=int, default=TLS_PORT)
    p.add_argument("--bridge-password-file", type=Path,
                   help="file holding this region's bridge password on the central broker")
    p.add_argument("--bridge-cafile", type=Path,
                   help="the CA of central's TLS listener (needed unless --bridge-host is loopback)")
    args = p.parse_args(argv)
    bridge = None
    if args.bridge_host is not None:
        if args.bridge_password_file is None:
            p.error("--bridge-host needs --bridge-password-file")
        if args.bridge_cafile is None and not is_loopback(args.bridge_host):
            p.error(f"--bridge-host {args.bridge_host}: give --bridge-cafile (TLS); plain TCP to central "
                    "only on loopback")
        bridge = BridgeSettings(args.bridge_host, args.bridge_port, args.bridge_password_file.read_text().strip(),
                                cafile=args.bridge_cafile)

    if args.gateway_password_file is not None:
        # read as recarga/gateway/config.py reads [broker] password_file, so one file serves both
        gateway_password = args.gateway_password_file.read_text().strip()
    else:
        gateway_password = args.gateway_password
    users = {args.gateway_user: gateway_password}
    for name, password in [*args.car, *args.station]:
        if name in users:
            p.error(f"user {name!r} given twice")
        users[name] = password
    try:
        port, tls = listeners_from(args)
        conf = write_broker_dir(args.dir, args.region, port, users,
                                [c for c, _ in args.car], [s for s, _ in args.station],
                                args.gateway_user, args.host, run_as=args.run_as,
                                log_stdout=args.log_stdout, dropin=args.dropin,
                                template=args.template, bridge=bridge, tls=tls,
                                keep_devices=not args.forget_devices)
    except (BrokerConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(conf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
