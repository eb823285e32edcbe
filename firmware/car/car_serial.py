# The car's serial console: non-blocking line input (select.poll on sys.stdin, a preallocated
# line buffer) and the commands
#   pos <lat> <lon>   the car is here (overrides the route; the region check runs at once)
#   pos route         follow the route again
#   pos? / soc? / status
import gc
import sys
import time

from micropython import const

_LINE = const(80)


class Console:
    def __init__(self, app):
        self._app = app
        self._buf = bytearray(_LINE)
        self._n = 0
        self._poll = None
        try:
            import select

            p = select.poll()
            p.register(sys.stdin, select.POLLIN)
            self._poll = p
        except Exception as e:  # no pollable stdin: no commands, the car still drives
            print("car: no serial input:", e)

    def poll(self):
        """Read what has arrived (at most one line's worth), run complete lines."""
        p = self._poll
        for _ in range(_LINE):
            if p is None or not p.poll(0):
                return
            ch = sys.stdin.read(1)
            if not ch:  # EOF
                p.unregister(sys.stdin)
                self._poll = None
                return
            if ch == "\n" or ch == "\r":
                if self._n:
                    line = bytes(self._buf[:self._n]).decode()
                    self._n = 0
                    self.command(line)
            elif self._n < _LINE:
                self._buf[self._n] = ord(ch)
                self._n += 1

    def command(self, line):
        app = self._app
        rt = app.route
        w = line.split()
        c = w[0] if w else ""
        if c == "pos" and len(w) == 3:
            try:
                lat = float(w[1])
                lon = float(w[2])
                ok = -90 <= lat <= 90 and -180 <= lon <= 180
            except ValueError:
                ok = False
            if not ok:
                print("pos: bad coordinates")
                return
            rt.set_position(lat, lon)
            app._t[2] = time.ticks_add(time.ticks_ms(), -1000000)  # region check at once
        elif c == "pos" and w[1:] == ["route"]:
            rt.resume()
        elif c == "soc?":
            b = app.battery
            print("soc: %.3f (%.1f V), low %s" % (b.soc or 0, b.volts or 0, b.low))
            return
        elif c == "status":
            gc.collect()
            print("%s, region %s, heap %d used %d free" % (app.logic.status_line(), app.regions[app.region][0],
                                                         gc.mem_alloc(), gc.mem_free()))
            return
        elif c != "pos?":
            print("commands: pos <lat> <lon> | pos route | pos? | soc? | status")
            return
        print("pos: %.5f %.5f%s" % (rt.lat, rt.lon, " (set over serial)" if rt.override else ""))
