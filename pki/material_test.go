package pki

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TLS material is read with a bound: a FIFO, a device or a file far larger
// than any certificate or CRL is refused at once, at startup and at a
// reload (which keeps the material it has).
func TestReadMaterialRefusesWhatIsNotMaterial(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "crl.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	huge := filepath.Join(dir, "huge.pem")
	f, err := os.Create(huge)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(MaxMaterialSize + 1); err != nil { // sparse
		t.Fatal(err)
	}
	f.Close()
	for path, want := range map[string]string{
		fifo:        "not a regular file",
		"/dev/zero": "not a regular file",
		huge:        "more than the",
	} {
		done := make(chan error, 1)
		go func() { _, err := ReadMaterial(path); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %v, want an error with %q", path, err, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: ReadMaterial blocked", path)
		}
	}

	p := newTestPKI(t)
	cfg := p.tlsConfig("")
	cfg.CRLFile = fifo
	if s, err := NewServerTLS(t.Context(), cfg, ServerOptions{NoWatch: true}); err == nil {
		s.Close()
		t.Fatal("a FIFO as crl_file was accepted")
	}

	// At a reload: the client CA bundle replaced by a FIFO is refused and
	// the running material stays.
	e := newEtc(t, p)
	s := p.serverTLS(t, e.cfg, ServerOptions{NoWatch: true})
	if err := os.Remove(e.cfg.ClientCAFile); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(e.cfg.ClientCAFile, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Reload() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("reload accepted a FIFO as client_ca_file")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("reload blocked on a FIFO")
	}
	srv := startEchoServer(t, s.Config())
	if err, _ := handshakeWith(t, srv, p.clientConfig(t, p.issue(t, IssueRequest{Name: "alice"}))); err != nil {
		t.Fatalf("after the refused reload the last good material must serve: %v", err)
	}
}
