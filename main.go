// Command awardee is a self-hosted chat-support server: one binary, one bbolt file, one node.
//
// Subcommands: serve, org create, org update, key create, member create, backup, restore, check, bench,
// version. Every flag also reads its AWARDEE_<FLAG> environment variable.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/awardee/awardee/bench/load"
	"github.com/awardee/awardee/engine"
)

const usage = `usage:
  awardee serve [--addr 127.0.0.1:8080] [--data ./awardee-data] [flags]
  awardee org create --data DIR --name NAME [--rate 50] [--burst 100] [--initial-status open]
  awardee org update --data DIR --org ORG_ID [--rate R] [--burst B]
  awardee key create --data DIR --org ORG_ID [--name NAME]
  awardee member create --data DIR --org ORG_ID --email E --name N [--role agent] [--password-stdin]
  awardee backup --data DIR OUT
  awardee restore --data DIR [--force] BACKUP
  awardee check --data DIR
  awardee version
  awardee bench [--url http://127.0.0.1:8080 --key ak_…] [--concurrency 64 | --rate R] [--requests 50000] [--duration 30s] [--ceiling]
Run "awardee <command> -h" for a command's flags.
`

// exitNewerSchema is the exit status of a command refused because its database was written by
// a newer awardee, so a supervisor or an upgrade script can tell "downgraded binary" from any
// other failure.
const exitNewerSchema = 3

func main() {
	setGCDefaults()
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "awardee:", err)
		if errors.Is(err, engine.ErrNewerSchema) {
			fmt.Fprintln(os.Stderr, "awardee: run the newer awardee on this data directory, or restore a backup made by this version")
			os.Exit(exitNewerSchema)
		}
		os.Exit(1)
	}
}

// Garbage collector defaults when the environment sets neither GOGC nor GOMEMLIMIT. A post
// allocates a few kilobytes that die with its answer over a small live heap, so the default
// GOGC=100 collects very often under load; 400 collects a quarter as often. The soft limit
// brings back frequent collection once the heap nears it: readers of large list pages hold
// far more live memory than posts do, and without it their peak grew with GOGC (the database
// itself is mapped, not on the heap).
const (
	defaultGCPercent   = 400
	defaultMemoryLimit = 128 << 20
)

func setGCDefaults() {
	for _, name := range []string{"GOGC", "GOMEMLIMIT"} {
		if _, set := os.LookupEnv(name); set {
			return
		}
	}
	debug.SetGCPercent(defaultGCPercent)
	debug.SetMemoryLimit(defaultMemoryLimit)
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		return serveCommand(rest, stdout, stderr)
	case "org":
		if len(rest) > 0 && rest[0] == "create" {
			return orgCreateCommand(rest[1:], stdout)
		}
		if len(rest) > 0 && rest[0] == "update" {
			return orgUpdateCommand(rest[1:], stdout)
		}
	case "key":
		if len(rest) > 0 && rest[0] == "create" {
			return keyCreateCommand(rest[1:], stdout)
		}
	case "member":
		if len(rest) > 0 && rest[0] == "create" {
			return memberCreateCommand(rest[1:], os.Stdin, stdout)
		}
	case "backup":
		return backupCommand(rest, stdout, stderr)
	case "restore":
		return restoreCommand(rest, os.Stdin, stdout, stderr)
	case "check":
		return checkCommand(rest, stdout)
	case "version":
		return versionCommand(stdout)
	case "bench":
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
		defer stop()
		return load.Main(ctx, rest, stdout, stderr, startBenchServer)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func serveCommand(args []string, stdout, stderr io.Writer) error {
	cfg := defaultConfig()
	if err := parseWithEnv(newServeFlagSet(&cfg), args); err != nil {
		return err
	}
	if err := cfg.validate(); err != nil {
		return err
	}
	logger, err := newLogger(stderr, cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		return err
	}
	// Bind before anything else: the first start creates org "default" and prints its secrets
	// once, and a start that cannot have its address must neither lose them nor create the org.
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return err
	}
	srv, err := newServer(cfg, logger, stdout)
	if err != nil {
		ln.Close()
		return err
	}
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(signals)
	// SIGHUP reloads the TLS certificate (a renewal's deploy hook sends it); without TLS it
	// is logged and ignored, never the default that would end the process.
	reloads := make(chan os.Signal, 1)
	signal.Notify(reloads, syscall.SIGHUP)
	defer signal.Stop(reloads)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	for waiting := true; waiting; {
		select {
		case err := <-errc:
			srv.Close(context.Background())
			return err
		case <-reloads:
			srv.reloadTLS()
		case sig := <-signals:
			logger.Info("shutting down: draining requests", "signal", sig.String(), "timeout", cfg.ShutdownTimeout)
			waiting = false
		}
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- srv.Close(shutdownCtx) }()
	select {
	case sig := <-signals:
		// The operator asked twice: stop now. Every acknowledged write is already fsync'd; what
		// is still in flight was never acknowledged.
		logger.Error("second signal during the drain: stopping at once", "signal", sig.String())
		return errors.New("stopped by a second signal before the drain finished")
	case err := <-closed:
		if errors.Is(err, errDrainTimedOut) {
			logger.Error("drain timed out: requests still in flight were cut off", "timeout", cfg.ShutdownTimeout)
			return err
		}
		if err != nil {
			return err
		}
	}
	logger.Info("stopped cleanly")
	return nil
}

// openOffline opens a data directory for a one-shot command, failing fast with a clear message
// when a server holds it.
func openOffline(dir string) (*engine.DB, error) {
	if dir == "" {
		return nil, errors.New("--data is required")
	}
	db, err := engine.Open(dir, engine.Options{LockTimeout: time.Second, NoMigrate: true})
	if errors.Is(err, engine.ErrLocked) {
		return nil, fmt.Errorf("%w; stop the server first", err)
	}
	return db, err
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	return enc.Encode(v)
}

func orgCreateCommand(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("org create", flag.ContinueOnError)
	dir := fs.String("data", "", "data directory")
	name := fs.String("name", "", "org name")
	rate := fs.Float64("rate", engine.DefaultRate, "requests per second of the org's shared window")
	burst := fs.Int("burst", engine.DefaultBurst, "burst of the org's shared window")
	initial := fs.String("initial-status", string(engine.DefaultInitialStatus), "status of conversations the widget opens")
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	if err := checkRateFlags(rate, burst); err != nil {
		return err
	}
	db, err := openOffline(*dir)
	if err != nil {
		return err
	}
	defer db.Close()
	out, err := db.CreateOrg(context.Background(), engine.NewOrg{Name: *name, Rate: *rate, Burst: *burst, InitialStatus: engine.Status(*initial)})
	if err != nil {
		return err
	}
	return printJSON(stdout, out)
}

func orgUpdateCommand(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("org update", flag.ContinueOnError)
	dir := fs.String("data", "", "data directory")
	orgID := fs.String("org", "", "org id")
	rate := fs.Float64("rate", 0, "new requests per second")
	burst := fs.Int("burst", 0, "new burst")
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	var u engine.OrgUpdate
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "rate":
			u.Rate = rate
		case "burst":
			u.Burst = burst
		}
	})
	if err := checkRateFlags(u.Rate, u.Burst); err != nil {
		return err
	}
	db, err := openOffline(*dir)
	if err != nil {
		return err
	}
	defer db.Close()
	org, err := db.UpdateOrg(context.Background(), *orgID, u)
	if err != nil {
		return err
	}
	return printJSON(stdout, org)
}

// checkRateFlags refuses a --rate or --burst (nil when not given) outside section 8's bounds
// before any database is opened.
func checkRateFlags(rate *float64, burst *int) error {
	if rate != nil {
		if err := engine.CheckRate(*rate); err != nil {
			return fmt.Errorf("--rate: %w", err)
		}
	}
	if burst != nil {
		if err := engine.CheckBurst(*burst); err != nil {
			return fmt.Errorf("--burst: %w", err)
		}
	}
	return nil
}

func keyCreateCommand(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("key create", flag.ContinueOnError)
	dir := fs.String("data", "", "data directory")
	orgID := fs.String("org", "", "org id")
	name := fs.String("name", "", "a name for the key")
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	db, err := openOffline(*dir)
	if err != nil {
		return err
	}
	defer db.Close()
	out, err := db.CreateAPIKey(context.Background(), *orgID, *name)
	if err != nil {
		return err
	}
	return printJSON(stdout, out)
}

// memberCreateCommand adds a team member; the generated password is printed this once. With
// --password-stdin the first line of stdin is the password, and it is not echoed back.
func memberCreateCommand(args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("member create", flag.ContinueOnError)
	dir := fs.String("data", "", "data directory")
	orgID := fs.String("org", "", "org id")
	email := fs.String("email", "", "the member's email, which signs in")
	name := fs.String("name", "", "the member's name, as the team sees it")
	role := fs.String("role", string(engine.RoleAgent), "agent or admin")
	fromStdin := fs.Bool("password-stdin", false, "read the password from the first line of stdin instead of generating one")
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	var password string
	if *fromStdin {
		line, err := bufio.NewReader(io.LimitReader(stdin, 4*engine.MaxPasswordLength+2)).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("reading the password from stdin: %w", err)
		}
		password = strings.TrimRight(line, "\r\n")
		if password == "" {
			return errors.New("--password-stdin: stdin holds no password")
		}
	}
	db, err := openOffline(*dir)
	if err != nil {
		return err
	}
	defer db.Close()
	created, err := db.CreateMember(context.Background(), *orgID, engine.NewMember{Email: *email, Name: *name, Role: engine.MemberRole(*role), Password: password})
	if err != nil {
		return err
	}
	out := map[string]string{"member_id": created.Member.ID}
	if !*fromStdin {
		out["password"] = created.Password
	}
	return printJSON(stdout, out)
}

// checkCommand verifies a stopped server's database without changing it: bbolt's page check and
// the engine's invariants. It prints "ok", or every problem and fails.
func checkCommand(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	dir := fs.String("data", "", "data directory")
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("--data is required")
	}
	// VerifyDir, not CheckDir: a file of an older schema is checked on a migrated scratch copy
	// beside the directory (the checks know today's layouts only), and a newer one is refused
	// with ErrNewerSchema, whose exit status tells an operator to run the newer binary.
	target := filepath.Clean(*dir)
	problems, err := engine.VerifyDir(target, filepath.Dir(target), time.Second)
	if errors.Is(err, engine.ErrLocked) {
		return fmt.Errorf("%w; stop the server first", err)
	}
	if err != nil {
		return err
	}
	if len(problems) == 0 {
		fmt.Fprintln(stdout, "ok")
		return nil
	}
	for _, p := range problems {
		fmt.Fprintln(stdout, p)
	}
	found := fmt.Sprintf("%d problems", len(problems))
	if len(problems) == 1 {
		found = "a problem"
	}
	return fmt.Errorf("%s has %s; restore the last backup into a new data directory", filepath.Join(*dir, engine.DatabaseFile), found)
}

// versionCommand prints what the binary was built from: the module's version (a tag when built
// with go install MODULE@VERSION, "(devel)" from a checkout), the VCS revision and time the go
// command stamped, and the Go toolchain, so a bug report names its build exactly.
func versionCommand(stdout io.Writer) error {
	fmt.Fprintln(stdout, versionLine())
	return nil
}

func versionLine() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "awardee (no build information) " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	parts := []string{"awardee", info.Main.Version}
	if rev := settings["vcs.revision"]; rev != "" {
		if settings["vcs.modified"] == "true" {
			rev += "+modified"
		}
		parts = append(parts, "revision "+rev)
	}
	if t := settings["vcs.time"]; t != "" {
		parts = append(parts, "committed "+t)
	}
	parts = append(parts, info.GoVersion, runtime.GOOS+"/"+runtime.GOARCH)
	return strings.Join(parts, " ")
}
