"""A broker directory (as recarga.core.broker_config and recarga.core.central_broker write
it): the names of its files, the rules every value written into Mosquitto's line-based files
must follow, and reading its ACL and password file back.

The one reader of the ACL and password files, for recarga-device provision (which edits them
in place) and for a re-run of write_broker_dir (which keeps the devices provisioned since).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from recarga.core.protocol import access as ACL
from recarga.core.protocol import wire as W

CONF_NAME = "recarga-gateway.conf"
CENTRAL_CONF_NAME = "recarga-central.conf"
PASSWD_NAME = "passwd"
ACL_NAME = "acl"
SHARE_GUARD_NAME = "shared-subscriptions.json"
PERSISTENCE_NAME = "persistence"
LOG_NAME = "mosquitto.log"

ACCESS = ("read", "write", "readwrite", "deny")


class BrokerConfigError(RuntimeError):
    """The broker configuration cannot be generated (bad input or mosquitto_passwd failed)."""


def check_line(what: str, value: str) -> str:
    """Mosquitto's files are line-based: no value may break a line or hide in whitespace."""
    if not value or value != value.strip() or any(c in value for c in "\r\n\0"):
        raise BrokerConfigError(f"{what} {value!r} is empty, has surrounding whitespace or a line break")
    return value


def check_user(name: str) -> str:
    """A Mosquitto user name as the password file and the ACL can hold it."""
    check_line("user name", name)
    if ":" in name or any(c.isspace() for c in name):
        raise BrokerConfigError(f"user name {name!r} must not contain ':' or whitespace")
    return name


# ---------------------------------------------------------------- reading a broker directory back

DEVICE_KINDS = ("car", "station")


@dataclass(frozen=True)
class AclBlock:
    user: str
    start: int  # first line: the block's generated comment ("# car ID") or its `user` line
    head: int  # the `user` line
    end: int  # one past its last topic line (blank lines and comments before the next block
    #           belong to the next block)
    comment: str | None
    rules: tuple[tuple[str, str], ...]


def _directive(line: str) -> tuple[str | None, str]:
    parts = line.strip().split(None, 1)
    if len(parts) == 2 and parts[0] in ("user", "pattern", "topic"):
        return parts[0], parts[1].strip()
    return None, ""


def _filler(line: str) -> bool:
    s = line.strip()
    return not s or s.startswith("#")


def parse_acl(lines: Sequence[str]) -> list[AclBlock]:
    """The `user` blocks of a Mosquitto ACL (lines without line ends), in file order."""
    heads = [i for i, ln in enumerate(lines) if _directive(ln)[0] in ("user", "pattern")]
    blocks = []
    for n, i in enumerate(heads):
        kind, user = _directive(lines[i])
        if kind != "user":
            continue
        end = heads[n + 1] if n + 1 < len(heads) else len(lines)
        while end > i + 1 and _filler(lines[end - 1]):
            end -= 1
        rules = []
        for ln in lines[i + 1:end]:
            d, arg = _directive(ln)
            if d == "topic":
                access, _, topic = arg.partition(" ")
                if access in ACCESS and topic.strip():
                    rules.append((access, topic.strip()))
                else:
                    rules.append(("readwrite", arg))
        start, comment = i, None
        if i > 0 and lines[i - 1].strip() in (f"# {k} {user}" for k in DEVICE_KINDS):
            start, comment = i - 1, lines[i - 1].strip()
        blocks.append(AclBlock(user, start, i, end, comment, tuple(rules)))
    return blocks


def acl_regions(lines: Sequence[str]) -> set[str]:
    """The regions whose topics (recarga/v1/<region>/...) an ACL grants."""
    root = W.ROOT.split("/")
    regions = set()
    for ln in lines:
        d, arg = _directive(ln)
        if d != "topic":
            continue
        parts = arg.split()[-1].split("/")
        if parts[:len(root)] == root and len(parts) > len(root) and W.ID_RE.match(parts[len(root)]):
            regions.add(parts[len(root)])
    return regions


def device_kind_of(block: AclBlock, region: str) -> str | None:
    """"car" / "station" if the block is a device's (its generated comment, or exactly the
    rules recarga.core.protocol.access gives a car or a station), else None."""
    if block.comment:
        return block.comment.split()[1]
    for kind, rules in (("car", ACL.acl_car), ("station", ACL.acl_station)):
        if list(block.rules) == rules(region, block.user):
            return kind
    return None


def passwd_lines(path: str | Path) -> dict[str, str]:
    """user -> its whole line (name:hash) in a Mosquitto password file; {} if there is none."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return {}
    return {ln.split(":", 1)[0]: ln for ln in text.splitlines() if ":" in ln and not ln.startswith("#")}


@dataclass(frozen=True)
class KeptDevices:
    """Devices of a broker directory that a re-run of write_broker_dir keeps: their kind and
    their password file lines (already hashed)."""

    cars: tuple[str, ...] = ()
    stations: tuple[str, ...] = ()
    passwd: Mapping[str, str] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return self.cars + self.stations


def provisioned_devices(dir: str | Path, region: str, skip: Sequence[str] = ()) -> KeptDevices:
    """The cars and stations a broker directory's ACL and password file hold (what
    recarga-device provision added, or an earlier run), but the users in `skip`. A device
    with an ACL block but no password line is not kept: it could not log in anyway. Refuses
    a directory whose ACL is another region's."""
    d = Path(dir)
    try:
        lines = (d / ACL_NAME).read_text(errors="replace").split("\n")
    except FileNotFoundError:
        return KeptDevices()
    regions = acl_regions(lines)
    if regions and region not in regions:
        raise BrokerConfigError(f"{d / ACL_NAME} is the ACL of region {', '.join(sorted(regions))}, not "
                                f"{region!r}: use another directory for {region!r}")
    hashed = passwd_lines(d / PASSWD_NAME)
    found: dict[str, list[str]] = {k: [] for k in DEVICE_KINDS}
    for block in parse_acl(lines):
        kind = device_kind_of(block, region)
        if kind in found and block.user not in skip and block.user in hashed and block.user not in found[kind]:
            found[kind].append(block.user)
    return KeptDevices(tuple(found["car"]), tuple(found["station"]),
                       {u: hashed[u] for names in found.values() for u in names})

