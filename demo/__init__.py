"""The Recarga demo: one region (Berlin) on this machine, with virtual boards, then scripted
cars and stations; then three bridged regions and central, with an overflow.

`python -m demo` (or `./scripts/demo`, which sets the machine up first) starts a real Mosquitto
broker with auth and ACL on a loopback port and the real gateway process over the whole Berlin
register (data/berlin_charging_stations_bnetza.csv). First two station boards (real stations
near Alexanderplatz) and three car boards (models from data/ev_models_open_ev_data.json) run
the unmodified firmware on the MicroPython unix port (boards/virtual); the demo turns their
potentiometers and presses their buttons and prints their serial lines, their LEDs and the
gateway's log lines about them (`--no-boards` skips this act). Then eight real stations around
Alexanderplatz and ten cars as scripted MQTT clients play a timeline through the reservation
lifecycle (docs/protocol.md), printing every message. At the end it shows the reservations from
the gateway's database. Then Berlin as three regions (west, mitte, ost), each its own bridged
Mosquitto and gateway with [overflow] on, and central: west is full, a car there is sent to
mitte, hands over and checks in; with central's broker gone, west answers at once. At the end
it stops everything it started.

Modules: `actors` (the timeline printer, scripted stations and cars), `boards` (the virtual-board
act), `scenario` (the scripted scenes), `regions` (the regions act), `run` (broker, gateway
process, clean-up, command line).
"""
