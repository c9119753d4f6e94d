// N writes of 64 bytes to stderr through os.Stderr: a probed Go binary's ordinary writes.
package main

import (
	"bytes"
	"os"
	"strconv"
)

func main() {
	n, _ := strconv.Atoi(os.Args[1])
	buf := bytes.Repeat([]byte("x"), 64)
	for i := 0; i < n; i++ {
		if _, err := os.Stderr.Write(buf); err != nil {
			os.Exit(1)
		}
	}
}
