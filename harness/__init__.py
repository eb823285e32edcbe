"""The local harness shared by the tests, the benchmarks and the demo (not installed).

Real Mosquitto brokers on free loopback ports (`broker`, `central`), the gateway and central as
child processes (`services`), paho and Mosquitto command-line clients (`clients`), the firmware
on the MicroPython unix port (`micropython`, `car_board`). Everything started is stopped by pid.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout: firmware/, boards/, data/, bench/
