package policy

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/loader"

	"github.com/conduit-ot/conduit/internal/readfile"
)

// Source is where a policy is read from.
type Source struct {
	// Path is a directory of .rego modules and .json/.yaml/.yml data files
	// (loaded like `opa eval -d DIR`: a data file's content goes under the
	// path of its sub-directory), or an OPA bundle (a file ending in
	// .tar.gz). Files and directories whose name starts with "." are
	// skipped. Either is at most maxPolicySize bytes (a bundle: also
	// uncompressed), and a directory's policy files must be regular files.
	Path string
	// FS, when set, is read instead of the disk, from its root (e.g.
	// rules.FS, the embedded reference policy). Path then only names it in
	// messages.
	FS fs.FS
}

func (s Source) String() string {
	switch {
	case s.FS != nil && s.Path != "":
		return s.Path + " (embedded)"
	case s.FS != nil:
		return "embedded policy"
	}
	return s.Path
}

func (s Source) isBundle() bool {
	return s.FS == nil && strings.HasSuffix(s.Path, ".tar.gz")
}

// isTestFile reports whether a module holds Rego tests. Test modules are
// compiled only for the test run, never into the version that decides.
func isTestFile(name string) bool { return strings.HasSuffix(name, "_test.rego") }

// snapshot is one consistent read of a policy source.
type snapshot struct {
	revision string                 // names the version: the content hash, or the bundle manifest revision
	hash     string                 // content hash: a reload with the same hash changes nothing
	files    []string               // every file read, sorted
	modules  map[string]*ast.Module // every module, tests included
	data     map[string]any         // base documents (data.*)
}

// productionModules returns the modules that decide (tests excluded).
func (s *snapshot) productionModules() map[string]*ast.Module {
	m := make(map[string]*ast.Module, len(s.modules))
	for name, mod := range s.modules {
		if !isTestFile(name) {
			m[name] = mod
		}
	}
	return m
}

// load reads the source. Errors wrap ErrLoad and name the file and line.
func (s Source) load() (*snapshot, error) {
	if s.FS == nil && s.Path == "" {
		return nil, fmt.Errorf("%w: no policy path", ErrLoad)
	}
	if s.isBundle() {
		return s.loadBundle()
	}
	if s.FS != nil {
		return s.loadDir() // embedded: cannot change
	}
	// A directory is read file by file: a deployment writing into it
	// meanwhile (git checkout, rsync, a file appearing) could give a
	// version that mixes old and new files, which never existed and may
	// well compile. It is read again until two reads in a row agree.
	prev, err := s.loadDir()
	if err != nil {
		return nil, err
	}
	for range maxLoadReads - 1 {
		snap, err := s.loadDir()
		if err != nil {
			return nil, err
		}
		if snap.hash == prev.hash {
			return snap, nil
		}
		prev = snap
	}
	return nil, fmt.Errorf("%w: %s kept changing while it was read (%d reads); reload when the deployment is done", ErrLoad, s, maxLoadReads)
}

// maxLoadReads bounds the reads of a directory that keeps changing.
const maxLoadReads = 4

// testHookFiltered, when set (tests), is called with each policy file's
// path just before the loader reads it.
var testHookFiltered func(path string)

func isPolicyFile(name string) bool {
	switch filepath.Ext(name) {
	case ".rego", ".json", ".yaml", ".yml":
		return true
	}
	return false
}

func (s Source) loadDir() (*snapshot, error) {
	root := s.Path
	fl := loader.NewFileLoader().WithRegoVersion(ast.RegoV1).WithProcessAnnotation(true)
	if s.FS != nil {
		fl = fl.WithFS(s.FS)
		root = "."
	} else {
		info, err := os.Stat(root)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrLoad, err)
		}
		if !info.IsDir() {
			return nil, fmt.Errorf("%w: %s is neither a directory nor a bundle (.tar.gz)", ErrLoad, root)
		}
	}
	var (
		files   []string
		total   int64
		refused []string // files not read, and why
	)
	// info is the file's (a symlink's target's) os.Stat; the loader reads
	// the file right after the filter lets it through.
	filter := func(path string, info fs.FileInfo, depth int) bool {
		if depth == 0 {
			return false
		}
		if strings.HasPrefix(info.Name(), ".") {
			return true
		}
		if info.IsDir() {
			return false
		}
		if !isPolicyFile(info.Name()) {
			return true
		}
		// A device (/dev/zero) or a FIFO would be read without end.
		if !info.Mode().IsRegular() {
			refused = append(refused, fmt.Sprintf("%s: %s, not a regular file", path, readfile.Kind(info.Mode())))
			return true
		}
		if total += info.Size(); total > maxPolicySize {
			refused = append(refused, fmt.Sprintf("%s: the policy files exceed %d bytes together", path, maxPolicySize))
			return true
		}
		files = append(files, path)
		if testHookFiltered != nil {
			testHookFiltered(path)
		}
		return false
	}
	res, err := fl.Filtered([]string{root}, filter)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrLoad, loadErrorText(err))
	}
	if len(refused) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrLoad, strings.Join(refused, "; "))
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%w: no .rego, .json or .yaml files in %s", ErrLoad, s)
	}
	slices.Sort(files)

	snap := &snapshot{files: files, modules: make(map[string]*ast.Module, len(res.Modules)), data: res.Documents}
	// The revision hashes the modules' bytes and the data as loaded
	// (canonical JSON, so reformatting a data file does not change it),
	// with names relative to the root so that a copy elsewhere keeps its
	// revision.
	h := sha256.New()
	// The loader keys modules by a cleaned path (no leading "/"); their
	// Name is the path as given, which is what errors and coverage show.
	byName := make(map[string]*loader.RegoFile, len(res.Modules))
	names := make([]string, 0, len(res.Modules))
	for _, rf := range res.Modules {
		names = append(names, rf.Name)
		byName[rf.Name] = rf
		snap.modules[rf.Name] = rf.Parsed
	}
	slices.Sort(names)
	for _, name := range names {
		rel, err := filepath.Rel(root, name)
		if err != nil {
			rel = name
		}
		fmt.Fprintf(h, "module %q %d\n", filepath.ToSlash(rel), len(byName[name].Raw))
		h.Write(byName[name].Raw)
	}
	data, err := json.Marshal(res.Documents)
	if err != nil {
		return nil, fmt.Errorf("%w: data: %v", ErrLoad, err)
	}
	fmt.Fprintf(h, "data %d\n", len(data))
	h.Write(data)
	snap.hash = "sha256:" + hex.EncodeToString(h.Sum(nil))[:16]
	snap.revision = snap.hash
	return snap, nil
}

// maxRevisionLen bounds a bundle manifest's revision.
const maxRevisionLen = 256

// maxPolicySize bounds a policy read into memory: the files of a
// directory together; a bundle's file, and its content once uncompressed
// (a gzip bomb is refused before it is expanded).
const maxPolicySize = 64 << 20

func (s Source) loadBundle() (*snapshot, error) {
	// A regular file of bounded size: a FIFO or /dev/zero named as the
	// bundle would hang or exhaust every later reload.
	raw, err := readfile.Regular(s.Path, maxPolicySize)
	if err != nil {
		return nil, fmt.Errorf("%w: bundle: %v", ErrLoad, err)
	}
	if err := checkUncompressed(raw, maxPolicySize); err != nil {
		return nil, fmt.Errorf("%w: bundle %s: %v", ErrLoad, s.Path, err)
	}
	// Signatures are not verified (docs/policy.md): deploy bundles through
	// a channel you trust, or verify them before they reach Conduit.
	b, err := bundle.NewCustomReader(bundle.NewTarballLoaderWithBaseURL(bytes.NewReader(raw), s.Path)).
		WithRegoVersion(ast.RegoV1).
		WithProcessAnnotations(true).
		WithSkipBundleVerification(true).
		WithBundleName(s.Path).
		WithSizeLimitBytes(maxPolicySize).
		Read()
	if err != nil {
		return nil, fmt.Errorf("%w: bundle %s: %s", ErrLoad, s.Path, loadErrorText(err))
	}
	if len(b.WasmModules) > 0 || len(b.PlanModules) > 0 {
		return nil, fmt.Errorf("%w: bundle %s: Wasm and plan bundles are not supported, only Rego", ErrLoad, s.Path)
	}
	snap := &snapshot{files: []string{s.Path}, modules: make(map[string]*ast.Module, len(b.Modules)), data: b.Data}
	if snap.data == nil {
		snap.data = map[string]any{}
	}
	for _, m := range b.Modules {
		// A tar file may hold the same name twice; which one decides
		// must not depend on who reads it.
		if _, dup := snap.modules[m.Path]; dup {
			return nil, fmt.Errorf("%w: bundle %s: module %s appears more than once", ErrLoad, s.Path, m.Path)
		}
		snap.modules[m.Path] = m.Parsed
		snap.files = append(snap.files, m.Path)
	}
	slices.Sort(snap.files[1:])
	sum := sha256.Sum256(raw)
	snap.hash = "sha256:" + hex.EncodeToString(sum[:])[:16]
	snap.revision = snap.hash
	if r := b.Manifest.Revision; r != "" {
		// The revision is written into every decision and audit event.
		if len(r) > maxRevisionLen || strings.IndexFunc(r, func(c rune) bool { return !unicode.IsPrint(c) }) >= 0 {
			return nil, fmt.Errorf("%w: bundle %s: the manifest revision must be at most %d printable characters (it goes into every audit event)",
				ErrLoad, s.Path, maxRevisionLen)
		}
		snap.revision = r
	}
	return snap, nil
}

// checkUncompressed streams the gzip stream raw through the decompressor,
// keeping nothing, and fails when it expands to more than limit bytes.
func checkUncompressed(raw []byte, limit int64) error {
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("not a gzip file: %v", err)
	}
	n, err := io.Copy(io.Discard, io.LimitReader(zr, limit+1))
	if err != nil {
		return fmt.Errorf("gzip: %v", err)
	}
	if n > limit {
		return fmt.Errorf("more than %d bytes uncompressed", limit)
	}
	return nil
}

// loadErrorText flattens loader errors (one per file) to one line each.
func loadErrorText(err error) string {
	var le loader.Errors
	if errors.As(err, &le) {
		parts := make([]string, 0, len(le))
		for _, e := range le {
			parts = append(parts, e.Error())
		}
		return strings.Join(parts, "; ")
	}
	return err.Error()
}
