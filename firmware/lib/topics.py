"""The firmware's one home for topic names (docs/protocol.md, "Topic tree").

    topic("berlin", "station", "st-1", "status") == "recarga/v1/berlin/station/st-1/status"

Build topics once at start-up and keep them; the loop should not build strings.
"""

ROOT = "recarga/v1"


def topic(region, kind, ident, leaf):
    """"recarga/v1/<region>/<kind>/<id>/<leaf>"; kind is "car" or "station", leaf e.g.
    "status", "cmd", "online", "request", "reply", "telemetry"."""
    return ROOT + "/" + region + "/" + kind + "/" + ident + "/" + leaf
