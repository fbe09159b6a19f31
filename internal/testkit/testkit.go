// Package testkit holds the waiting helpers every test suite of the project shares. Each wait
// has a deadline, so a lost answer fails the test instead of hanging it, and none sleeps for a
// guessed duration to synchronise. It imports nothing of the project, so the engine's own
// tests can use it; callers pass small adapters (a function that runs a block in a write unit)
// instead.
package testkit

import (
	"sync"
	"testing"
	"time"
)

// Timeout bounds every wait. It is generous because the race detector on two cores slows
// fsync-bound work down a lot, and it is only ever reached when a test fails.
const Timeout = 20 * time.Second

// WaitFor polls cond until it holds and fails the test at the deadline. It is only for states
// that offer no channel to wait on, such as a unit sitting in the commit queue. The poll starts
// fast and backs off, so short waits stay short and long ones cost little CPU.
func WaitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(Timeout)
	pause := 50 * time.Microsecond
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", Timeout, what)
		}
		time.Sleep(pause)
		pause = min(2*pause, 10*time.Millisecond)
	}
}

// Recv waits for one value from ch and fails the test at the deadline.
func Recv[T any](tb testing.TB, what string, ch <-chan T) T {
	tb.Helper()
	timer := time.NewTimer(Timeout)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		tb.Fatalf("timed out after %s waiting for %s", Timeout, what)
		panic("unreachable")
	}
}

// WaitAll waits for wg with a deadline.
func WaitAll(tb testing.TB, what string, wg *sync.WaitGroup) {
	tb.Helper()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	Recv(tb, what, done)
}

// HoldCommitLoop parks a commit loop inside one write unit. While it is held, every unit
// submitted afterwards waits in the queue, and the loop then takes them all into one batch: the
// only way to build a batch of known content without reaching into the loop.
//
// submit must run block inside one write unit and return that unit's error; it is called on a
// goroutine of its own. block may run more than once (a batch re-runs when a neighbour fails);
// only its first run holds. release lets the holding unit commit and waits for its answer; the
// test's end releases it too, so a failing test cannot hang in the database's Close.
func HoldCommitLoop(tb testing.TB, submit func(block func()) error) (release func()) {
	tb.Helper()
	entered, unblock := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	var enterOnce, unblockOnce sync.Once
	tb.Cleanup(func() { unblockOnce.Do(func() { close(unblock) }) })
	go func() {
		done <- submit(func() {
			enterOnce.Do(func() { close(entered) })
			<-unblock
		})
	}()
	Recv(tb, "the holding unit to enter its transaction", entered)
	return func() {
		tb.Helper()
		unblockOnce.Do(func() { close(unblock) })
		if err := Recv(tb, "the holding unit's answer", done); err != nil {
			tb.Fatalf("holding unit: %v", err)
		}
	}
}
