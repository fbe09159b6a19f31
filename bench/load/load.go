// Package load is Awardee's load generator: it opens conversations on a server and posts into
// them from many clients, for a bounded count and time, closed loop (each client sends its next
// post when the last is answered) or open loop (posts sent on a fixed schedule, each one's latency
// counted from when it was due, so a stalled server is charged for every post it held back, as
// wrk2 does). It reports throughput, the latency distribution (HDR histogram: tail percentiles
// exact to three significant digits) and every refusal by status and error code, and can run the
// same load against reference servers on the same disk (package ceiling) to say how close the
// server comes to what the machine can do.
package load

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"
)

// Config is one load run. Requests and Duration both bound it: it stops at whichever comes first.
type Config struct {
	URL           string
	APIKey        string
	WidgetKey     string // visitor mix: the org's widget key (wk_…)
	Conversations int
	Concurrency   int
	Requests      int
	Duration      time.Duration
	TextSize      int
	Idempotency   bool // send a unique Idempotency-Key with every post

	// Rate, when positive, makes the run an open loop: posts are due at Rate per second and
	// Concurrency connections send them. Zero is the closed loop. The realtime mode posts at
	// Rate (20 per second when zero).
	Rate float64
	// Mix is what is posted: text (team replies), attachments (team replies with an image from
	// a fixture server this process starts), visitor (visitors through /widget and team replies
	// in turn) or realtime (the realtime mode).
	Mix string
	// Ceiling runs the same load against the reference servers of package ceiling, on the disk
	// of Dir, after the server, and reports the server's throughput as a share of each.
	Ceiling bool
	// Rounds repeats the whole run, every target again, the order reversed every other round.
	Rounds int
	// Dir is where the in-process server's data directory and the reference servers' files go
	// (a temporary directory inside it, removed afterwards); empty is the system's temporary
	// directory. Put it on the disk you mean to measure.
	Dir string
	// Serve starts a server in this process when URL is empty; `awardee bench` sets it, and
	// `go run ./bench`, which has no server in it, leaves it nil.
	Serve ServeFunc
	// Progress, when set, gets one line a second while posts run.
	Progress io.Writer
	// JSON makes Main print the report as one JSON object.
	JSON bool

	// Mode is post (the default: posts from many clients), realtime (WebSocket subscribers and
	// the 201-to-frame latency) or idle (idle WebSockets and the server's memory per connection).
	Mode        string
	Subscribers int           // realtime: WebSocket subscribers of the org
	Connections int           // idle: WebSockets to open
	ServerPID   int           // idle: the server whose RSS to read; 0 reads this process's own
	Settle      time.Duration // idle: how long the connections stay idle before the second reading
}

// Target is a server to load: its base URL and the keys of an org whose window allows the load.
type Target struct {
	URL, APIKey, WidgetKey string
}

// ServeOptions is what the run needs of an in-process server.
type ServeOptions struct {
	// AllowPrivateNetworks lets the server fetch attachments from the fixture server on
	// 127.0.0.1, which it refuses by default.
	AllowPrivateNetworks bool
}

// ServeFunc starts a server in this process on a fresh data directory inside dir, with an org
// whose rate window allows any load, and returns it with a function that stops it.
type ServeFunc func(dir string, opts ServeOptions) (Target, func() error, error)

// DefaultConfig is what `awardee bench` runs without flags.
func DefaultConfig() Config {
	return Config{
		Conversations: 64, Concurrency: 64, Requests: 50_000, Duration: 30 * time.Second, TextSize: 64,
		Rounds: 1, Mix: "text", Mode: "post", Subscribers: 100, Connections: 1000, Settle: 3 * time.Second,
	}
}

// BindFlags binds every field of c to fs; AWARDEE_BENCH_* variables are not read: a load run
// should say what it does on its command line.
func BindFlags(fs *flag.FlagSet, c *Config) {
	fs.StringVar(&c.URL, "url", c.URL, "base URL of the server; empty starts one in this process on a temporary data directory (awardee bench only)")
	fs.StringVar(&c.APIKey, "key", c.APIKey, "API key (ak_…) of the org to load; its rate window must allow the load")
	fs.StringVar(&c.WidgetKey, "widget-key", c.WidgetKey, "visitor mix: the org's widget key (wk_…)")
	fs.IntVar(&c.Conversations, "conversations", c.Conversations, "conversations to open and post into (visitor mix: each allows a visitor 5 posts/s)")
	fs.IntVar(&c.Concurrency, "concurrency", c.Concurrency, "connections (closed loop: clients, each with one post in flight)")
	fs.IntVar(&c.Requests, "requests", c.Requests, "posts to send at most")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "how long to post at most")
	fs.IntVar(&c.TextSize, "text-size", c.TextSize, "characters per message")
	fs.BoolVar(&c.Idempotency, "idempotency", c.Idempotency, "send an Idempotency-Key with every post")
	fs.Float64Var(&c.Rate, "rate", c.Rate, "posts per second: an open loop, latency counted from when each post was due; 0 is the closed loop (realtime: 20)")
	fs.StringVar(&c.Mix, "mix", c.Mix, "text, attachments (an image each, from a fixture server on 127.0.0.1), visitor (/widget posts and team replies) or realtime (as --mode realtime)")
	fs.BoolVar(&c.Ceiling, "ceiling", c.Ceiling, "also run the load against the reference servers (no-write, one-row, post-rows) on the disk of --dir and print the ratios")
	fs.IntVar(&c.Rounds, "rounds", c.Rounds, "run every target this many times, the order reversed every other round, and sum each target's rounds")
	fs.StringVar(&c.Dir, "dir", c.Dir, "parent of the in-process server's data and the reference servers' files (default: the system's temporary directory)")
	fs.BoolVar(&c.JSON, "json", c.JSON, "print the report as JSON")
	fs.StringVar(&c.Mode, "mode", c.Mode, "post, realtime (subscribers, rate: 201-to-frame latency) or idle (connections, server-pid: RSS per idle WebSocket)")
	fs.IntVar(&c.Subscribers, "subscribers", c.Subscribers, "realtime: WebSocket subscribers of the org")
	fs.IntVar(&c.Connections, "connections", c.Connections, "idle: WebSockets to open (one visitor conversation each)")
	fs.IntVar(&c.ServerPID, "server-pid", c.ServerPID, "idle: PID of the server whose RSS is read from /proc; 0 reads this process")
	fs.DurationVar(&c.Settle, "settle", c.Settle, "idle: how long the connections stay idle before the RSS is read again")
}

// errNoServer is the answer of `go run ./bench` without --url: that command is the load tool
// alone, and only the awardee binary has a server to start in process.
var errNoServer = errors.New("no --url given, and this command has no server to start in process: run `awardee bench` " +
	"(or `go run . bench` in the source tree) to load a server it starts itself, or give --url and --key of a running one")

// Main is the whole command, shared by `awardee bench` (serve set) and `go run ./bench` (serve
// nil). The report goes to stdout, the progress lines to stderr.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, serve ServeFunc) error {
	c := DefaultConfig()
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	BindFlags(fs, &c)
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil // the flags were printed, as asked
	} else if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	c.Serve, c.Progress = serve, stderr
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if c.Mix == "visitor" && !given["conversations"] {
		// A visitor's window is 5 posts a second per conversation: spread the load wide enough
		// that the default run measures the server, not that window.
		c.Conversations = 1024
	}
	if c.Mix == "realtime" {
		c.Mode = "realtime"
	}
	if c.Mode != "post" && c.Mode != "" && c.Ceiling {
		return errors.New("--ceiling compares posts: it runs with --mode post")
	}
	target, stop, err := c.target()
	if err != nil {
		return err
	}
	defer stop()
	c.URL, c.APIKey, c.WidgetKey = target.URL, target.APIKey, target.WidgetKey
	switch c.Mode {
	case "realtime":
		if c.Rate == 0 {
			c.Rate = 20
		}
		res, err := RunRealtime(ctx, c)
		if err != nil {
			return err
		}
		res.Report(stdout, c)
		return nil
	case "idle":
		res, err := RunIdle(ctx, c)
		if err != nil {
			return err
		}
		res.Report(stdout, c)
		return nil
	case "post", "":
	default:
		return fmt.Errorf("unknown --mode %q: post, realtime or idle", c.Mode)
	}
	report, err := Run(ctx, c)
	if err != nil {
		return err
	}
	if c.JSON {
		return report.WriteJSON(stdout)
	}
	report.Print(stdout)
	return nil
}

// target is the server to load: the one at c.URL, or one started in process.
func (c Config) target() (Target, func(), error) {
	if c.URL != "" {
		return Target{URL: c.URL, APIKey: c.APIKey, WidgetKey: c.WidgetKey}, func() {}, nil
	}
	if c.APIKey != "" {
		return Target{}, nil, errors.New("--key names an org of a running server: give its --url too (the in-process server makes an org of its own)")
	}
	if c.Serve == nil {
		return Target{}, nil, errNoServer
	}
	dir, err := os.MkdirTemp(c.Dir, "awardee-bench-")
	if err != nil {
		return Target{}, nil, fmt.Errorf("a data directory for the in-process server: %w", err)
	}
	t, stop, err := c.Serve(dir, ServeOptions{AllowPrivateNetworks: c.Mix == "attachments"})
	if err != nil {
		os.RemoveAll(dir)
		return Target{}, nil, fmt.Errorf("starting the in-process server: %w", err)
	}
	return t, func() {
		_ = stop()
		os.RemoveAll(dir)
	}, nil
}
