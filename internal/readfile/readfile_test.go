package readfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRegular(t *testing.T) {
	dir := t.TempDir()
	ok := filepath.Join(dir, "ok.pem")
	if err := os.WriteFile(ok, []byte("12345"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.pem")
	if err := os.Symlink(ok, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{ok, link} {
		if b, err := Regular(p, 5); err != nil || string(b) != "12345" {
			t.Errorf("Regular(%s, 5) = %q, %v", p, b, err)
		}
	}
	for path, want := range map[string]string{
		ok:                            "5 bytes, more than the 4 allowed",
		dir:                           "a directory, not a regular file",
		filepath.Join(dir, "missing"): "no such file",
	} {
		if _, err := Regular(path, 4); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Regular(%s, 4): %v, want %q", path, err, want)
		}
	}
}
