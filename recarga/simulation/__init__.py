"""City simulation: the real gateway engine and selection over Berlin's stations, a day of cars.

Modules, one job each: `evmodels` (car models and charge curves), `demand` (who asks where
and when), `stations` (the physical stations: slots, plugs, queues), `loop` (the event loop
that drives `gateway.engine.Engine`), `metrics`, `report` (table, CSV, plots), `cli`.
See docs/simulation.md.
"""
