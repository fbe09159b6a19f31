package main

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// pprofServer serves Go's runtime profiles on an address of their own, never on the API's: a
// profile shows the process's internals and costs CPU, so it is off unless --pprof-addr names
// an address, which should be loopback or otherwise private.
type pprofServer struct {
	srv  *http.Server
	addr net.Addr
	done chan struct{}
}

func startPprof(addr string, log *slog.Logger) (*pprofServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	p := &pprofServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, addr: ln.Addr(), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		if err := p.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("pprof listener stopped", "err", err)
		}
	}()
	log.Info("serving pprof", "addr", p.addr.String())
	return p, nil
}

// close stops the listener at once: a profile still being taken (a CPU profile lasts 30 s) is
// cut off rather than holding up the server's shutdown, as it only informs.
func (p *pprofServer) close() {
	p.srv.Close()
	<-p.done
}
