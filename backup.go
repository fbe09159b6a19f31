package main

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/awardee/awardee/blobs"
	"github.com/awardee/awardee/engine"
	"github.com/valyala/fasthttp"
	"github.com/zeebo/blake3"
)

// The backup format is a tar stream laid out as a data directory: awardee.db first, a copy of
// the database from one read transaction, then blobs/ab/cd/<hash> for every blob the database
// references at that instant. `tar -xf` into an empty directory gives a directory `serve` runs
// on; `awardee restore` does the same after checking it.
const (
	backupBlobDir = "blobs"
	// defaultBackupStall is how long a backup's client may go without taking a byte before the
	// connection is dropped and the backup's slot and spool file are given back.
	defaultBackupStall = 30 * time.Second
	// backupRetryAfter is the Retry-After, in seconds, of a backup refused because one runs.
	backupRetryAfter = "5"
)

// backupState lets one backup run at a time: each holds a spooled copy of the database the size
// of the file, and a second would only compete with the first for the disk.
type backupState struct {
	running atomic.Bool
	stall   atomic.Int64 // nanoseconds; 0 is defaultBackupStall
}

func (b *backupState) stallTimeout() time.Duration {
	if d := time.Duration(b.stall.Load()); d > 0 {
		return d
	}
	return defaultBackupStall
}

// backup answers GET /admin/backup with the backup format. The database is copied from one read
// transaction into an unlinked spool file in the data directory first, so the transaction lasts
// as long as a local copy, however slowly the client reads: bbolt cannot grow its memory map,
// and so cannot commit a batch that grows the file, while a read transaction is open.
func (s *server) backup(c *call) (any, error) {
	if c.who.Kind == engine.KeyMember && c.who.Role != engine.RoleAdmin {
		return nil, engine.Errorf(engine.CodeForbidden, "only admins take backups")
	}
	orgs, err := s.db.Orgs()
	if err != nil {
		return nil, err
	}
	// A backup holds every org on the server; a key of one org never sees another's objects.
	if len(orgs) == 0 || orgs[0].ID != c.orgID() {
		return nil, engine.Errorf(engine.CodeForbidden, "a backup copies every org on this server, so only the API keys and admins of its first org (the oldest, which the first start made) may take one")
	}
	if !s.backups.running.CompareAndSwap(false, true) {
		c.ctx.Response.Header.Set("Retry-After", backupRetryAfter)
		return nil, engine.Errorf(engine.CodeUnavailable, "another backup is being taken; one runs at a time, retry when it has finished")
	}
	spool, err := os.CreateTemp(s.cfg.Data, ".backup-*.tmp")
	if err != nil {
		s.backups.running.Store(false)
		return nil, engine.Errorf(engine.CodeUnavailable, "the backup could not be started").WithCause(err)
	}
	// Unlinked at once: the copy lives as long as the descriptor, and a crash leaves nothing.
	// Where an open file cannot be unlinked, it is removed when the backup ends.
	leftover := ""
	if err := os.Remove(spool.Name()); err != nil {
		leftover = spool.Name()
	}
	release := func() {
		if leftover != "" {
			os.Remove(leftover)
		}
		s.backups.running.Store(false)
	}
	taken := time.Now()
	var size int64
	var hashes [][32]byte
	err = s.db.Snapshot(func(snap engine.Snapshot) error {
		hashes = snap.Blobs()
		var err error
		size, err = snap.WriteTo(spool)
		return err
	})
	if err != nil {
		spool.Close()
		release()
		return nil, engine.Errorf(engine.CodeUnavailable, "the database could not be copied for the backup (is the disk full?)").WithCause(err)
	}
	return &backupStream{s: s, spool: spool, size: size, hashes: hashes, taken: taken, release: release, requestID: requestID(c.ctx)}, nil
}

// backupStream is a backup taken and spooled, waiting to be written to its client.
type backupStream struct {
	s         *server
	spool     *os.File
	size      int64
	hashes    [][32]byte
	taken     time.Time
	release   func()
	requestID string
}

// writeResponse streams the archive from a goroutine of its own through a pipe that is the
// response's body stream. fasthttp closes the body stream when the response is written or fails
// (a client gone, a stall past the deadline), which ends the goroutine's next write; the
// goroutine then gives back the spool file and the slot.
func (b *backupStream) writeResponse(ctx *fasthttp.RequestCtx, status int) {
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/x-tar")
	ctx.Response.Header.Set("Content-Disposition", fmt.Sprintf(`attachment; filename="awardee-backup-%s.tar"`, b.taken.UTC().Format("20060102T150405Z")))
	pr, pw := io.Pipe()
	go func() {
		defer b.release()
		defer b.spool.Close()
		stats, err := writeArchive(context.Background(), pw, b.size, func(w io.Writer) (int64, error) {
			return io.Copy(w, io.NewSectionReader(b.spool, 0, b.size))
		}, b.hashes, b.s.blobs, b.taken)
		pw.CloseWithError(err)
		switch {
		case errors.Is(err, errBackupAborted):
			b.s.log.Warn("backup not finished: the client stopped reading or went away", "request_id", b.requestID)
		case err != nil:
			b.s.log.Error("backup failed while streaming", "request_id", b.requestID, "err", err)
		default:
			b.s.log.Info("backup sent", "request_id", b.requestID, "db_bytes", b.size, "blobs", stats.blobs)
		}
		if stats.skipped > 0 {
			b.s.log.Warn("backup left out blobs that are missing or damaged", "request_id", b.requestID, "skipped", stats.skipped)
		}
	}()
	ctx.SetBodyStream(&stallGuard{r: pr, conn: ctx.Conn(), stall: b.s.backups.stallTimeout()}, -1)
}

var errBackupAborted = errors.New("the backup's client stopped reading")

// stallGuard moves the connection's write deadline forward each time the body stream yields
// bytes, so a backup may take as long as it needs while its client keeps reading, and a client
// that stops is cut off after one stall timeout instead of holding the backup's slot.
type stallGuard struct {
	r     *io.PipeReader
	conn  net.Conn
	stall time.Duration
}

func (g *stallGuard) Read(p []byte) (int, error) {
	n, err := g.r.Read(p)
	if n > 0 {
		_ = g.conn.SetWriteDeadline(time.Now().Add(g.stall))
	}
	return n, err
}

func (g *stallGuard) Close() error { return g.r.CloseWithError(errBackupAborted) }

type archiveStats struct{ blobs, skipped int }

// writeArchive writes the backup format to w: the database (dbSize bytes, written by writeDB),
// then each blob of hashes that the store holds intact. A blob missing or damaged in the store is
// left out and counted: the copy then matches the source, which cannot serve it either.
func writeArchive(ctx context.Context, w io.Writer, dbSize int64, writeDB func(io.Writer) (int64, error), hashes [][32]byte, store *blobs.Store, taken time.Time) (archiveStats, error) {
	var stats archiveStats
	tw := tar.NewWriter(w)
	mtime := taken.UTC().Truncate(time.Second)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: engine.DatabaseFile, Size: dbSize, Mode: 0o600, ModTime: mtime}); err != nil {
		return stats, err
	}
	if n, err := writeDB(tw); err != nil {
		return stats, err
	} else if n != dbSize {
		return stats, fmt.Errorf("the database copy is %d bytes, not %d", n, dbSize)
	}
	for _, h := range hashes {
		blob, err := store.Open(ctx, blobs.Hash(h))
		if errors.Is(err, blobs.ErrNotFound) || errors.Is(err, blobs.ErrCorrupt) {
			stats.skipped++
			continue
		}
		if err != nil {
			return stats, err
		}
		err = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: blobEntryName(blobs.Hash(h)), Size: blob.Size(), Mode: 0o600, ModTime: blob.ModTime().UTC().Truncate(time.Second)})
		if err == nil {
			_, err = io.Copy(tw, blob)
		}
		blob.Close()
		if err != nil {
			return stats, err
		}
		stats.blobs++
	}
	return stats, tw.Close()
}

func blobEntryName(h blobs.Hash) string {
	hex := h.String()
	return backupBlobDir + "/" + hex[0:2] + "/" + hex[2:4] + "/" + hex
}

// backupCommand writes the backup format of a stopped server's data directory to OUT, through a
// temporary file beside it, fsync'd and renamed, so OUT is never a partial backup.
func backupCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("backup", flag.ContinueOnError)
	dir := fs.String("data", "", "data directory")
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("backup needs one output path: awardee backup --data DIR OUT")
	}
	if _, err := os.Stat(*dir); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	out := fs.Arg(0)
	var stats archiveStats
	err := engine.SnapshotDir(*dir, time.Second, func(snap engine.Snapshot) error {
		// Opened only under the database's lock: opening the store clears its temporary
		// files, which would be a running server's puts in progress.
		store, err := blobs.Open(filepath.Join(*dir, backupBlobDir), blobs.Options{})
		if err != nil {
			return err
		}
		return writeFileAtomically(out, func(w io.Writer) error {
			var err error
			stats, err = writeArchive(context.Background(), w, snap.Size(), snap.WriteTo, snap.Blobs(), store, time.Now())
			return err
		})
	})
	if errors.Is(err, engine.ErrLocked) {
		return fmt.Errorf("%w; stop the server first, or take the backup from it with GET /admin/backup", err)
	}
	if err != nil {
		return err
	}
	if stats.skipped > 0 {
		fmt.Fprintf(stderr, "awardee: warning: %d blobs the database references are missing or damaged in %s and were left out\n", stats.skipped, filepath.Join(*dir, backupBlobDir))
	}
	fmt.Fprintf(stdout, "backup written to %s (the database and %d blobs)\n", out, stats.blobs)
	return nil
}

// writeFileAtomically writes path through fill into a temporary file beside it, fsyncs it,
// renames it into place and fsyncs the directory; a failure removes the temporary file.
func writeFileAtomically(path string, fill func(io.Writer) error) (err error) {
	if info, statErr := os.Stat(path); statErr == nil && info.IsDir() {
		return fmt.Errorf("%s is a directory; name the file to write, such as %s", path, filepath.Join(path, "awardee-backup.tar"))
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	if err = fill(bw); err != nil {
		return err
	}
	if err = bw.Flush(); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	return engine.SyncDir(dir)
}

// restoreCommand makes DIR a data directory holding BACKUP (the backup format, or a bare
// database file as older versions' backup wrote): unpacked into a temporary directory beside
// DIR, every blob checked against its name, the database checked as `awardee check` does, and
// only then renamed into place. A DIR that holds anything is replaced only with --force, and
// never while a server holds it.
func restoreCommand(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	dir := fs.String("data", "", "data directory to restore into (new or empty)")
	force := fs.Bool("force", false, "replace what DIR holds")
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) > 1 { // flags after the backup's path
		if err := fs.Parse(rest[1:]); err != nil {
			return err
		}
		rest = append(rest[:1], fs.Args()...)
	}
	if len(rest) != 1 || *dir == "" {
		return errors.New("restore needs a data directory and one backup: awardee restore --data DIR [--force] BACKUP (- reads stdin)")
	}
	target := filepath.Clean(*dir)
	replacing, err := holdsAnything(target)
	if err != nil {
		return err
	}
	if replacing && !*force {
		return fmt.Errorf("%s is not empty; restore into a new directory, or pass --force to replace what it holds", target)
	}
	if replacing {
		if err := engine.EnsureNotServed(target, time.Second); err != nil {
			return fmt.Errorf("%w; stop the server before replacing its data", err)
		}
	}
	var src io.Reader = stdin
	if name := rest[0]; name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		src = f
	}
	parent := filepath.Dir(target)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(target)+".restore-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp) // a no-op once renamed into place
	restored, err := unpackBackup(src, tmp)
	if err != nil {
		return fmt.Errorf("%s: %w", rest[0], err)
	}
	missing, err := verifyRestored(tmp, restored)
	if err != nil {
		return fmt.Errorf("%s: %w", rest[0], err)
	}
	if missing > 0 {
		fmt.Fprintf(stderr, "awardee: warning: %d blobs the database references are not in the backup; their files will answer 404\n", missing)
	}
	if replacing {
		// Unpacking and checking a big backup takes a while: a server started on target in the
		// meantime must not have its directory renamed away under it.
		if err := engine.EnsureNotServed(target, time.Second); err != nil {
			return fmt.Errorf("%w; stop the server before replacing its data", err)
		}
	}
	if err := moveIntoPlace(tmp, target, replacing); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "restored %s into %s (the database and %d blobs); start it with: awardee serve --data %s\n", rest[0], target, len(restored.blobs), target)
	return nil
}

// holdsAnything reports whether dir exists with entries in it.
func holdsAnything(dir string) (bool, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return len(entries) > 0, nil
}

type restoredFiles struct {
	blobs map[blobs.Hash]bool
}

var errNotABackup = errors.New("not an awardee backup (a tar holding awardee.db and blobs/, or a database file)")

// unpackBackup writes what src holds into the empty directory dir, each file fsync'd: the tar
// of the backup format, whose every entry must be awardee.db or a blob whose bytes hash to its
// name, or a bare database file.
func unpackBackup(src io.Reader, dir string) (restoredFiles, error) {
	files := restoredFiles{blobs: map[blobs.Hash]bool{}}
	br := bufio.NewReaderSize(src, 1<<20)
	head, _ := br.Peek(4096)
	if isBoltFile(head) {
		_, err := writeSynced(filepath.Join(dir, engine.DatabaseFile), br, nil)
		return files, err
	}
	counted := &countingReader{r: br}
	tr := tar.NewReader(counted)
	sawDB := false
	for {
		before := counted.n
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// Entries are read to their end, so what Next consumed is the last one's padding
			// (under 512 bytes) and the two zero blocks that end every archive. A stream cut
			// between two entries has no such end, and archive/tar reports it as a plain EOF.
			if counted.n-before < 1024 && (sawDB || len(files.blobs) > 0) {
				return files, errors.New("the archive is cut short: it ends without the end-of-archive blocks")
			}
			break
		}
		if err != nil {
			if !sawDB && len(files.blobs) == 0 {
				return files, errNotABackup
			}
			return files, fmt.Errorf("the archive is cut short or damaged (%v)", err)
		}
		switch {
		case hdr.Typeflag == tar.TypeDir:
			continue // directories are made as their files need them
		case hdr.Typeflag != tar.TypeReg:
			return files, fmt.Errorf("%w: %q is not a regular file", errNotABackup, hdr.Name)
		case hdr.Name == engine.DatabaseFile && !sawDB:
			sawDB = true
			if _, err := writeSynced(filepath.Join(dir, engine.DatabaseFile), denseEntry(tr, counted), nil); err != nil {
				return files, err
			}
		default:
			h, ok := blobFromEntry(hdr.Name)
			if !ok || files.blobs[h] {
				return files, fmt.Errorf("%w: unexpected entry %q", errNotABackup, hdr.Name)
			}
			path := filepath.Join(dir, filepath.FromSlash(hdr.Name))
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				return files, err
			}
			hasher := blake3.New()
			if _, err := writeSynced(path, denseEntry(tr, counted), hasher); err != nil {
				return files, err
			}
			if blobs.Hash(hasher.Sum(nil)) != h {
				return files, fmt.Errorf("the blob %s in the archive does not hash to its name: the backup is damaged", h)
			}
			files.blobs[h] = true
		}
	}
	if !sawDB {
		return files, fmt.Errorf("%w: it holds no %s", errNotABackup, engine.DatabaseFile)
	}
	return files, syncTree(dir)
}

var errSparseEntry = fmt.Errorf("%w: an entry holds holes (a sparse file), which no backup writes", errNotABackup)

// denseEntry reads the current entry of tr and fails once it yields more bytes than the
// archive's stream has delivered since the entry began. archive/tar expands sparse entries and
// reports them as regular files, so without this a few KiB of sparse map would write gigabytes
// of zeros to the disk the server runs on before any check could refuse them.
func denseEntry(tr io.Reader, raw *countingReader) io.Reader {
	return &denseReader{r: tr, raw: raw, start: raw.n}
}

type denseReader struct {
	r        io.Reader
	raw      *countingReader
	start, n int64
}

func (d *denseReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	d.n += int64(n)
	if d.n > d.raw.n-d.start {
		return n, errSparseEntry
	}
	return n, err
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// isBoltFile tells a bare database file by the magic number of bbolt's first meta page (after
// the 16-byte page header, in the machine's byte order, which is little-endian on every platform
// awardee is built for).
func isBoltFile(head []byte) bool {
	return len(head) >= 20 && head[16] == 0xed && head[17] == 0xda && head[18] == 0x0c && head[19] == 0xed
}

// blobFromEntry parses blobs/ab/cd/<hash>, the only blob name the format has, so an entry can
// never name a path outside the directory.
func blobFromEntry(name string) (blobs.Hash, bool) {
	parts := strings.Split(name, "/")
	if len(parts) != 4 || parts[0] != backupBlobDir {
		return blobs.Hash{}, false
	}
	h, err := blobs.ParseHash(parts[3])
	if err != nil || parts[1] != parts[3][0:2] || parts[2] != parts[3][2:4] {
		return blobs.Hash{}, false
	}
	return h, true
}

func writeSynced(path string, r io.Reader, also io.Writer) (int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	w := io.Writer(f)
	if also != nil {
		w = io.MultiWriter(f, also)
	}
	n, err := io.Copy(w, r)
	if err == nil {
		err = f.Sync()
	}
	if cErr := f.Close(); err == nil {
		err = cErr
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = fmt.Errorf("the archive is cut short (%v)", err)
	}
	return n, err
}

// syncTree fsyncs every directory under root, so the entries of the files written are durable
// before the tree is renamed into place.
func syncTree(root string) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		return engine.SyncDir(path)
	})
}

// verifyRestored checks the unpacked database as `awardee check` does (engine.VerifyDir: a file
// of an older schema on a migrated scratch copy), refuses one this build cannot serve (a newer
// schema: ErrNewerSchema), and counts the blobs it references that the backup lacks.
func verifyRestored(dir string, files restoredFiles) (missing int, err error) {
	problems, err := engine.VerifyDir(dir, filepath.Dir(dir), time.Second)
	if err != nil {
		return 0, err
	}
	if len(problems) > 0 {
		shown := problems[:min(len(problems), 5)]
		lines := make([]string, len(shown))
		for i, p := range shown {
			lines[i] = p.Error()
		}
		return 0, fmt.Errorf("its database fails the check, so nothing was restored (%d problems): %s", len(problems), strings.Join(lines, "; "))
	}
	err = engine.SnapshotDir(dir, time.Second, func(snap engine.Snapshot) error {
		for _, h := range snap.Blobs() {
			if !files.blobs[blobs.Hash(h)] {
				missing++
			}
		}
		return nil
	})
	return missing, err
}

// moveIntoPlace renames the verified directory tmp to target. A target to replace is moved aside
// first and removed only once tmp is in its place.
func moveIntoPlace(tmp, target string, replacing bool) error {
	parent := filepath.Dir(target)
	if replacing {
		aside := filepath.Join(parent, "."+filepath.Base(target)+".replaced-"+time.Now().UTC().Format("20060102T150405.000000000"))
		if err := os.Rename(target, aside); err != nil {
			return err
		}
		if err := os.Rename(tmp, target); err != nil {
			// Put it back: a failed restore changes nothing.
			return errors.Join(err, os.Rename(aside, target))
		}
		if err := engine.SyncDir(parent); err != nil {
			return err
		}
		return os.RemoveAll(aside)
	}
	// An empty target (or none) is replaced by the rename itself on Linux; elsewhere, remove it.
	if err := os.Rename(tmp, target); err != nil {
		if rmErr := os.Remove(target); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) {
			return err
		}
		if err := os.Rename(tmp, target); err != nil {
			return err
		}
	}
	return engine.SyncDir(parent)
}
