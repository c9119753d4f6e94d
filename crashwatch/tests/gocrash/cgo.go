//go:build cgo

package main

/*
#include <stdio.h>
static void crash_in_c(void) {
	volatile int *p = (int *)0x18;
	*p = 1;
}
*/
import "C"

func cgoCrash() { C.crash_in_c() }
