import car_app
car_app.main()
