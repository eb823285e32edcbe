"""City simulation: the real gateway engine and selection over any city's stations, a day of cars.

Modules, one job each: `demand` (who asks where and when, from parameters), `scenario`
(scenario files), `replay` (a real session log as demand), `city` (a synthetic small city
with hubs), `physical` (devices and sites: slots, plugs, queues), `loop` (the event loop that
drives `recarga.gateway.engine.Engine`), `metrics`, `labels` (city and attribution),
`report` (table, CSV, plots, goals), `cli`, `matrix` (every policy over several cities and
loads); stations, sites and car models come from `recarga.core`.
See docs/simulation.md.
"""
