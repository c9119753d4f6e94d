module example.com/gowrite

go 1.19
