// Command bench is Awardee's load generator, the same as `awardee bench` but without a server of
// its own, so it always needs --url and --key:
//
//	go run ./bench --url http://127.0.0.1:8080 --key ak_… --concurrency 64 --requests 50000 --ceiling
//
// `awardee bench` (`go run . bench`) with no --url starts the server in process instead.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/awardee/awardee/bench/load"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := load.Main(ctx, os.Args[1:], os.Stdout, os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
