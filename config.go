package main

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/awardee/awardee/hooks"
)

// Config is every setting of `awardee serve`. Defaults live in defaultConfig alone; flags and
// their AWARDEE_* variables are bound to it in bindServeFlags.
type Config struct {
	Addr                 string
	Data                 string
	PublicURL            string
	AllowPrivateNetworks bool
	WebhookRetrySchedule string
	IdempotencyTTL       time.Duration
	EventRetention       time.Duration
	ShutdownTimeout      time.Duration
	SweepEvery           time.Duration
	MaxConns             int
	MaxConnsPerIP        int
	MetricsToken         string
	PprofAddr            string
	TLSCert, TLSKey      string // PEM files; both or neither
	LogFormat            string // text or json
	LogLevel             string // debug, info, warn or error

	// now is the database's clock (engine.Options.Now); nil is the wall clock. Tests set it to
	// reach expiries without waiting for them.
	now func() time.Time
}

func defaultConfig() Config {
	return Config{
		Addr:                 "127.0.0.1:8080",
		Data:                 "./awardee-data",
		WebhookRetrySchedule: "5s,5m,30m,2h,5h,10h,10h",
		IdempotencyTTL:       24 * time.Hour,
		EventRetention:       7 * 24 * time.Hour,
		ShutdownTimeout:      15 * time.Second,
		SweepEvery:           time.Minute,
		MaxConnsPerIP:        defaultMaxConnsPerIP,
		LogFormat:            "text",
		LogLevel:             "info",
	}
}

// newServeFlagSet binds every serve flag to c, whose current values are the defaults shown.
func newServeFlagSet(c *Config) *flag.FlagSet {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	bindServeFlags(fs, c)
	return fs
}

func bindServeFlags(fs *flag.FlagSet, c *Config) {
	fs.StringVar(&c.Addr, "addr", c.Addr, "address to listen on")
	fs.StringVar(&c.Data, "data", c.Data, "data directory (created when missing)")
	fs.StringVar(&c.PublicURL, "public-url", c.PublicURL, "base URL of every file_url (default http://<addr>)")
	fs.BoolVar(&c.AllowPrivateNetworks, "allow-private-networks", c.AllowPrivateNetworks, "let attachment fetches and webhooks reach loopback and private addresses (development and tests only)")
	fs.StringVar(&c.WebhookRetrySchedule, "webhook-retry-schedule", c.WebhookRetrySchedule, "comma list of Go durations between webhook attempts")
	fs.DurationVar(&c.IdempotencyTTL, "idempotency-ttl", c.IdempotencyTTL, "how long an Idempotency-Key's outcome is kept")
	fs.DurationVar(&c.EventRetention, "event-retention", c.EventRetention, "how long the event log keeps events")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout, "how long SIGINT/SIGTERM waits for in-flight requests")
	fs.DurationVar(&c.SweepEvery, "sweep-every", c.SweepEvery, "how often expired events and idempotency keys are pruned")
	fs.IntVar(&c.MaxConns, "max-conns", c.MaxConns, "most client connections open at once; 0 derives it from the file-descriptor limit (never above it)")
	fs.IntVar(&c.MaxConnsPerIP, "max-conns-per-ip", c.MaxConnsPerIP, "most connections one client address may hold; 0 turns the cap off (behind a reverse proxy)")
	fs.StringVar(&c.MetricsToken, "metrics-token", c.MetricsToken, "when set, GET /metrics requires Authorization: Bearer <token>")
	fs.StringVar(&c.PprofAddr, "pprof-addr", c.PprofAddr, "serve Go's pprof profiles on this separate address (such as 127.0.0.1:6060); off when empty")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "PEM certificate chain: serve HTTPS on --addr (with --tls-key); SIGHUP reloads the pair")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "PEM private key of --tls-cert")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "text or json (on stderr)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug (adds one line per request), info, warn or error")
}

// parseWithEnv parses args; a flag not given on the command line takes AWARDEE_<FLAG> from the
// environment when set (dashes become underscores), so a flag always wins over the environment.
func parseWithEnv(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		name := envName(f.Name)
		if v, ok := os.LookupEnv(name); ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

func envName(flagName string) string {
	return "AWARDEE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// validate refuses a configuration the server could not honour, before anything is opened.
func (c Config) validate() error {
	schedule, err := parseSchedule(c.WebhookRetrySchedule)
	if err != nil {
		return err
	}
	if c.PublicURL != "" {
		u, err := url.Parse(c.PublicURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--public-url %q is not an absolute http or https URL", c.PublicURL)
		}
	}
	for name, d := range map[string]time.Duration{"idempotency-ttl": c.IdempotencyTTL, "event-retention": c.EventRetention, "sweep-every": c.SweepEvery} {
		if d <= 0 {
			return fmt.Errorf("--%s must be positive", name)
		}
	}
	// A pending webhook retry reads its event from the log, so the log must outlive the
	// whole schedule (the pruner also keeps owed events, but a retention that cannot hold one
	// schedule is a configuration mistake, not something to paper over).
	if span := hooks.ScheduleSpan(schedule); c.EventRetention < span {
		return fmt.Errorf("--event-retention %s is shorter than the webhook retry schedule %q, which can take up to %s with jitter: raise --event-retention or shorten the schedule",
			c.EventRetention, c.WebhookRetrySchedule, span.Round(time.Second))
	}
	if c.MaxConns < 0 || c.MaxConnsPerIP < 0 {
		return errors.New("--max-conns and --max-conns-per-ip must be 0 or more")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("--tls-cert and --tls-key go together: give both to serve HTTPS, or neither for plain HTTP")
	}
	if _, err := parseLogFormat(c.LogFormat); err != nil {
		return err
	}
	if _, err := parseLogLevel(c.LogLevel); err != nil {
		return err
	}
	return nil
}

func parseSchedule(s string) ([]time.Duration, error) {
	var out []time.Duration
	for _, part := range strings.Split(s, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(part))
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("webhook retry schedule: %q is not a positive Go duration", part)
		}
		out = append(out, d)
	}
	return out, nil
}
