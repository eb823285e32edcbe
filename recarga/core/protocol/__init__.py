"""The Recarga wire protocol, v1: the one home of topic names and message validation.

docs/protocol.md is the human-readable contract; this package is its executable form.
Nothing else in the CPython code spells a topic string or checks a message shape. Each
module serves one audience; import the one you talk to:

- wire: what all share: the version, the topic root, QoS, id patterns, ProtocolError, the
  error codes any message can earn, JSON in and out, the online flag, the field checks.
- device: devices <-> the region's gateway: the region's topics, car requests, replies,
  events and telemetry, station status, meta and commands, slot and reservation states.
- central: gateways <-> central across regions: topics under recarga/v1/<region>/central/,
  overflow and hold requests, answers and events, the capacity summary, the car's overflow reply.
- access: broker access rules: the ACL lines of every kind of broker user and the topics
  a region's bridge to central carries.
"""
