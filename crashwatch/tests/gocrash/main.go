// Crash programs for crashwatch's Go tests: one binary, one mode per way for Go to die.
// Facts the tests check are printed on stdout as key=value lines before dying.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type custom struct {
	A int
	B string
}

type stringer struct{}

func (stringer) String() string { return "i am a stringer" }

// goid reads the calling goroutine's id from its own traceback header.
func goid() int {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	f := strings.Fields(string(buf))
	id, _ := strconv.Atoi(f[1])
	return id
}

func say(k string, v any) { fmt.Printf("%s=%v\n", k, v) }

//go:noinline
func recurse(n int) int { return recurse(n+1) + 1 }

// mustPositive is small enough for the compiler to inline into its caller: its panic's frame
// exists only in the inline tree.
func mustPositive(n int) int {
	if n < 0 {
		panic("boom: inlined")
	}
	return n
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gocrash MODE")
		os.Exit(64)
	}
	say("pid", os.Getpid())
	say("goid", goid())
	switch os.Args[1] {
	case "noop":
		return
	case "inlined":
		say("n", mustPositive(-len(os.Args)))
	case "string":
		panic("boom: a string")
	case "error":
		panic(errors.New("boom: an error"))
	case "custom":
		panic(custom{A: 7, B: "x"})
	case "stringer":
		panic(stringer{})
	case "nilmap":
		var m map[string]int
		m["a"] = 1
	case "nilptr":
		var p *custom
		say("a", p.A)
	case "index":
		s := []int{1, 2, 3}
		say("v", s[len(os.Args)+3])
	case "mapwrite":
		m := map[int]int{}
		var wg sync.WaitGroup
		for w := 0; w < 2; w++ {
			wg.Add(1)
			go func() {
				say("writer", goid())
				for i := 0; ; i++ {
					m[i%100] = i
				}
			}()
		}
		wg.Wait()
	case "overflow":
		say("v", recurse(0))
	case "deadlock":
		select {}
	case "goroutine":
		done := make(chan int)
		go func() {
			say("panicker", goid())
			panic("boom: in a goroutine")
		}()
		<-done
	case "nested":
		// A deferred cleanup that panics while the first panic unwinds: the root cause is
		// the first value, the one that kills is the second.
		func() {
			defer func() { panic("boom: cleanup failed") }()
			panic(errors.New("boom: connection reset"))
		}()
	case "recover":
		func() {
			defer func() { say("recovered", recover()) }()
			panic("boom: recovered")
		}()
		os.Exit(0)
	case "exit3":
		fmt.Fprintln(os.Stderr, "giving up: exit 3")
		os.Exit(3)
	case "cgo":
		cgoCrash()
	case "churn":
		// Garbage for the collector (GODEBUG=gctrace=1 tests), some of it kept so the live
		// heap grows, then a panic.
		var keep [][]byte
		for i := 0; i < 400; i++ {
			b := make([]byte, 1<<20)
			if i%20 == 0 {
				keep = append(keep, b)
			}
		}
		say("kept", len(keep))
		panic("boom: after churn")
	case "sleep":
		time.Sleep(time.Minute)
	case "on-usr1":
		// Panics when told to: a test can wait until the agent is ready for it.
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGUSR1)
		<-c
		panic("boom: on SIGUSR1")
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(64)
	}
	os.Exit(99)
}
