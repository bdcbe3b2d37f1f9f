package policy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A file written into the policy directory while it is being read (a
// deployment in progress) must not give a version mixing old and new
// files. Here the first read has taken the old a.rego when the deployment
// replaces both files, before z.json is read: that read alone is old rules
// with new data, a version that never existed.
func TestLoadNeverMixesVersions(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.rego", "package conduit\n\ndecision := {\"allow\": data.z.v == 1, \"reason\": \"old\"}\n")
	write("z.json", `{"z": {"v": 1}}`)

	deployed := false
	testHookFiltered = func(path string) {
		if !deployed && strings.HasSuffix(path, "z.json") {
			deployed = true
			write("a.rego", "package conduit\n\ndecision := {\"allow\": data.z.v == 2, \"reason\": \"new\"}\n")
			write("z.json", `{"z": {"v": 2}}`)
		}
	}
	defer func() { testHookFiltered = nil }()

	snap, err := Source{Path: dir}.load()
	if err != nil {
		t.Fatal(err)
	}
	if !deployed {
		t.Fatal("the hook did not run")
	}
	data, _ := json.Marshal(snap.data)
	var rego string
	for _, m := range snap.modules {
		rego = m.String()
	}
	if !strings.Contains(string(data), `"v":2`) || !strings.Contains(rego, "new") {
		t.Fatalf("loaded data %s with module\n%s\nwant the new version whole", data, rego)
	}
}

// A directory that changes on every read is refused, not loaded half.
func TestLoadRefusesADirectoryThatKeepsChanging(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "p.rego")
	os.WriteFile(p, []byte("package conduit\n\ndecision := {\"allow\": false, \"reason\": \"0\"}\n"), 0o644)
	n := 0
	testHookFiltered = func(path string) {
		n++
		os.WriteFile(filepath.Join(dir, "d.json"), []byte(`{"n": `+strings.Repeat("1", n)+`}`), 0o644)
	}
	defer func() { testHookFiltered = nil }()
	if _, err := (Source{Path: dir}).load(); err == nil || !strings.Contains(err.Error(), "kept changing") {
		t.Fatalf("load of a directory changing on every read: %v", err)
	}
}
