package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Profiles are served only on --pprof-addr, never on the API's listener, and stop with the server.
func TestPprofOnlyOnItsOwnAddress(t *testing.T) {
	ts := newTestServer(t, func(c *Config) { c.PprofAddr = "127.0.0.1:0" })
	if ts.pprof == nil {
		t.Fatal("--pprof-addr started no listener")
	}
	url := "http://" + ts.pprof.addr.String() + "/debug/pprof/"
	client := &http.Client{Timeout: 10 * time.Second}
	res, err := client.Get(url + "goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(body), "goroutine profile") {
		t.Fatalf("pprof answered %d: %.200s", res.StatusCode, body)
	}
	mustStatus(t, ts.do(t, "GET", "/debug/pprof/", "", nil), 404)
	ts.stop(t)
	if res, err := client.Get(url); err == nil {
		res.Body.Close()
		t.Fatal("pprof still answers after the server closed")
	}

	plain := newTestServer(t)
	if plain.pprof != nil {
		t.Fatal("pprof runs without --pprof-addr")
	}
}
