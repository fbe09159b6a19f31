package blobs

import (
	"bytes"
	"context"
	"encoding/binary"
	"image"
	"image/png"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

// bigPNG is a real, uncompressed PNG of noise just under the 15 MiB limit once the per-request
// suffix is added.
func bigPNG(b *testing.B) []byte {
	b.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, 1950, 1950))
	r := rand.New(rand.NewPCG(1, 2))
	for i := range img.Pix {
		img.Pix[i] = byte(r.Uint32())
	}
	var buf bytes.Buffer
	if err := (&png.Encoder{CompressionLevel: png.NoCompression}).Encode(&buf, img); err != nil {
		b.Fatal(err)
	}
	if buf.Len()+8 > DefaultMaxBytes {
		b.Fatalf("fixture of %d bytes is over the limit", buf.Len())
	}
	return buf.Bytes()
}

// BenchmarkFetchImage measures fetch → hash → check → fsync'd commit of a ~14.5 MiB image
// from a local server. "new" gives every request distinct bytes (a trailer after IEND), so
// each iteration writes and syncs a new blob; "dedup" serves identical bytes, so after the
// first iteration nothing is committed.
func BenchmarkFetchImage(b *testing.B) {
	body := bigPNG(b)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)+8))
		_, _ = w.Write(body)
		var trailer [8]byte
		if r.URL.Path == "/new" {
			n, _ := strconv.ParseUint(r.URL.Query().Get("n"), 10, 64)
			binary.BigEndian.PutUint64(trailer[:], n)
		}
		_, _ = w.Write(trailer[:])
	}))
	defer srv.Close()
	for _, mode := range []string{"new", "dedup"} {
		b.Run(mode, func(b *testing.B) {
			f := NewFetcher(FetchOptions{AllowPrivate: true})
			defer f.Close()
			s, err := Open(b.TempDir(), Options{})
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(body) + 8))
			for i := 0; b.Loop(); i++ {
				a, err := f.FetchImage(context.Background(), s, srv.URL+"/"+mode+"?n="+strconv.Itoa(i))
				if err != nil {
					b.Fatal(err)
				}
				if a.Width != 1950 {
					b.Fatalf("asset %+v", a)
				}
			}
		})
	}
}

// BenchmarkOpenBlob reads one 15 MiB blob from 32 goroutines at once. "verified" is the usual
// read, vouched for by the cache; "rehash" re-hashes on every open (ReverifyAfter of 1ns), the
// worst case, where VerifyConcurrency and pooled buffers keep memory flat: compare B/op.
func BenchmarkOpenBlob(b *testing.B) {
	data := make([]byte, DefaultMaxBytes)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	for _, mode := range []struct {
		name  string
		every time.Duration
	}{{"verified", 0}, {"rehash", time.Nanosecond}} {
		b.Run(mode.name, func(b *testing.B) {
			s, err := Open(b.TempDir(), Options{ReverifyAfter: mode.every})
			if err != nil {
				b.Fatal(err)
			}
			st, err := s.Put(context.Background(), bytes.NewReader(data))
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					blob, err := s.Open(context.Background(), st.Hash)
					if err != nil {
						b.Error(err)
						return
					}
					_, err = io.Copy(io.Discard, blob)
					blob.Close()
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
