import car_boot
app = car_boot.boot()
del car_boot
app.run()
