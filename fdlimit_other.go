//go:build !unix

package main

// descriptorLimit is unknown off Unix; the connection cap then uses its fixed default.
func descriptorLimit() uint64 { return 0 }
