package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

// Error is one problem in a configuration file.
type Error struct {
	File  string // path of the configuration file ("" when parsed from bytes)
	Line  int    // 1-based; 0 when the field is absent from the file
	Field string // dotted path, e.g. "listeners[0].upstream"
	Msg   string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteByte(':')
	}
	if e.Line > 0 {
		b.WriteString(strconv.Itoa(e.Line))
		b.WriteByte(':')
	}
	if b.Len() > 0 {
		b.WriteByte(' ')
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one file, in file order.
type Errors []*Error

func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Load reads, defaults and validates the configuration at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data)
}

// Parse is Load for configuration bytes; name is used in error messages and
// its directory resolves relative paths ("" means the working directory).
func Parse(name string, data []byte) (*Config, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		return nil, &Error{File: name, Line: yamlErrorLine(err), Msg: yamlErrorMsg(err)}
	}
	// A second document ("---") would be ignored silently: refuse it.
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, &Error{File: name, Line: yamlErrorLine(err), Msg: yamlErrorMsg(err)}
	case !emptyDocument(&next):
		return nil, &Error{File: name, Line: next.Line, Msg: "a second YAML document (\"---\"): the configuration is one document"}
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	if doc.Kind != yaml.MappingNode {
		return nil, &Error{File: name, Line: doc.Line, Msg: "the configuration must be a mapping (listeners:, policy:, audit: ...)"}
	}

	var errs Errors
	checkKeys(name, doc, reflect.TypeOf(Config{}), "", &errs)
	if len(errs) > 0 {
		return nil, errs
	}

	lines := lineIndex(doc)
	cfg := Default()
	if err := doc.Decode(cfg); err != nil {
		return nil, typeErrors(name, lines, err)
	}
	cfg.File = name
	cfg.applyDefaults()
	cfg.resolvePaths(filepath.Dir(name))

	for _, e := range cfg.validate() {
		e.File = name
		e.Line = lines.find(e.Field)
		errs = append(errs, e)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return cfg, nil
}

// emptyDocument reports whether n is a document holding nothing (a "---"
// followed by nothing but comments).
func emptyDocument(n *yaml.Node) bool {
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null" && n.Value == ""
}

// checkKeys reports every mapping key that has no field in t, with its line,
// walking the node tree alongside the struct types. yaml's own KnownFields
// names the Go type instead of the path the user wrote; this names the path.
func checkKeys(file string, n *yaml.Node, t reflect.Type, path string, errs *Errors) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
				return
			}
			*errs = append(*errs, &Error{File: file, Line: n.Line, Field: path, Msg: "expected a mapping"})
			return
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			sub := join(path, k.Value)
			f, ok := fields[k.Value]
			if !ok {
				msg := "unknown field"
				if s := suggest(k.Value, fields); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
				*errs = append(*errs, &Error{File: file, Line: k.Line, Field: sub, Msg: msg})
				continue
			}
			checkKeys(file, v, f.Type, sub, errs)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
				return
			}
			*errs = append(*errs, &Error{File: file, Line: n.Line, Field: path, Msg: "expected a list"})
			return
		}
		for i, item := range n.Content {
			checkKeys(file, item, t.Elem(), fmt.Sprintf("%s[%d]", path, i), errs)
		}
	}
}

func yamlFields(t reflect.Type) map[string]reflect.StructField {
	m := make(map[string]reflect.StructField, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		m[name] = f
	}
	return m
}

// suggest returns the known field closest to an unknown key, if any is
// close enough to be a typo.
func suggest(key string, fields map[string]reflect.StructField) string {
	best, bestD := "", 3
	for name := range fields {
		if d := editDistance(key, name); d < bestD || (d == bestD && name < best) {
			best, bestD = name, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// lines maps field paths ("listeners[0].tls.cert_file") to the line of
// their value, or of their parent when the field is absent.
type lines map[string]int

func lineIndex(doc *yaml.Node) lines {
	l := lines{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				sub := join(path, k.Value)
				l[sub] = k.Line
				walk(v, sub)
			}
		case yaml.SequenceNode:
			for i, item := range n.Content {
				sub := fmt.Sprintf("%s[%d]", path, i)
				l[sub] = item.Line
				walk(item, sub)
			}
		}
	}
	walk(doc, "")
	return l
}

// find returns the line of field, or of its nearest ancestor present in the
// file (a missing required field is reported at its parent).
func (l lines) find(field string) int {
	for field != "" {
		if line, ok := l[field]; ok {
			return line
		}
		i := strings.LastIndexAny(field, ".[")
		if i < 0 {
			break
		}
		field = field[:i]
	}
	return 0
}

// typeErrors turns yaml's "line N: cannot unmarshal ..." list into Errors.
func typeErrors(file string, l lines, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return &Error{File: file, Line: yamlErrorLine(err), Msg: yamlErrorMsg(err)}
	}
	var errs Errors
	for _, msg := range te.Errors {
		line := 0
		if rest, ok := strings.CutPrefix(msg, "line "); ok {
			if n, tail, ok := strings.Cut(rest, ": "); ok {
				if v, err := strconv.Atoi(n); err == nil {
					line, msg = v, tail
				}
			}
		}
		errs = append(errs, &Error{File: file, Line: line, Field: l.at(line), Msg: msg})
	}
	return errs
}

// at returns the deepest field whose key is on line (yaml's type errors
// give only the line).
func (l lines) at(line int) string {
	best := ""
	for field, n := range l {
		if n == line && len(field) > len(best) {
			best = field
		}
	}
	return best
}

func yamlErrorLine(err error) int {
	msg := err.Error()
	if i := strings.Index(msg, "line "); i >= 0 {
		rest := msg[i+len("line "):]
		end := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
		if end > 0 {
			if v, err := strconv.Atoi(rest[:end]); err == nil {
				return v
			}
		}
	}
	return 0
}

func yamlErrorMsg(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if i := strings.Index(msg, "line "); i == 0 {
		if _, tail, ok := strings.Cut(msg, ": "); ok {
			return tail
		}
	}
	return msg
}

// UnmarshalYAML requires a unit ("5s", "250ms"): a bare number would be
// nanoseconds, which no one means in a configuration file.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	// A *yaml.TypeError lets the decoder go on and report every bad value
	// of the file at once.
	bad := func(format string, args ...any) error {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: ", n.Line) + fmt.Sprintf(format, args...)}}
	}
	if n.Kind != yaml.ScalarNode {
		return bad("expected a duration such as \"5s\"")
	}
	if n.Value == "0" {
		*d = 0
		return nil
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return bad("invalid duration %q (use a unit: \"500ms\", \"5s\", \"2m\")", n.Value)
	}
	if v < 0 {
		return bad("negative duration %q", n.Value)
	}
	*d = Duration(v)
	return nil
}
