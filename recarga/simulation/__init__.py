"""City simulation: the real gateway engine and selection over Berlin's stations, a day of cars.

Modules, one job each: `demand` (who asks where and when), `sites` (the physical stations:
slots, plugs, queues), `loop` (the event loop that drives `recarga.gateway.engine.Engine`),
`metrics`, `report` (table, CSV, plots), `cli`; the car models and charge curves are
`recarga.core.evmodels`.
See docs/simulation.md.
"""
