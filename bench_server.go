package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/awardee/awardee/bench/load"
	"github.com/awardee/awardee/engine"
	"github.com/valyala/fasthttp"
)

// startBenchServer is the server `awardee bench` loads when it is given no --url: the real
// server, on 127.0.0.1 and a data directory of its own in dir, with an org whose window is the
// widest section 8 allows, so the figures are the server's and not a rate limit's.
func startBenchServer(dir string, opts load.ServeOptions) (load.Target, func() error, error) {
	cfg := defaultConfig()
	cfg.Data = dir
	cfg.AllowPrivateNetworks = opts.AllowPrivateNetworks
	// Every bench connection comes from 127.0.0.1, like a reverse proxy's.
	cfg.MaxConnsPerIP = 0
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return load.Target{}, nil, err
	}
	cfg.Addr = ln.Addr().String()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := newServer(cfg, logger, io.Discard)
	if err != nil {
		ln.Close()
		return load.Target{}, nil, err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	stop := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		return errors.Join(srv.Close(ctx), <-served)
	}
	created, err := srv.db.CreateOrg(context.Background(), engine.NewOrg{Name: "bench", Rate: engine.MaxRate, Burst: engine.MaxBurst})
	if err == nil {
		err = waitHealthy("http://" + cfg.Addr)
	}
	if err != nil {
		return load.Target{}, nil, errors.Join(err, stop())
	}
	return load.Target{URL: "http://" + cfg.Addr, APIKey: created.APIKey, WidgetKey: created.WidgetKey}, stop, nil
}

// waitHealthy returns once the server answers /healthz: a Close before Serve has registered its
// listener would find nothing to stop.
func waitHealthy(url string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, _, err := fasthttp.GetTimeout(nil, url+"/healthz", time.Second)
		if err == nil && status == fasthttp.StatusOK {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the in-process server did not answer /healthz within 10s (status %d, %v)", status, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
