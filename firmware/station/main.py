# Station board entry point: start-up only (docs/firmware.md).
import station_app

station_app.main()
