"""recarga.core.protocol.access: every broker user's ACL lines and the bridge's topics."""
from __future__ import annotations

import paho.mqtt.client as mqtt

from recarga.core.protocol import access as ACL
from recarga.core.protocol import central as PC


def test_device_acls_are_confined_to_their_own_subtree():
    for access, topic in ACL.acl_car("r", "c1"):
        assert topic.startswith("recarga/v1/r/car/c1/")
    for access, topic in ACL.acl_station("r", "s1"):
        assert topic.startswith("recarga/v1/r/station/s1/")


def test_the_bridge_carries_each_central_topic_of_its_region_only():
    bridged = ACL.bridge_topics("a")
    for leaf in PC.CENTRAL_LEAVES:
        topic = PC.summary_topic("a", 7) if leaf == "summary" else PC.central_topic("a", leaf)
        # exactly one bridge line carries it, in the direction the protocol says
        carried = [d for pattern, d in bridged if mqtt.topic_matches_sub(pattern, topic)]
        assert carried == [PC.CENTRAL_LEAVES[leaf][0]]
        assert not any(mqtt.topic_matches_sub(pattern, topic.replace("/a/", "/b/")) for pattern, _ in bridged)


def test_central_acls_confine_each_bridge_to_its_region():
    for access, topic in ACL.acl_bridge("a"):
        assert topic.startswith("recarga/v1/a/central/") and access in ("read", "write")
    # what a bridge writes, central reads, and the other way round
    bridge = {t.replace("/a/", "/+/"): a for a, t in ACL.acl_bridge("a")}
    for access, topic in ACL.acl_central():
        if topic in bridge:
            assert {access, bridge[topic]} == {"read", "write"}
    assert ("read", PC.central_topic("a", "link")) in ACL.acl_gateway_central("a")
