package main

import (
	"math"
	"os"
	"runtime/debug"
	"testing"
)

// TestGCDefaults: with neither GOGC nor GOMEMLIMIT in the environment the server collects less
// often under a soft memory limit; with either set, the environment's settings stand.
func TestGCDefaults(t *testing.T) {
	percent, limit := debug.SetGCPercent(100), debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() {
		debug.SetGCPercent(percent)
		debug.SetMemoryLimit(limit)
	})
	for _, tc := range []struct {
		env     map[string]string
		percent int
		limit   int64
	}{
		{env: nil, percent: defaultGCPercent, limit: defaultMemoryLimit},
		{env: map[string]string{"GOGC": "100"}, percent: 100, limit: math.MaxInt64},
		{env: map[string]string{"GOMEMLIMIT": "1GiB"}, percent: 100, limit: math.MaxInt64},
	} {
		for _, name := range []string{"GOGC", "GOMEMLIMIT"} {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
		for k, v := range tc.env {
			t.Setenv(k, v)
		}
		debug.SetGCPercent(100)
		debug.SetMemoryLimit(math.MaxInt64)
		setGCDefaults()
		if got := debug.SetGCPercent(100); got != tc.percent {
			t.Errorf("env %v: GC percent %d, want %d", tc.env, got, tc.percent)
		}
		if got := debug.SetMemoryLimit(-1); got != tc.limit {
			t.Errorf("env %v: memory limit %d, want %d", tc.env, got, tc.limit)
		}
	}
}
