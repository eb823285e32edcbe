"""The Recarga demo: one region (Berlin) on this machine, driven by scripted cars and stations.

`python -m demo` (or `./scripts/demo`, which sets the machine up first) starts a real Mosquitto
broker with auth and ACL on a loopback port, the real gateway process over the whole Berlin
register (data/berlin_charging_stations_bnetza.csv), eight real stations around Alexanderplatz
and ten cars with models from data/ev_models_open_ev_data.json as MQTT clients, and plays a
timeline through the reservation lifecycle (docs/protocol.md), printing every message. At the
end it shows the reservations from the gateway's database and stops everything it started.

Modules: `actors` (the timeline printer, scripted stations and cars), `scenario` (the scenes),
`run` (broker, gateway process, clean-up, command line).
"""
