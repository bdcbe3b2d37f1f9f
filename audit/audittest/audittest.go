// Package audittest provides audit recorders and readers for tests: an
// in-memory Recorder that keeps every event both as recorded and as the
// SIEM would see it (the decoded JSON line), a Recorder that always fails,
// for the fail-closed paths, and helpers to read and check an audit JSONL
// file, for the invariant "writes the device received == allowed write
// events".
//
// Nothing here is for production wiring.
package audittest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Record is one decoded audit event: the JSON object of one line. Numbers
// are json.Number, so 64-bit sequence numbers are exact.
type Record map[string]any

// Get returns the value at a dotted path ("event.sequence").
func (r Record) Get(path string) (any, bool) {
	var cur any = map[string]any(r)
	for _, part := range strings.Split(path, ".") {
		obj, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = obj[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// Has reports whether path is present.
func (r Record) Has(path string) bool {
	_, ok := r.Get(path)
	return ok
}

// String returns the string at path, or "" if absent or not a string.
func (r Record) String(path string) string {
	v, _ := r.Get(path)
	s, _ := v.(string)
	return s
}

// Uint returns the unsigned integer at path, or 0.
func (r Record) Uint(path string) uint64 {
	v, _ := r.Get(path)
	n, ok := v.(json.Number)
	if !ok {
		return 0
	}
	u, err := strconv.ParseUint(n.String(), 10, 64)
	if err != nil {
		return 0
	}
	return u
}

// Bool returns the boolean at path, or false.
func (r Record) Bool(path string) bool {
	v, _ := r.Get(path)
	b, _ := v.(bool)
	return b
}

// Strings returns the strings of the array at path (a single string is a
// one-element list), or nil.
func (r Record) Strings(path string) []string {
	v, _ := r.Get(path)
	switch x := v.(type) {
	case string:
		return []string{x}
	case []any:
		out := make([]string, 0, len(x))
		for _, e := range x {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// Seq is event.sequence.
func (r Record) Seq() uint64 { return r.Uint("event.sequence") }

// Action is event.action.
func (r Record) Action() string { return r.String("event.action") }

// HasType reports whether event.type contains t ("allowed", "denied", ...).
func (r Record) HasType(t string) bool {
	for _, s := range r.Strings("event.type") {
		if s == t {
			return true
		}
	}
	return false
}

// AllowedWrite reports whether r is a decision that let a write through:
// a request event of type "allowed" (dry-run included: monitor mode
// forwards it) whose operation access is "write".
func (r Record) AllowedWrite() bool {
	return r.Action() == "request" && r.HasType("allowed") &&
		r.String("conduit.operation.access") == "write"
}

// ParseLines decodes an audit JSONL stream strictly: every line must be
// one JSON object and end with a newline. The error names the first bad
// line (1-based).
func ParseLines(rd io.Reader) ([]Record, error) {
	br := bufio.NewReader(rd)
	var recs []Record
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if err == io.EOF {
			if len(line) != 0 {
				return recs, fmt.Errorf("audittest: line %d: no final newline (torn line %q)", n, truncate(line))
			}
			return recs, nil
		}
		if err != nil {
			return recs, err
		}
		rec, err := ParseLine(line)
		if err != nil {
			return recs, fmt.Errorf("audittest: line %d: %w", n, err)
		}
		recs = append(recs, rec)
	}
}

// ParseLine decodes one line (with or without its newline) as one JSON
// object and nothing else.
func ParseLine(line []byte) (Record, error) {
	d := json.NewDecoder(bytes.NewReader(line))
	d.UseNumber()
	var rec Record
	if err := d.Decode(&rec); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w (%q)", err, truncate(line))
	}
	if rec == nil {
		return nil, fmt.Errorf("not a JSON object: %q", truncate(line))
	}
	if d.More() {
		return nil, fmt.Errorf("more than one JSON value: %q", truncate(line))
	}
	var extra json.RawMessage
	if err := d.Decode(&extra); err != io.EOF {
		return nil, fmt.Errorf("trailing data: %q", truncate(line))
	}
	return rec, nil
}

func truncate(b []byte) []byte {
	if len(b) > 120 {
		return b[:120]
	}
	return b
}

// ReadFile reads and strictly parses an audit file (ParseLines).
func ReadFile(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseLines(f)
}

// CheckSequence returns an error unless every record has an event.sequence
// and they strictly increase in order.
func CheckSequence(recs []Record) error {
	var prev uint64
	for i, r := range recs {
		seq := r.Seq()
		if seq == 0 {
			return fmt.Errorf("audittest: record %d has no event.sequence", i+1)
		}
		if seq <= prev {
			return fmt.Errorf("audittest: record %d: sequence %d after %d", i+1, seq, prev)
		}
		prev = seq
	}
	return nil
}

// AllowedWrites returns the records that let a write through
// (Record.AllowedWrite): their number must equal the writes the device
// received.
func AllowedWrites(recs []Record) []Record {
	var out []Record
	for _, r := range recs {
		if r.AllowedWrite() {
			out = append(out, r)
		}
	}
	return out
}

// Filter returns the records with event.action == action.
func Filter(recs []Record, action string) []Record {
	var out []Record
	for _, r := range recs {
		if r.Action() == action {
			out = append(out, r)
		}
	}
	return out
}

// errLine is returned for events that failed to encode; see Memory.
var errLine = errors.New("audittest: encoded event is not one JSON line")
