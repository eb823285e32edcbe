"""The local harness shared by the tests, the benchmarks and the demo (not installed).

One of each: `wait` (the bounded wait-until), `process` (the child-process handle every
program started here is stopped by, by its pid), `broker` (a real Mosquitto on a free loopback
port, auth and ACL on), `clients` (the paho test client, Mosquitto's command-line clients),
`services` (the gateway and central as child processes), `central` (the central broker and
bridged region brokers), `regions` (several bridged regions and central at once),
`micropython` and `car_board` (the firmware on the MicroPython unix port), `systemd`
(systemd's checks of the units).
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout: firmware/, boards/, data/, bench/
