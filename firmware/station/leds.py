"""The station's LEDs: one RGB LED per slot (common cathode: 1 = lit) and the status LED.

    leds = Leds([(r1, g1, b1), (r2, g2, b2)], status_pin)   # machine.Pin outputs, passed in
    leds.show(0, slots.OCCUPIED)        # slot 1 red, written at once
    leds.status(connected, now_ms)      # steady on / blinking 2 Hz

Slot colours (docs/firmware.md): free green, reserved blue, occupied red, out of service
yellow (red + green). Status LED: on while the gateway is reachable (the broker connection
is up), blinking at 2 Hz while it is not. Pins are only written when their value changes.
"""
from micropython import const

_BLINK_HALF_MS = const(250)  # 2 Hz: 250 ms on, 250 ms off

# (red, green, blue) per slot state, indexed like slots.NAMES
COLOURS = ((0, 1, 0), (0, 0, 1), (1, 0, 0), (1, 1, 0))


class Leds:
    def __init__(self, rgb_pins, status_pin):
        self._rgb = rgb_pins  # [(red, green, blue), ...] output pins
        self._status = status_pin
        self._shown = bytearray(len(rgb_pins))  # state index shown per slot, 255 = unknown
        for i in range(len(rgb_pins)):
            self._shown[i] = 255
        self._status_on = -1

    def show(self, i, state):
        """Show slot i (0-based) in the colour of `state` (slots.FREE ... slots.OUT_OF_SERVICE)."""
        if self._shown[i] == state:
            return
        self._shown[i] = state
        rgb = COLOURS[state]
        pins = self._rgb[i]
        # channels going off first: between two colours the LED is dark for a moment, never
        # a third colour (blue -> red would otherwise flash magenta)
        for level in (0, 1):
            for c in range(3):
                if rgb[c] == level:
                    pins[c].value(level)

    def status(self, reachable, now_ms):
        """Status LED: steady on when reachable, else blinking 2 Hz (phase from now_ms)."""
        on = 1 if reachable else (now_ms // _BLINK_HALF_MS) & 1
        if on != self._status_on:
            self._status_on = on
            self._status.value(on)

    def off(self):
        """Every LED off (halt state)."""
        for i in range(len(self._rgb)):
            for p in self._rgb[i]:
                p.value(0)
            self._shown[i] = 255
        self._status.value(0)
        self._status_on = 0
