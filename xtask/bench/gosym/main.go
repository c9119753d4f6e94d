// gosym: Go's own debug/gosym on a Go binary, for `cargo xtask bench` to set crashwatch's
// pclntab reader beside. `gosym pcs BIN N` prints N addresses spread over BIN's .text
// (a fixed seed); `gosym bench BIN FILE` parses BIN's pclntab and looks up every address in
// FILE, printing parse_ns, lookups, lookup_ns and named.
package main

import (
	"debug/elf"
	"debug/gosym"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"time"
)

func die(err error) {
	fmt.Fprintln(os.Stderr, "gosym:", err)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 4 {
		die(fmt.Errorf("usage: gosym pcs BIN N | gosym bench BIN FILE"))
	}
	f, err := elf.Open(os.Args[2])
	if err != nil {
		die(err)
	}
	text := f.Section(".text")
	switch os.Args[1] {
	case "pcs":
		n, _ := strconv.Atoi(os.Args[3])
		r := rand.New(rand.NewSource(1))
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("%#x", text.Addr+uint64(r.Int63n(int64(text.Size))))
		}
		fmt.Println(strings.Join(out, " "))
	case "bench":
		raw, err := os.ReadFile(os.Args[3])
		if err != nil {
			die(err)
		}
		var pcs []uint64
		for _, w := range strings.Fields(string(raw)) {
			v, err := strconv.ParseUint(strings.TrimPrefix(w, "0x"), 16, 64)
			if err != nil {
				die(err)
			}
			pcs = append(pcs, v)
		}
		t0 := time.Now()
		data, err := f.Section(".gopclntab").Data()
		if err != nil {
			die(err)
		}
		tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, text.Addr))
		if err != nil {
			die(err)
		}
		parse := time.Since(t0)
		named := 0
		t1 := time.Now()
		for _, pc := range pcs {
			if _, _, fn := tab.PCToLine(pc); fn != nil {
				named++
			}
		}
		look := time.Since(t1)
		fmt.Printf("parse_ns=%d lookups=%d lookup_ns=%d named=%d\n", parse.Nanoseconds(), len(pcs), look.Nanoseconds(), named)
	}
}
