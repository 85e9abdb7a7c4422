module gofincompare

go 1.24
