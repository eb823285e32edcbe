"""Wi-Fi station connect with backoff, non-blocking.

    wlan = network.WLAN(network.STA_IF)          # built by the app, passed in
    w = Wifi(wlan, cfg["wifi"]["ssid"], cfg["wifi"]["password"], Backoff())
    while True:
        if w.poll(time.ticks_ms()):              # True while connected
            ...

poll() never waits: when not connected and a retry is due it starts `wlan.connect()` and
returns; the radio connects in the background. An attempt gets _ATTEMPT_MS to succeed,
then the next one waits a backoff delay on top.
"""
import time
from micropython import const

import log

_ATTEMPT_MS = const(10000)  # how long one wlan.connect() may take before we try again


class Wifi:
    def __init__(self, wlan, ssid, password, backoff):
        self._wlan = wlan
        self._ssid = ssid
        self._password = password
        self._backoff = backoff
        self._up = False
        self._due = None  # ticks_ms of the next attempt; None = at the next poll
        self._active = False

    @property
    def connected(self):
        """True when the last poll() saw the station connected."""
        return self._up

    def poll(self, now_ms):
        """Check the link; start a (re)connect when due. Returns `connected`."""
        wlan = self._wlan
        if wlan.isconnected():
            if not self._up:
                self._up = True
                self._backoff.reset()
                log.info("wifi: connected to", self._ssid)
            return True
        if self._up:
            self._up = False
            self._due = None
            log.warn("wifi: connection lost")
        if self._due is None or time.ticks_diff(now_ms, self._due) >= 0:
            self._start(now_ms)
        return False

    def _start(self, now_ms):
        try:
            if not self._active:
                self._wlan.active(True)
                self._active = True
            else:
                self._wlan.disconnect()  # abandon the previous attempt
            self._wlan.connect(self._ssid, self._password)
            log.info("wifi: connecting to", self._ssid)
        except OSError as e:
            log.warn("wifi: connect failed:", e)
        self._due = time.ticks_add(now_ms, _ATTEMPT_MS + self._backoff.delay())
