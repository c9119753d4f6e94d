//go:build !cgo

package main

func cgoCrash() { panic("built without cgo") }
