package main

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestStartAllocatesLittleBeforeMain: the package initialisers of the real binary, which every
// command and every start pays before main, allocate under 4 MiB in all (about 0.5 MiB today).
// An argon2id hash made at init took 19 MiB and tens of milliseconds of every start.
func TestStartAllocatesLittleBeforeMain(t *testing.T) {
	cmd := exec.Command(awardeeBinary(t), "help")
	cmd.Env = append(cmd.Environ(), "GODEBUG=inittrace=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("awardee help: %v\n%s", err, out)
	}
	// Each line: init <package> @<t> ms, <t> ms clock, <n> bytes, <n> allocs
	var total int64
	var inits int
	heaviest, heaviestBytes := "", int64(0)
	for line := range strings.Lines(string(out)) {
		fields := strings.Fields(line)
		if len(fields) != 11 || fields[0] != "init" || fields[8] != "bytes," {
			continue
		}
		n, err := strconv.ParseInt(fields[7], 10, 64)
		if err != nil {
			t.Fatalf("cannot read %q: %v", line, err)
		}
		inits++
		total += n
		if n > heaviestBytes {
			heaviest, heaviestBytes = fields[1], n
		}
	}
	if inits == 0 {
		t.Fatalf("no init trace in the output:\n%s", out)
	}
	if total > 4<<20 {
		t.Errorf("package initialisers allocate %d bytes before main, the most %s with %d", total, heaviest, heaviestBytes)
	}
}
