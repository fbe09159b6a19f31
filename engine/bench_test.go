package engine

import (
	"context"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
)

// The two benchmarks are meant to be read as a ratio: BenchmarkBareAppend is the commit loop with
// the least possible work per unit, so BenchmarkPostMessage / BenchmarkBareAppend is how much of
// the loop's raw throughput a real message post keeps (reads, JSON, index, event, counters).
// Both run the same 64 concurrent writers on a real bbolt file, fsync included.

// benchWriters is the number of concurrent writers: a busy server's worth of requests in flight.
const benchWriters = 64

// setWriters makes RunParallel start about benchWriters goroutines whatever GOMAXPROCS is, and
// returns how many it will start.
func setWriters(b *testing.B) int {
	procs := runtime.GOMAXPROCS(0)
	p := (benchWriters + procs - 1) / procs
	b.SetParallelism(p)
	return p * procs
}

// reportWrites reports the throughput, the mean batch size since before (how many units each
// fsync carried), which tells an I/O-bound run from a CPU-bound one, and the page writes each
// batch made (bbolt's count: one per contiguous run of dirty pages, plus the meta page).
func reportWrites(b *testing.B, db *DB, before CommitStats, writesBefore int64) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N)/s, "writes/s")
	}
	after := db.CommitStats()
	if n := after.Batches - before.Batches; n > 0 {
		b.ReportMetric(float64(after.Units-before.Units)/float64(n), "units/batch")
		b.ReportMetric(float64(pageWrites(db)-writesBefore)/float64(n), "page-writes/batch")
	}
}

// BenchmarkPostMessage: each writer posts agent replies into its own open conversation, so the
// figure is the commit path's, not contention on one thread's seq.
func BenchmarkPostMessage(b *testing.B) {
	db := openTestDB(b)
	org := newTestOrg(b, db)
	writers := setWriters(b)
	convs := make([]string, writers)
	for i := range convs {
		convs[i] = newConv(b, db, org.OrgID, StatusOpen).ID
	}
	// 200 bytes of text, the same payload as the bare append's value.
	text := strings.Repeat("x", 200)
	var next atomic.Int64
	before, writes := db.CommitStats(), pageWrites(db)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		conv := convs[int(next.Add(1)-1)%len(convs)]
		in := NewMessage{OrgID: org.OrgID, ConversationID: conv, Author: AuthorAgent, APIKeyID: "key_bench", Text: text}
		for pb.Next() {
			if _, _, err := db.PostMessage(context.Background(), in, nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportWrites(b, db, before, writes)
}

// BenchmarkBareAppend: each unit puts one 200-byte value under a new big-endian key (so every
// put appends at the end of the B+tree, the cheapest write bbolt has) into one bucket.
func BenchmarkBareAppend(b *testing.B) {
	db := openTestDB(b)
	bucket := []byte("bench")
	err := db.Update(context.Background(), func(tx *Tx) error {
		_, err := tx.bolt.CreateBucketIfNotExists(bucket)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	setWriters(b)
	value := make([]byte, 200)
	var seq atomic.Uint64
	before, writes := db.CommitStats(), pageWrites(db)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := u64(seq.Add(1))
			err := db.Update(context.Background(), func(tx *Tx) error {
				return tx.bolt.Bucket(bucket).Put(key, value)
			})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportWrites(b, db, before, writes)
}

// pageWrites is how many writes bbolt has made to the file since Open.
func pageWrites(db *DB) int64 {
	stats := db.bolt.Stats().TxStats
	return stats.GetWrite()
}
