"""Mosquitto configuration for a region's gateway broker: conf, password file and ACL.

The conf comes from deploy/mosquitto/recarga-gateway.conf.template (string.Template; shipped
with the package); the ACL is built only from recarga/core/protocol/access.py (acl_gateway, acl_car,
acl_station), so the topic tree has one home; passwords are hashed by Mosquitto's own
`mosquitto_passwd`.

    python -m recarga.core.broker_config --region berlin --dir /etc/mosquitto/recarga \\
        --port 1883 --host 0.0.0.0 --gateway-user gateway --gateway-password-file pw.txt \\
        --car car-1:secret --station st-1:secret --dropin

docs/deployment.md explains how the result is used with Debian's mosquitto service.
"""
from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from recarga.core import resources
from recarga.core.protocol import access as ACL
from recarga.core.protocol import central as PC
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

TEMPLATE = resources.DEPLOY / "mosquitto" / "recarga-gateway.conf.template"

CONF_NAME = "recarga-gateway.conf"
PASSWD_NAME = "passwd"
ACL_NAME = "acl"
PERSISTENCE_NAME = "persistence"
LOG_NAME = "mosquitto.log"

# Debian's /etc/mosquitto/mosquitto.conf sets these itself; a conf.d drop-in must not repeat them.
DEBIAN_PERSISTENCE = "/var/lib/mosquitto/"
DEBIAN_LOG = "/var/log/mosquitto/mosquitto.log"
_MAIN_CONF_PREFIX = "#[main conf] "

ACCESS = ("read", "write", "readwrite", "deny")
DEFAULT_MAX_PACKET_SIZE = 65536


class BrokerConfigError(RuntimeError):
    """The broker configuration cannot be generated (bad input or mosquitto_passwd failed)."""


def _check_line(what: str, value: str) -> str:
    """Mosquitto's files are line-based: no value may break a line or hide in whitespace."""
    if not value or value != value.strip() or any(c in value for c in "\r\n\0"):
        raise BrokerConfigError(f"{what} {value!r} is empty, has surrounding whitespace or a line break")
    return value


def _check_user(name: str) -> str:
    _check_line("user name", name)
    if ":" in name or any(c.isspace() for c in name):
        raise BrokerConfigError(f"user name {name!r} must not contain ':' or whitespace")
    return name


def write_password_file(path: str | Path, users: Mapping[str, str], *,
                        mosquitto_passwd: str = "mosquitto_passwd") -> Path:
    """Write a Mosquitto password file holding `users` (name -> plain password), hashed.

    Writes `name:password` lines to a temporary file (mode 0600) and hashes them all with one
    `mosquitto_passwd -U`, so a thousand devices take a fraction of a second and no password
    appears on a command line. A password holding ':' (which `-U` would cut there) is added
    afterwards with `mosquitto_passwd -b`, which puts it on the command line of a short-lived
    local process. The temporary file replaces `path` only when all succeeded; the result is
    mode 0640.
    """
    path = Path(path)
    for name, password in users.items():
        _check_user(name)
        _check_line(f"password of {name!r}", password)
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
        for name, password in single.items():
            run(["-b", str(tmp), name, password], f"user {name!r}")
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        backup.unlink(missing_ok=True)
    return path


def _user_block(comment: str, user: str, rules: Sequence[tuple[str, str]]) -> list[str]:
    lines = [f"# {comment}", f"user {_check_user(user)}"]
    for access, topic in rules:
        if access not in ACCESS:
            raise BrokerConfigError(f"access {access!r} for user {user!r} is not one of {ACCESS}")
        lines.append(f"topic {access} {_check_line('topic', topic)}")
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
    lines += _user_block("gateway", gateway_user, gateway_rules)
    for cid in cars:
        lines += _user_block(f"car {cid}", cid, ACL.acl_car(region, cid))
    for sid in stations:
        lines += _user_block(f"station {sid}", sid, ACL.acl_station(region, sid))
    for name, rules in extra_users.items():
        lines += _user_block(f"extra user {name}", name, rules)
    return "\n".join(lines)


def render_conf(region: str, *, password_file: str | Path, acl_file: str | Path,
                port: int = 1883, host: str = "127.0.0.1",
                persistence_location: str | Path = DEBIAN_PERSISTENCE,
                log_file: str | Path | None = None, run_as: str = "mosquitto",
                dropin: bool = False, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
                template: str | Path = TEMPLATE) -> str:
    """The broker's mosquitto.conf text, from the template.

    log_file None logs to stdout (journald under systemd). run_as is the account a broker
    started as root switches to (without effect when started by another user). With
    dropin=True the result is a conf.d drop-in for Debian's /etc/mosquitto/mosquitto.conf:
    user, persistence and log_dest are left to the main file (commented out here).
    """
    D.region_root(region)  # validates the region id
    if not 0 < port < 65536:
        raise BrokerConfigError(f"port {port} outside 1..65535")
    location = str(persistence_location)
    if not location.endswith("/"):
        location += "/"  # as Debian writes it; Mosquitto 1.x appended "mosquitto.db" directly
    values = {
        "region": region,
        "mode": "conf.d drop-in for Debian's mosquitto.conf" if dropin else "standalone",
        "standalone": _MAIN_CONF_PREFIX if dropin else "",
        "run_as": _check_user(run_as),
        "host": _check_line("host", host),
        "port": str(port),
        "password_file": _check_line("password_file", str(password_file)),
        "acl_file": _check_line("acl_file", str(acl_file)),
        "persistence_location": _check_line("persistence_location", location),
        "log_dest": "stdout" if log_file is None else "file " + _check_line("log file", str(log_file)),
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


def write_broker_dir(dir: str | Path, region: str, port: int, users: Mapping[str, str],
                     cars: Sequence[str], stations: Sequence[str], gateway_user: str,
                     host: str = "127.0.0.1", *, run_as: str = "mosquitto", log_stdout: bool = False,
                     dropin: bool = False,
                     extra_acl: Mapping[str, Sequence[tuple[str, str]]] | None = None,
                     max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
                     template: str | Path = TEMPLATE, bridge: BridgeSettings | None = None) -> Path:
    """Write conf, password file, ACL and (standalone) persistence dir into `dir`.

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
    acl = render_acl(region, gateway_user, cars, stations, extra_acl, central=bridge is not None)
    persistence, log_file = _state_paths(d, dropin, log_stdout)
    conf = render_conf(region, password_file=d / PASSWD_NAME, acl_file=d / ACL_NAME, port=port,
                       host=host, persistence_location=persistence, log_file=log_file,
                       run_as=run_as, dropin=dropin, max_packet_size=max_packet_size,
                       template=template)
    if bridge is not None:
        conf += "\n" + render_bridge(region, bridge)
    return _write_dir(d, conf, CONF_NAME, acl, users, run_as, dropin=dropin, log_file=log_file,
                      secret_conf=bridge is not None)


def _state_paths(d: Path, dropin: bool, log_stdout: bool) -> tuple[str | Path, str | Path | None]:
    """Persistence location and log file: Debian's as a drop-in, else inside `d`."""
    if dropin:
        return DEBIAN_PERSISTENCE, DEBIAN_LOG
    persistence = d / PERSISTENCE_NAME
    persistence.mkdir(exist_ok=True)
    return persistence, None if log_stdout else d / LOG_NAME


def _write_dir(d: Path, conf: str, conf_name: str, acl: str, users: Mapping[str, str], run_as: str, *,
               dropin: bool, log_file: str | Path | None, secret_conf: bool) -> Path:
    write_password_file(d / PASSWD_NAME, users)
    (d / ACL_NAME).write_text(acl)
    os.chmod(d / ACL_NAME, 0o640)
    conf_path = d / conf_name
    if secret_conf:  # a bridge's remote_password: never readable by others, not even briefly
        conf_path.unlink(missing_ok=True)
        os.close(os.open(conf_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
    conf_path.write_text(conf)
    _hand_over(d, run_as, dropin=dropin, log_file=log_file, conf=conf_path if secret_conf else None)
    return conf_path


def _hand_over(d: Path, run_as: str, *, dropin: bool, log_file: str | Path | None,
               conf: Path | None = None) -> None:
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
    for path in (d / PASSWD_NAME, d / ACL_NAME, *([conf] if conf is not None else [])):
        os.chown(path, 0, entry.pw_gid)
    if dropin:
        return
    os.chown(d / PERSISTENCE_NAME, entry.pw_uid, entry.pw_gid)
    if log_file is not None:
        Path(log_file).touch()
        os.chown(log_file, entry.pw_uid, entry.pw_gid)


# ---------------------------------------------------------------- bridge to central

CENTRAL_TEMPLATE = TEMPLATE.parent / "recarga-central.conf.template"
CENTRAL_CONF_NAME = "recarga-central.conf"


def bridge_user(region: str) -> str:
    """The central broker's user name for a region's bridge (also its MQTT client id there)."""
    return f"bridge-{PC.check_region(region)}"


@dataclass(frozen=True)
class BridgeSettings:
    """Where and how a region's broker reaches the central broker."""

    host: str
    port: int
    password: str = field(repr=False)
    username: str = ""  # default: bridge_user(region)
    restart_min_s: int = 2  # reconnect backoff (Mosquitto's restart_timeout base cap)
    restart_max_s: int = 30
    keepalive_s: int = 30


def render_bridge(region: str, b: BridgeSettings) -> str:
    """The Mosquitto bridge section of a region's broker: its central subtree, each leaf one
    way at QoS 1 (ACL.bridge_topics), persistent session (cleansession false) so QoS 1
    messages wait in both brokers while the link is down, and the link state as a retained
    notification ("1"/"0") on the region's central/link topic for the gateway. The TLS lines
    are present but commented out."""
    user = b.username or bridge_user(region)
    _check_user(user)
    _check_line("bridge password", b.password)
    if any(c.isspace() or c == "#" for c in b.password):
        raise BrokerConfigError("the bridge password must not contain whitespace or '#' (Mosquitto's "
                                "conf cannot quote it)")
    if not 0 < b.port < 65536:
        raise BrokerConfigError(f"bridge port {b.port} outside 1..65535")
    if not 0 < b.restart_min_s <= b.restart_max_s:
        raise BrokerConfigError("bridge restart times must satisfy 0 < min <= max")
    host = _check_line("bridge host", b.host)
    if any(c.isspace() for c in host):
        raise BrokerConfigError(f"bridge host {host!r} must not contain whitespace")
    lines = [
        "# ---------------------------------------------------------------- bridge to central",
        f"# Generated by recarga.core.broker_config: the region {region!r} <-> the central broker.",
        "# Mosquitto's own bridge: this broker connects out to central, so the region needs no",
        "# inbound port. QoS 1 and persistent sessions both ways: while the link is down the",
        "# messages wait (here for central, there for the region) and flow once it is back.",
        f"connection recarga-central-{region}",
        f"address {host}:{b.port}",
        "bridge_protocol_version mqttv311",
        f"remote_clientid {user}",
        f"local_clientid {user}-local",
        f"remote_username {user}",
        f"remote_password {b.password}",
        "cleansession false",
        "try_private true",
        "start_type automatic",
        f"restart_timeout {b.restart_min_s} {b.restart_max_s}",
        f"keepalive_interval {b.keepalive_s}",
        "# The gateway learns from this retained flag that overflow is (un)available.",
        "notifications true",
        "notifications_local_only true",
        f"notification_topic {PC.central_topic(region, PC.LINK_LEAF)}",
        "# The region's central subtree only (recarga/core/protocol/access.py, bridge_topics); the central",
        "# broker's ACL lets this bridge's user write and read nothing else.",
    ]
    lines += [f"topic {topic} {direction} {W.QOS}" for topic, direction in ACL.bridge_topics(region)]
    lines += [
        "# TLS to central: give the central broker a TLS listener (8883), point address at it",
        "# and uncomment these. bridge_insecure must stay false (it would skip the host name check).",
        "#bridge_cafile /etc/mosquitto/certs/recarga-central-ca.crt",
        "#bridge_tls_version tlsv1.2",
        "#bridge_insecure false",
        "#bridge_certfile /etc/mosquitto/certs/bridge.crt",
        "#bridge_keyfile /etc/mosquitto/certs/bridge.key",
        "",
    ]
    return "\n".join(lines)


def render_central_acl(central_user: str, regions: Sequence[str],
                       extra_users: Mapping[str, Sequence[tuple[str, str]]] | None = None) -> str:
    """The central broker's ACL: the central service user over every region's central subtree,
    each region's bridge user (bridge_user) over its own subtree only."""
    extra_users = extra_users or {}
    bridges = [bridge_user(r) for r in regions]
    names = [central_user, *bridges, *extra_users]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BrokerConfigError(f"user names used twice (central, bridges, extra): {dupes}")
    lines = [
        "# Mosquitto ACL of the Recarga central broker.",
        "# Generated by recarga.core.broker_config from recarga/core/protocol/access.py; do not edit.",
        "# A topic no line grants is denied.",
        "",
    ]
    lines += _user_block("central service", central_user, ACL.acl_central())
    for region, user in zip(regions, bridges):
        lines += _user_block(f"bridge of region {region}", user, ACL.acl_bridge(region))
    for name, rules in extra_users.items():
        lines += _user_block(f"extra user {name}", name, rules)
    return "\n".join(lines)


def write_central_broker_dir(dir: str | Path, port: int, users: Mapping[str, str], central_user: str,
                             regions: Sequence[str], host: str = "127.0.0.1", *, run_as: str = "mosquitto",
                             log_stdout: bool = False, dropin: bool = False,
                             extra_acl: Mapping[str, Sequence[tuple[str, str]]] | None = None,
                             max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
                             template: str | Path = CENTRAL_TEMPLATE) -> Path:
    """The central broker's directory, as write_broker_dir does a region's: conf (from
    deploy/mosquitto/recarga-central.conf.template), password file, ACL. `users` holds the
    passwords of central_user, of bridge_user(r) for every region r, and of extra users."""
    needed = [central_user, *(bridge_user(r) for r in regions), *(extra_acl or {})]
    missing = [n for n in needed if n not in users]
    if missing:
        raise BrokerConfigError(f"no password given for {missing}")
    d = Path(dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    acl = render_central_acl(central_user, regions, extra_acl)
    persistence, log_file = _state_paths(d, dropin, log_stdout)
    conf = render_conf(PC.CENTRAL, password_file=d / PASSWD_NAME, acl_file=d / ACL_NAME, port=port,
                       host=host, persistence_location=persistence, log_file=log_file, run_as=run_as,
                       dropin=dropin, max_packet_size=max_packet_size, template=template)
    return _write_dir(d, conf, CENTRAL_CONF_NAME, acl, users, run_as, dropin=dropin, log_file=log_file,
                      secret_conf=False)


# ---------------------------------------------------------------- command line

def _credential(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name or not password:
        raise argparse.ArgumentTypeError(f"expected ID:PASSWORD, got {text!r}")
    return name, password


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m recarga.core.broker_config",
        description="Generate the Mosquitto configuration (conf, password file, ACL) of a "
                    "region's gateway broker into one directory and print the conf's path.")
    p.add_argument("--region", required=True, help="region id, e.g. berlin")
    p.add_argument("--dir", required=True, type=Path, help="output directory")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0: all interfaces)")
    p.add_argument("--gateway-user", required=True)
    pw = p.add_mutually_exclusive_group(required=True)
    pw.add_argument("--gateway-password")
    pw.add_argument("--gateway-password-file", type=Path,
                    help="file holding the gateway's password, e.g. the gateway.toml's "
                         "[broker] password_file (keeps it out of `ps`)")
    p.add_argument("--car", action="append", default=[], type=_credential, metavar="ID:PASSWORD")
    p.add_argument("--station", action="append", default=[], type=_credential, metavar="ID:PASSWORD")
    p.add_argument("--run-as", default="mosquitto", help="account a root-started broker switches to")
    p.add_argument("--log-stdout", action="store_true", help="log to stdout instead of DIR/mosquitto.log")
    p.add_argument("--template", type=Path, default=TEMPLATE, help=f"default: {TEMPLATE}")
    p.add_argument("--dropin", action="store_true",
                   help="write a conf.d drop-in for Debian's mosquitto.conf (docs/deployment.md)")
    p.add_argument("--bridge-host", help="the central broker: write a bridge to it (docs/central.md)")
    p.add_argument("--bridge-port", type=int, default=1883)
    p.add_argument("--bridge-password-file", type=Path,
                   help="file holding this region's bridge password on the central broker")
    args = p.parse_args(argv)
    bridge = None
    if args.bridge_host is not None:
        if args.bridge_password_file is None:
            p.error("--bridge-host needs --bridge-password-file")
        bridge = BridgeSettings(args.bridge_host, args.bridge_port, args.bridge_password_file.read_text().strip())

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
        conf = write_broker_dir(args.dir, args.region, args.port, users,
                                [c for c, _ in args.car], [s for s, _ in args.station],
                                args.gateway_user, args.host, run_as=args.run_as,
                                log_stdout=args.log_stdout, dropin=args.dropin,
                                template=args.template, bridge=bridge)
    except (BrokerConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(conf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
