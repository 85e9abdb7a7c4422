module gofincompare

go 1.19
