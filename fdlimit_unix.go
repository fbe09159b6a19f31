//go:build unix

package main

import "syscall"

// descriptorLimit is the process's soft limit on open files (0 when it cannot be read). Go
// raises the soft limit to the hard one at start, so this is what the process can really use.
func descriptorLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	return rl.Cur
}
