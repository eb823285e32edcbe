"""Provisioning: a car or station board's broker user, its ACL block and its config.json.

    recarga-device provision --kind station --id st-0007 --region berlin \\
        --broker-dir /etc/mosquitto/recarga --host 192.168.1.10 --port 1883 \\
        --wifi-ssid recarga --wifi-password-file wifi.txt --out devices/

For device ID in a region's broker directory (as recarga.core.broker_config writes it):

- a new random password (`secrets`), hashed into the broker's password file by Mosquitto's
  own `mosquitto_passwd` (run on a copy of the file, which then replaces it; the password
  goes to the tool on stdin, never on a command line). Only that user's line changes; the
  file is created if missing.
- its `user ID` block in the broker's ACL file, rendered by recarga.core.broker_config from
  recarga.core.protocol.access.acl_car / acl_station: added, or replaced in place if the user has one.
  Everything else in the file stays as it was; the new file replaces the old atomically.
- OUT/ID/config.json from the board's default config (boards/<kind>/config.json, or a
  built-in one following docs/firmware.md) with kind, id, region, broker and Wi-Fi filled
  in; mode 0600, as it holds the password. When the broker's first listener is TLS (its conf
  names a `cafile`), or with --ca, the board gets that CA pinned (`broker.ca`: the
  certificate's DER, base64, as mbedTLS on the board reads it; pinned_ca()) and connects over
  TLS, checking the broker's certificate for --server-name (default: --host).

Provisioning an id again replaces it: a new password (the old config.json no longer
connects), a fresh ACL block, a new config.json. The broker directory is locked (flock)
while its files change. A running Mosquitto reads the new files on SIGHUP.

The password is printed nowhere; it is only in config.json.
"""
from __future__ import annotations

import base64
import copy
import fcntl
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from recarga.core import resources
from recarga.core.broker_config import render_user_block
from recarga.core.broker_dir import (
    ACL_NAME,
    CONF_NAME,
    PASSWD_NAME,
    acl_regions,
    device_kind_of,
    parse_acl,
    passwd_lines,
)
from recarga.core.protocol import access as ACL
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.devices import KINDS, read_json_object

BOARDS_DIR = resources.BOARDS
FIRMWARE_CONFIG = resources.FIRMWARE / "lib" / "config.py"
PASSWORD_BYTES = 24  # secrets.token_urlsafe: 32 characters of A-Z a-z 0-9 - _
PLACEHOLDER = "change-me"
NEW_FILE_MODE = 0o640  # as recarga.core.broker_config writes the password file and the ACL
RELOAD_HINT = ("a running Mosquitto reads the password file and the ACL again on SIGHUP: "
               "`systemctl reload mosquitto` (Debian's service) or `kill -HUP <mosquitto pid>`")

# The config a board gets when boards/<kind>/config.json does not exist: the examples of
# docs/firmware.md ("config.json"), which the firmware accepts as they are.
_COMMON = {
    "kind": None, "id": None, "region": None,
    "wifi": {"ssid": "recarga", "password": PLACEHOLDER},
    "broker": {"host": "127.0.0.1", "port": 1883, "user": None, "password": PLACEHOLDER,
               "keepalive": 30},
    "log": "info",
}
BUILTIN_TEMPLATES = {
    "car": {
        **_COMMON,
        "pins": {"battery_adc": 34, "status_led": 2},
        "battery": {"divider": 130.0, "samples": 9,
                    "curve": [[300, 0.0], [345, 0.1], [360, 0.3], [372, 0.5], [388, 0.8],
                              [403, 1.0]]},
        "thresholds": {"ask_below": 0.20, "clear_above": 0.25},
        "model": {"name": "Volkswagen ID.3 58 kWh", "battery_kwh": 58.0,
                  "consumption_kwh_100km": 16.6, "max_ac_kw": 11.0, "max_dc_kw": 100.0,
                  "target_soc": 0.8},
        "route": {"speed_kmh": 30, "loop": True,
                  "points": [[52.5200, 13.4050], [52.5300, 13.4200]]},
        "regions": [{"name": "berlin", "host": "127.0.0.1", "port": 1883,
                     "bounds": [52.33, 13.08, 52.68, 13.77]}],
        "telemetry_s": 30,
    },
    "station": {
        **_COMMON,
        "pins": {"status_led": 2},
        "slots": [{"red": 25, "green": 26, "blue": 27, "sensor": 13},
                  {"red": 16, "green": 17, "blue": 18, "sensor": 19}],
        "heartbeat_s": 60,
        "debounce_ms": 50,
    },
}


class ProvisionError(RuntimeError):
    """The device cannot be provisioned; the message says why (and what to do)."""


# ---------------------------------------------------------------- checks

def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ProvisionError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
    return kind


def check_id(what: str, value: str) -> str:
    """A protocol id (recarga.core.protocol.wire.ID_RE: 1-32 of A-Z a-z 0-9 _ -)."""
    if not isinstance(value, str) or not W.ID_RE.match(value):
        raise ProvisionError(f"bad {what} id {value!r}: 1-32 of A-Z a-z 0-9 _ - "
                             "(the protocol's id rule; the id is also the broker user name)")
    return value


def _check_text(what: str, value: str, lo: int, hi: int) -> str:
    if not lo <= len(value) <= hi:
        raise ProvisionError(f"{what} must be {lo}-{hi} characters long, got {len(value)}")
    if any(c in value for c in "\r\n\0"):
        raise ProvisionError(f"{what} must not contain a line break or NUL")
    return value


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


# ---------------------------------------------------------------- config.json

def default_template_path(kind: str, boards_dir: Path = BOARDS_DIR) -> Path | None:
    """boards/<kind>/config.json if it exists."""
    p = Path(boards_dir) / check_kind(kind) / "config.json"
    return p if p.is_file() else None


def load_template(kind: str, template: str | Path | None = None,
                  boards_dir: Path = BOARDS_DIR) -> tuple[dict, str]:
    """(template dict, where it came from). An explicit template must exist and be a JSON
    object for this kind; without one, boards/<kind>/config.json, else the built-in one."""
    check_kind(kind)
    path = Path(template) if template is not None else default_template_path(kind, boards_dir)
    if path is None:
        return copy.deepcopy(BUILTIN_TEMPLATES[kind]), "built-in template (docs/firmware.md)"
    data = read_json_object(path, "template", ProvisionError)
    if data.get("kind", kind) != kind:
        raise ProvisionError(f"template {path} is a {data.get('kind')!r} config, not a {kind!r} one")
    return data, str(path)


def pinned_ca(path: str | Path) -> str:
    """config.json's `broker.ca` for the CA certificate in `path` (PEM or DER): its DER,
    base64 on one line (MicroPython's mbedTLS reads DER; docs/firmware.md). Refuses a file
    that is not one X.509 certificate of a CA."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ProvisionError(f"CA certificate {path}: {e.strerror or e}") from None
    try:
        cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
    except ValueError as e:
        raise ProvisionError(f"{path} is not an X.509 certificate (PEM or DER): {e}") from None
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ProvisionError(f"{path} is not a CA certificate (no basicConstraints CA:TRUE): pin the CA "
                             "that signed the broker's certificate (python -m recarga.core.certs ca)")
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode("ascii")


def build_config(template: dict, *, kind: str, device_id: str, region: str, host: str,
                 port: int, password: str, wifi_ssid: str | None = None,
                 wifi_password: str | None = None, ca: str | None = None,
                 server_name: str | None = None) -> tuple[dict, list[str]]:
    """The device's config.json (a new dict) and notes for the operator. `ca` (pinned_ca())
    makes the board connect over TLS, checking the broker's certificate for `server_name`
    (None: the host); without it the board speaks plain TCP."""
    notes: list[str] = []
    cfg = copy.deepcopy(template)
    cfg["kind"], cfg["id"], cfg["region"] = kind, device_id, region
    broker = cfg.get("broker") if isinstance(cfg.get("broker"), dict) else {}
    broker.update({"host": host, "port": port, "user": device_id, "password": password})
    broker.setdefault("keepalive", 30)
    for key in ("ca", "server_name"):
        broker.pop(key, None)
    if ca is not None:
        broker["ca"] = ca
        if server_name is not None and server_name != host:
            broker["server_name"] = server_name
    else:
        notes.append(f"plain TCP to {host}:{port}: the broker password crosses the network in clear "
                     "(development on loopback only; a broker with a TLS listener, or --ca, gives TLS)")
    cfg["broker"] = broker
    wifi = cfg.get("wifi") if isinstance(cfg.get("wifi"), dict) else {}
    if wifi_ssid is not None:
        wifi["ssid"] = wifi_ssid
        wifi["password"] = wifi_password or ""
    elif not wifi.get("ssid"):
        raise ProvisionError("the template has no wifi.ssid: pass --wifi-ssid and --wifi-password")
    elif wifi.get("password") == PLACEHOLDER:
        notes.append(f"wifi: kept the template's network {wifi['ssid']!r}, whose password is the "
                     f"placeholder {PLACEHOLDER!r}; pass --wifi-ssid/--wifi-password for a real "
                     "board (the virtual board accepts any)")
    cfg["wifi"] = wifi
    if kind == "car":
        # The car connects to the broker of the region it is in (docs/firmware.md, "regions"):
        # its home region's entry must name this broker too.
        regions = cfg.get("regions")
        home = [r for r in regions or [] if isinstance(r, dict) and r.get("name") == region]
        for r in home:
            r["host"], r["port"] = host, port
        if not home:
            names = [r.get("name") for r in regions or [] if isinstance(r, dict)]
            notes.append(f"regions: the template lists {names}, not {region!r}; the car uses "
                         f"{host}:{port} only while its position is outside all of those")
    return cfg, notes


def _firmware_check(cfg: dict, kind: str) -> None:
    """Run the firmware's own check of the common keys (firmware/lib/config.py, plain Python)
    on a copy, so a config the board would refuse is refused here already."""
    if not FIRMWARE_CONFIG.is_file():
        return
    spec = importlib.util.spec_from_file_location("_recarga_firmware_config", FIRMWARE_CONFIG)
    try:
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except (ImportError, SyntaxError, AttributeError, NameError):
        return  # written for MicroPython: if it stops importing here, the board still checks
    try:
        mod.check_common(copy.deepcopy(cfg), kind)
    except mod.ConfigError as e:
        raise ProvisionError(f"the board would refuse this config.json: {e}") from None


# ---------------------------------------------------------------- files

def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def _finish_tmp(tmp: Path, like: os.stat_result | None, default_mode: int,
                warn: Callable[[str], None]) -> None:
    """Give a temporary file the mode (and as far as allowed the owner) of the file it
    replaces; fsync it."""
    os.chmod(tmp, like.st_mode & 0o7777 if like is not None else default_mode)
    if like is not None and (like.st_uid, like.st_gid) != (os.geteuid(), os.getegid()):
        try:
            os.chown(tmp, like.st_uid if os.geteuid() == 0 else -1, like.st_gid)
        except PermissionError:
            warn(f"could not give {tmp.name} group {like.st_gid} as its predecessor had: "
                 "check that Mosquitto can still read it")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, text: str, *, mode: int, like: os.stat_result | None = None,
                 warn: Callable[[str], None] = lambda m: None) -> None:
    """Write `text` to a temporary file next to `path` (mode 0600 from birth), then rename it
    over `path`: a reader sees the old file or the new one, never a part."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        _finish_tmp(tmp, like, mode, warn)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class BrokerFiles:
    directory: Path
    passwd: Path
    acl: Path
    conf: Path | None


def broker_files(directory: str | Path) -> BrokerFiles:
    """The password file and ACL of a broker directory: those its recarga-gateway.conf names
    (password_file, acl_file), else DIR/passwd and DIR/acl (recarga.core.broker_dir's names)."""
    d = Path(directory)
    if not d.is_dir():
        raise ProvisionError(f"broker directory {d} does not exist (or is not a directory): "
                             "create it with `python -m recarga.core.broker_config --dir ...` "
                             "(docs/deployment.md)")
    d = d.resolve()
    conf = d / CONF_NAME
    found: dict[str, Path] = {}
    if conf.is_file():
        for line in conf.read_text(errors="replace").splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0] in ("password_file", "acl_file"):
                p = Path(parts[1].strip())
                found[parts[0]] = p if p.is_absolute() else d / p
    return BrokerFiles(d, found.get("password_file", d / PASSWD_NAME),
                       found.get("acl_file", d / ACL_NAME),
                       conf if conf.is_file() else None)


# ---------------------------------------------------------------- ACL file

def upsert_acl(text: str, kind: str, device_id: str, region: str) -> tuple[str, list[str]]:
    """The ACL text with device_id's block added, or replaced where it was (a second block of
    the same user is removed). Returns (new text, kinds of the blocks replaced). Refuses to
    touch a block that is not a device's (the gateway's, an extra user's)."""
    rules = ACL.acl_car(region, device_id) if kind == "car" else ACL.acl_station(region, device_id)
    new = render_user_block(f"{kind} {device_id}", device_id, rules)[:-1]
    lines = text.split("\n") if text else []
    mine = [b for b in parse_acl(lines) if b.user == device_id]
    replaced = []
    for b in mine:
        k = device_kind_of(b, region)
        if k is None:
            raise ProvisionError(
                f"user {device_id!r} already has an ACL block that is not a car's or a "
                f"station's (line {b.head + 1}: the gateway's or an extra user's?); pick another id")
        replaced.append(k)
    if not mine:
        if not lines:
            lines = [f"# Mosquitto ACL of the Recarga gateway broker for region {region!r}.",
                     "# Started by recarga-device provision; blocks from recarga/core/protocol/access.py.",
                     "# A topic no line grants is denied.", ""]
        elif lines[-1] != "":
            lines.append("")  # the last line had no line end
        lines += [*new, ""]
        return "\n".join(lines), replaced
    for b in reversed(mine[1:]):
        del lines[b.start:b.end]
        if 0 < b.start < len(lines) and lines[b.start - 1] == "" and lines[b.start] == "":
            del lines[b.start]
    first = mine[0]
    lines[first.start:first.end] = new
    return "\n".join(lines), replaced


# ---------------------------------------------------------------- password file

def passwd_users(path: Path) -> set[str]:
    return set(passwd_lines(path))


def _passwd_line(path: Path, user: str) -> str | None:
    for ln in Path(path).read_text(errors="replace").splitlines():
        if ln.split(":", 1)[0] == user:
            return ln
    return None


def set_password(path: Path, user: str, password: str, *, like: os.stat_result | None = None,
                 warn: Callable[[str], None] = lambda m: None) -> bool:
    """Add `user` to the Mosquitto password file at `path` or replace its password; every
    other line stays. `mosquitto_passwd FILE USER` runs on a copy (the password on its stdin),
    which then replaces the file. Creates the file if missing. True if the user existed."""
    # Debian puts it in /usr/bin; some systems keep Mosquitto's tools in sbin, off a user's PATH
    tool = shutil.which("mosquitto_passwd") or shutil.which("mosquitto_passwd",
                                                           path="/usr/sbin:/usr/local/sbin")
    if tool is None:
        raise ProvisionError("'mosquitto_passwd' not found: install Debian's mosquitto package "
                             "(scripts/setup does)")
    path = Path(path)
    old = _stat(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            if old is not None:
                f.write(path.read_bytes())
        before = _passwd_line(tmp, user)
        proc = subprocess.run([tool, str(tmp), user], input=f"{password}\n{password}\n",
                              capture_output=True, text=True, timeout=60, check=False)
        after = _passwd_line(tmp, user)
        if proc.returncode != 0 or after is None or after == before:
            out = " ".join((proc.stderr + proc.stdout).replace("Password:", "")
                           .replace("Reenter password:", "").split())
            raise ProvisionError(f"mosquitto_passwd could not set the password of {user!r} "
                                 f"(exit {proc.returncode}){': ' + out if out else ''}")
        _finish_tmp(tmp, old or like, NEW_FILE_MODE, warn)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.tmp").unlink(missing_ok=True)  # mosquitto_passwd's backup copy, if any
    return before is not None


# ---------------------------------------------------------------- provisioning

@dataclass
class ProvisionResult:
    kind: str
    device_id: str
    region: str
    config_path: Path
    passwd: Path
    acl: Path
    user_existed: bool = False
    acl_replaced: list[str] = field(default_factory=list)
    config_existed: bool = False
    template: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def replaced(self) -> bool:
        return self.user_existed or bool(self.acl_replaced) or self.config_existed


def listener_port(files: BrokerFiles) -> int | None:
    """The port of the first `listener` line of the broker directory's conf, if any."""
    if files.conf is None:
        return None
    for line in files.conf.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "listener" and parts[1].isdigit():
            return int(parts[1])
    return None


def listener_cafile(files: BrokerFiles) -> Path | None:
    """The CA of the conf's first listener when it is TLS (its `cafile` line before the next
    `listener`: recarga.core.broker_config writes the TLS listener first), else None."""
    if files.conf is None:
        return None
    seen = 0
    for line in files.conf.read_text(errors="replace").splitlines():
        parts = line.split(None, 1)
        if parts and parts[0] == "listener":
            seen += 1
            if seen > 1:
                return None
        elif seen == 1 and len(parts) == 2 and parts[0] == "cafile":
            p = Path(parts[1].strip())
            return p if p.is_absolute() else files.directory / p
    return None


def provision(kind: str, device_id: str, region: str, broker_dir: str | Path, host: str,
              port: int | None, out_dir: str | Path, *, wifi_ssid: str | None = None,
              wifi_password: str | None = None, template: str | Path | None = None,
              boards_dir: Path = BOARDS_DIR, log: Callable[[str], None] = print,
              change_kind: bool = False, ca_file: str | Path | None = None,
              server_name: str | None = None) -> ProvisionResult:
    """Create (or replace) a device; see the module's docstring. A device of another kind
    with this id is replaced only with `change_kind`. `ca_file` (default: the CA of the
    broker's TLS listener, if it has one) is pinned in config.json, `server_name` (default:
    `host`) is the name the broker's certificate must carry. Prints what it did with `log`,
    never the password."""
    check_kind(kind)
    check_id(kind, device_id)
    check_id("region", region)
    _check_text("--host", host, 1, 253)
    if any(c.isspace() for c in host):
        raise ProvisionError(f"--host {host!r} must not contain whitespace")
    if port is not None and not 0 < int(port) < 65536:
        raise ProvisionError(f"--port {port} is outside 1..65535")
    if wifi_ssid is not None:
        _check_text("--wifi-ssid", wifi_ssid, 1, 32)
        _check_text("--wifi-password", wifi_password or "", 0, 64)
    elif wifi_password is not None:
        raise ProvisionError("--wifi-password needs --wifi-ssid")
    if server_name is not None:
        _check_text("--server-name", server_name, 1, 253)
    files = broker_files(broker_dir)
    if port is None:  # where the broker listens, as its conf says
        port = listener_port(files) or 1883
    if ca_file is None:
        ca_file = listener_cafile(files)
    ca = pinned_ca(ca_file) if ca_file is not None else None
    if ca is None and server_name is not None:
        raise ProvisionError("--server-name needs TLS: the broker has no TLS listener; pass --ca")
    tmpl, source = load_template(kind, template, boards_dir)
    password = new_password()
    cfg, notes = build_config(tmpl, kind=kind, device_id=device_id, region=region, host=host,
                              port=int(port), password=password, wifi_ssid=wifi_ssid,
                              wifi_password=wifi_password, ca=ca, server_name=server_name)
    _firmware_check(cfg, kind)
    out = Path(out_dir) / device_id
    result = ProvisionResult(kind, device_id, region, out / "config.json", files.passwd,
                             files.acl, template=source, notes=notes)
    warn = result.notes.append

    lock = os.open(files.directory, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one provisioning of this broker at a time
        acl_old = _stat(files.acl)
        text = files.acl.read_text() if acl_old is not None else ""
        regions = acl_regions(text.split("\n"))
        if regions and region not in regions:
            raise ProvisionError(
                f"{files.acl} is the ACL of region {', '.join(sorted(regions))}, not {region!r}: "
                "use that region's broker directory or --region")
        existing = next((b for b in parse_acl(text.split("\n")) if b.user == device_id), None)
        if existing is not None and existing.comment not in (None, f"# {kind} {device_id}") and not change_kind:
            # re-provisioning replaces a device of the same kind; another kind only when asked
            other = existing.comment.split()[1]
            raise ProvisionError(f"{device_id} is already a {other} in {files.acl}: give the {kind} "
                                 f"another id, or pass --change-kind to make it a {kind}")
        new_text, result.acl_replaced = upsert_acl(text, kind, device_id, region)
        if files.conf is None and acl_old is None:
            warn(f"{files.directory} has no {CONF_NAME} and no ACL yet: is it a "
                 "broker directory? (`python -m recarga.core.broker_config` writes one)")
        passwd_old = _stat(files.passwd)
        result.user_existed = set_password(files.passwd, device_id, password,
                                           like=acl_old, warn=warn)
        atomic_write(files.acl, new_text, mode=NEW_FILE_MODE, like=acl_old or _stat(files.passwd),
                     warn=warn)
        if passwd_old is None:
            warn(f"created the password file {files.passwd}")
    finally:
        os.close(lock)  # releases the lock

    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    result.config_existed = result.config_path.exists()
    atomic_write(result.config_path, json.dumps(cfg, indent=2) + "\n", mode=0o600)

    verb = "re-provisioned (replaced)" if result.replaced else "provisioned"
    log(f"{verb} {kind} {device_id} for region {region}")
    if result.user_existed:
        log(f"  broker user {device_id}: replaced in {files.passwd} with a new password "
            "(the old one no longer works once the broker has re-read the file)")
    else:
        log(f"  broker user {device_id}: added to {files.passwd} (new random password)")
    was = ""
    if result.acl_replaced and result.acl_replaced[0] != kind:
        was = f" (it was a {result.acl_replaced[0]}'s)"
    prefix = (D.car_topic if kind == "car" else D.station_topic)(region, device_id, "online")
    log(f"  ACL: {'replaced the' if result.acl_replaced else 'added a'} block for user {device_id}"
        f"{was} in {files.acl}: {len(_rules(kind, region, device_id))} topics under "
        f"{prefix.rsplit('/', 1)[0]}/")
    log(f"  config: {'replaced' if result.config_existed else 'wrote'} {result.config_path} "
        f"(mode 0600: it holds the broker password) from {source}; broker {host}:{port}"
        + (f" over TLS (CA {ca_file} pinned, server name {server_name or host})" if ca else " (plain TCP)")
        + f", wifi {cfg['wifi']['ssid']!r}")
    for n in result.notes:
        log(f"  note: {n}")
    log(f"  next: {RELOAD_HINT}")
    log(f"  then: recarga-device flash --kind {kind} --config {result.config_path} --port /dev/ttyUSB0")
    return result


def _rules(kind: str, region: str, device_id: str) -> list[tuple[str, str]]:
    return (ACL.acl_car if kind == "car" else ACL.acl_station)(region, device_id)
