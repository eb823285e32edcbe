"""Broker access rules: the (access, topic) lines each kind of broker user gets, and the
topics a region broker's bridge to central carries.

docs/protocol.md, "Broker ACL (per device)" and "Across regions" / "ACLs", is the
human-readable form; recarga.core.broker_config (a region's broker), recarga.core.bridge
and recarga.core.central_broker write these into Mosquitto's files.
"""
from __future__ import annotations

from recarga.core.protocol import central as PC
from recarga.core.protocol import device as D

# ---------------------------------------------------------------- region broker: devices and gateway


def acl_car(region: str, cid: str) -> list[tuple[str, str]]:
    """(access, topic) pairs a car's broker user gets: its own subtree and nothing else."""
    return [
        ("write", D.car_topic(region, cid, "request")),
        ("write", D.car_topic(region, cid, "online")),
        ("write", D.car_topic(region, cid, "telemetry")),
        ("read", D.car_topic(region, cid, "reply")),
    ]


def acl_station(region: str, sid: str) -> list[tuple[str, str]]:
    return [
        ("readwrite", D.station_topic(region, sid, "status")),
        ("write", D.station_topic(region, sid, "meta")),
        ("write", D.station_topic(region, sid, "online")),
        ("read", D.station_topic(region, sid, "cmd")),
    ]


def acl_gateway(region: str) -> list[tuple[str, str]]:
    return [
        ("read", D.car_filter(region, "request")),
        ("read", D.car_filter(region, "online")),
        ("read", D.car_filter(region, "telemetry")),
        ("write", D.car_filter(region, "reply")),
        ("read", D.station_filter(region, "status")),
        ("read", D.station_filter(region, "meta")),
        ("read", D.station_filter(region, "online")),
        ("write", D.station_filter(region, "cmd")),
        ("readwrite", D.gateway_online_topic(region)),
        ("readwrite", D.gateway_sync_topic(region)),  # its catch-up marker, to itself
    ]


# ---------------------------------------------------------------- across regions: bridges and central

def bridge_topics(region: str) -> list[tuple[str, str]]:
    """(topic pattern, direction) for the region broker's bridge to central: exactly the
    region's own central subtree, each leaf one way."""
    seg = PC.check_region(region)
    return [(PC.subtree(seg, leaf + ("/#" if leaf == "summary" else "")), direction)
            for leaf, (direction, _) in PC.CENTRAL_LEAVES.items()]


def _central_rules(segment: str, writes: str) -> list[tuple[str, str]]:
    """ACL lines over the central subtree of `segment`: write the leaves flowing `writes`
    ("out": region to central, "in": central to region), read the others."""
    return [("write" if direction == writes else "read",
             PC.subtree(segment, leaf + ("/+" if leaf == "summary" else "")))
            for leaf, (direction, _) in PC.CENTRAL_LEAVES.items()]


def acl_bridge(region: str) -> list[tuple[str, str]]:
    """Central broker: the region's bridge user writes what flows out of the region and reads
    what flows in, in its own region's subtree only."""
    return _central_rules(PC.check_region(region), "out")


def acl_central() -> list[tuple[str, str]]:
    """Central broker: the central service user, for every region ("+")."""
    return _central_rules("+", "in") + [("readwrite", f"{PC.CENTRAL_ROOT}/online/+")]


def acl_gateway_central(region: str) -> list[tuple[str, str]]:
    """Region broker: what the gateway user needs besides acl_gateway to take part in overflow
    (the same as the bridge user's on central, plus the bridge's link notification)."""
    return acl_bridge(region) + [("read", PC.central_topic(region, PC.LINK_LEAF))]
