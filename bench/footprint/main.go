// Command footprint measures what running Awardee costs: the binary's size, the server's
// resident memory idle and after a load of posts, and the time from exec to the first 200 on
// /healthz with a big database. It runs a built binary as a separate process, as it is deployed:
//
//	CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /tmp/awardee .
//	go run ./bench/fill --data /tmp/awardee-1m --messages 1000000
//	go run ./bench/footprint --binary /tmp/awardee --big /tmp/awardee-1m
//
// Without --big it skips the start-up figure. Run as root, it also measures start-up with the
// page cache dropped (cold) before each run.
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type config struct {
	binary   string
	big      string
	posts    int
	writers  int
	runs     int
	textSize int
	warmOnly bool // skip the cold runs even as root
}

func main() {
	var cfg config
	flag.StringVar(&cfg.binary, "binary", "", "the awardee binary to measure (build it stripped: -trimpath -ldflags='-s -w')")
	flag.StringVar(&cfg.big, "big", "", "a data directory filled with bench/fill, for the start-up figure")
	flag.IntVar(&cfg.posts, "posts", 100_000, "messages to post through the API before the second memory reading")
	flag.IntVar(&cfg.writers, "writers", 64, "concurrent clients posting")
	flag.IntVar(&cfg.runs, "runs", 5, "start-ups to time")
	flag.IntVar(&cfg.textSize, "text-size", 200, "characters per posted message")
	flag.BoolVar(&cfg.warmOnly, "warm-only", false, "skip the cold-cache start-ups, which drop the whole machine's page cache")
	flag.Parse()
	if err := run(cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "footprint:", err)
		os.Exit(1)
	}
}

func run(cfg config, out io.Writer) error {
	if cfg.binary == "" {
		return errors.New("--binary is required")
	}
	info, err := os.Stat(cfg.binary)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "binary size          %.1f MB (%d bytes)\n", float64(info.Size())/1e6, info.Size())

	dir, err := os.MkdirTemp("", "awardee-footprint-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// An org made offline with a window wide enough for the load; serve then has an org and
	// makes none, so the first start is not the one-off bootstrap.
	created, err := exec.Command(cfg.binary, "org", "create", "--data", dir, "--name", "footprint", "--rate", "1000000", "--burst", "1000000").Output()
	if err != nil {
		return fmt.Errorf("org create: %w", err)
	}
	var org struct {
		APIKey string `json:"api_key"`
	}
	if err := json.Unmarshal(created, &org); err != nil {
		return fmt.Errorf("org create answered %q: %w", created, err)
	}
	srv, err := start(cfg.binary, dir)
	if err != nil {
		return err
	}
	defer srv.stop()
	idle, err := readMemory(srv.cmd.Process.Pid)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "idle RSS             %v, started in %v\n", idle, srv.startup.Round(time.Millisecond))
	began := time.Now()
	if err := post(srv.url, org.APIKey, cfg.posts, cfg.writers, cfg.textSize); err != nil {
		return err
	}
	elapsed := time.Since(began)
	loaded, err := readMemory(srv.cmd.Process.Pid)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "RSS after %d posts %v, posted in %v (%.0f/s)\n", cfg.posts, loaded,
		elapsed.Round(time.Millisecond), float64(cfg.posts)/elapsed.Seconds())
	if err := srv.stop(); err != nil {
		return err
	}
	if cfg.big == "" {
		return nil
	}
	dbInfo, err := os.Stat(filepath.Join(cfg.big, "awardee.db"))
	if err != nil {
		return fmt.Errorf("--big: %w", err)
	}
	for _, cold := range []bool{false, true} {
		if cold && cfg.warmOnly {
			continue
		}
		if cold && os.Geteuid() != 0 {
			fmt.Fprintln(out, "start-up, cold cache: skipped (dropping the page cache needs root)")
			continue
		}
		if !cold {
			// One start unmeasured, so the warm runs find the file in the page cache.
			s, err := start(cfg.binary, cfg.big)
			if err != nil {
				return err
			}
			if err := s.stop(); err != nil {
				return err
			}
		}
		var times []time.Duration
		var mems []memory
		for range cfg.runs {
			if cold {
				if err := dropCaches(); err != nil {
					return err
				}
			}
			s, err := start(cfg.binary, cfg.big)
			if err != nil {
				return err
			}
			m, err := readMemory(s.cmd.Process.Pid)
			if err := errors.Join(err, s.stop()); err != nil {
				return err
			}
			times = append(times, s.startup)
			mems = append(mems, m)
		}
		slices.Sort(times)
		slices.SortFunc(mems, func(a, b memory) int { return cmp.Compare(a.rss, b.rss) })
		cache := "warm"
		if cold {
			cache = "cold"
		}
		fmt.Fprintf(out, "start-up, %s cache  best %v, median %v of %d (%.2f GB file; median RSS at the first 200: %v)\n",
			cache, times[0].Round(100*time.Microsecond), times[len(times)/2].Round(100*time.Microsecond), len(times),
			float64(dbInfo.Size())/1e9, mems[len(mems)/2])
	}
	return nil
}

type server struct {
	cmd     *exec.Cmd
	url     string
	startup time.Duration // from exec to the first 200 on /healthz
	exited  chan error
	once    sync.Once
	err     error
}

// start runs `binary serve` on a free loopback port and returns once /healthz answers 200.
func start(binary, dir string) (*server, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	s := &server{url: "http://" + addr, exited: make(chan error, 1)}
	s.cmd = exec.Command(binary, "serve", "--addr", addr, "--data", dir)
	var logs bytes.Buffer
	s.cmd.Stdout, s.cmd.Stderr = &logs, &logs
	client := &http.Client{Timeout: time.Second}
	began := time.Now()
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { s.exited <- s.cmd.Wait() }()
	deadline := began.Add(30 * time.Second)
	for {
		resp, err := client.Get(s.url + "/healthz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				s.startup = time.Since(began)
				return s, nil
			}
		}
		select {
		case err := <-s.exited:
			return nil, fmt.Errorf("serve exited before answering (%v): %s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			s.cmd.Process.Kill()
			return nil, fmt.Errorf("serve did not answer 200 on /healthz within 30s: %s", logs.String())
		}
		// Polling, not waiting: each attempt is a connect refused until the listener is up.
		time.Sleep(200 * time.Microsecond)
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (s *server) stop() error {
	s.once.Do(func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-s.exited:
			s.err = err
		case <-time.After(30 * time.Second):
			s.cmd.Process.Kill()
			s.err = errors.New("serve did not stop within 30s of SIGTERM")
		}
	})
	return s.err
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// memory is a reading of /proc/PID/status, in KiB: VmRSS is the figure reported; its parts tell
// the heap and stacks (anonymous) from the binary's and the database's mapped pages (file).
type memory struct{ rss, anon, file int64 }

func (m memory) String() string {
	return fmt.Sprintf("%.1f MiB (anonymous %.1f, file-backed %.1f)", float64(m.rss)/1024, float64(m.anon)/1024, float64(m.file)/1024)
}

func readMemory(pid int) (memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	defer f.Close()
	var m memory
	fields := map[string]*int64{"VmRSS:": &m.rss, "RssAnon:": &m.anon, "RssFile:": &m.file}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, value, _ := strings.Cut(sc.Text(), "\t")
		if dst := fields[name]; dst != nil {
			if *dst, err = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64); err != nil {
				return memory{}, err
			}
		}
	}
	if m.rss == 0 {
		return memory{}, errors.New("no VmRSS in /proc/PID/status")
	}
	return m, sc.Err()
}

func dropCaches() error {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
}

// post opens one conversation per writer and posts n team replies across them, every answer
// expected to be a 201.
func post(base, key string, n, writers, textSize int) error {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: writers}, Timeout: 30 * time.Second}
	do := func(path string, body []byte) ([]byte, error) {
		req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, base+path, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusCreated {
			err = fmt.Errorf("POST %s: %d %s", path, resp.StatusCode, b)
		}
		return b, err
	}
	body, err := json.Marshal(map[string]string{"text": strings.Repeat("x", textSize)})
	if err != nil {
		return err
	}
	var left atomic.Int64
	left.Store(int64(n))
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			created, err := do("/conversations", []byte(`{"status":"open"}`))
			if err != nil {
				errs[w] = err
				return
			}
			var conv struct {
				Conversation struct {
					ID string `json:"id"`
				} `json:"conversation"`
			}
			if err := json.Unmarshal(created, &conv); err != nil {
				errs[w] = err
				return
			}
			for left.Add(-1) >= 0 {
				if _, err := do("/conversations/"+conv.Conversation.ID+"/messages", body); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
