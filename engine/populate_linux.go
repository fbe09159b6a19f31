package engine

import "syscall"

// populateFlag makes the kernel read a mapped file in when it is mapped, in large sequential
// reads, instead of on each first touch of a page.
const populateFlag = syscall.MAP_POPULATE
