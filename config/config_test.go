package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const minimal = `listeners:
  - name: plc-line1
    protocol: modbus
    listen: 127.0.0.1:5020
    upstream: 127.0.0.1:15020
policy:
  path: rules/
audit:
  file: audit.jsonl
`

func TestParseMinimalAppliesDefaults(t *testing.T) {
	cfg, err := Parse("/etc/conduit/conduit.yaml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Listeners[0]
	if l.DenyAction != "exception" || l.DenyException != 1 {
		t.Errorf("deny defaults = %q/%d", l.DenyAction, l.DenyException)
	}
	if l.MaxOutstanding != DefaultMaxOutstanding || l.MaxConnections != DefaultMaxConnections {
		t.Errorf("limits = %d/%d", l.MaxOutstanding, l.MaxConnections)
	}
	if l.Timeouts.Response.D() != DefaultResponseTimeout || l.Timeouts.MaxLifetime != 0 {
		t.Errorf("timeouts = %+v", l.Timeouts)
	}
	if cfg.Policy.Path != "/etc/conduit/rules" || cfg.Audit.File != "/etc/conduit/audit.jsonl" {
		t.Errorf("paths not resolved against the config directory: %q %q", cfg.Policy.Path, cfg.Audit.File)
	}
	if !cfg.Policy.WatchEnabled() || !cfg.Policy.TestsEnabled() {
		t.Error("watch and run_tests default to true")
	}
	if d := cfg.Audit.ReadDelay.D(); d != 0 {
		t.Errorf("audit.read_delay defaults to %s: by default every event is written before its operation is forwarded", d)
	}
	set, err := Parse("/etc/conduit/conduit.yaml", []byte(strings.Replace(minimal, "file: audit.jsonl", "file: audit.jsonl\n  read_delay: 2ms", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if d := set.Audit.ReadDelay.D(); d != 2*time.Millisecond {
		t.Errorf("audit.read_delay: 2ms reads as %s", d)
	}
}

func TestParseErrorsNameFileLineAndField(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string // substrings of the error, in order
	}{
		{"unknown key with suggestion", strings.Replace(minimal, "    upstream:", "    upstrem:", 1),
			[]string{"c.yaml:5: listeners[0].upstrem: unknown field (did you mean \"upstream\"?)"}},
		{"bad upstream", strings.Replace(minimal, "127.0.0.1:15020", "plc1", 1),
			[]string{"c.yaml:5: listeners[0].upstream: \"plc1\": missing port in address"}},
		{"bad duration", strings.Replace(minimal, "policy:", "    timeouts:\n      idle: 10\npolicy:", 1),
			[]string{"c.yaml:7: listeners[0].timeouts.idle: invalid duration \"10\""}},
		{"bad type", strings.Replace(minimal, "protocol: modbus", "protocol: modbus\n    max_outstanding: lots", 1),
			[]string{"c.yaml:4: listeners[0].max_outstanding: cannot unmarshal"}},
		{"bad protocol", strings.Replace(minimal, "protocol: modbus", "protocol: dnp3", 1),
			[]string{"c.yaml:3: listeners[0].protocol: \"dnp3\" is not supported"}},
		{"missing audit", strings.Replace(minimal, "audit:\n  file: audit.jsonl\n", "", 1),
			[]string{"c.yaml: audit.file: required"}},
		{"tls without client ca", minimal[:strings.Index(minimal, "policy:")] + "    tls:\n      cert_file: a.crt\n      key_file: a.key\n      min_version: \"1.1\"\n" + minimal[strings.Index(minimal, "policy:"):],
			[]string{"c.yaml:6: listeners[0].tls.client_ca_file: required", "c.yaml:9: listeners[0].tls.min_version: \"1.1\""}},
		{"duplicate listener", strings.Replace(minimal, "policy:", "  - name: plc-line1\n    protocol: modbus\n    listen: 127.0.0.1:5020\n    upstream: 127.0.0.1:1\npolicy:", 1),
			[]string{"c.yaml:6: listeners[1].name: \"plc-line1\" is already", "c.yaml:8: listeners[1].listen: 127.0.0.1:5020 is also"}},
		{"upstream tls without a client certificate", minimal[:strings.Index(minimal, "policy:")] + "    upstream_tls:\n      ca_file: plc-ca.crt\n" + minimal[strings.Index(minimal, "policy:"):],
			[]string{"c.yaml:6: listeners[0].upstream_tls.cert_file: required", "c.yaml:6: listeners[0].upstream_tls.key_file: required"}},
		{"not yaml", "listeners: [", []string{"c.yaml:1: "}},
		// Listen addresses that cannot both be bound: the second bind
		// used to fail only at start, naming no line.
		{"listen overlaps a wildcard", strings.Replace(minimal, "policy:", "  - name: plc-line2\n    protocol: modbus\n    listen: 0.0.0.0:5020\n    upstream: 10.0.0.7:502\npolicy:", 1),
			[]string{"c.yaml:8: listeners[1].listen: 0.0.0.0:5020 overlaps 127.0.0.1:5020, the address of listeners[0]"}},
		{"listen is the same IPv6 address", strings.Replace(strings.Replace(minimal, "listen: 127.0.0.1:5020", "listen: \"[::1]:5020\"", 1), "policy:", "  - name: plc-line2\n    protocol: modbus\n    listen: \"[0:0::1]:5020\"\n    upstream: 10.0.0.7:502\npolicy:", 1),
			[]string{"c.yaml:8: listeners[1].listen: [0:0::1]:5020 overlaps [::1]:5020, the address of listeners[0]"}},
		{"metrics on a listener's address", minimal + "metrics:\n  listen: \":5020\"\n",
			[]string{"c.yaml:11: metrics.listen: :5020 overlaps 127.0.0.1:5020, the address of listeners[0]"}},
		// The audit file where the proxy would append to something else.
		{"audit file in the policy directory", strings.Replace(minimal, "file: audit.jsonl", "file: rules/audit/trail.json", 1),
			[]string{"c.yaml:9: audit.file: /etc/conduit/rules/audit/trail.json is inside the policy directory"}},
		{"audit file is the policy bundle", strings.Replace(strings.Replace(minimal, "path: rules/", "path: p.tar.gz", 1), "file: audit.jsonl", "file: p.tar.gz", 1),
			[]string{"c.yaml:9: audit.file: /etc/conduit/p.tar.gz is also policy.path"}},
		{"audit file is the configuration", strings.Replace(minimal, "file: audit.jsonl", "file: c.yaml", 1),
			[]string{"c.yaml:9: audit.file: /etc/conduit/c.yaml is the configuration file itself"}},
		{"audit file is a key", minimal[:strings.Index(minimal, "policy:")] + "    tls:\n      cert_file: a.crt\n      key_file: audit.jsonl\n      client_ca_file: ca.crt\n" + minimal[strings.Index(minimal, "policy:"):],
			[]string{"audit.file: /etc/conduit/audit.jsonl is also listeners[0].tls.key_file"}},
		{"read delay too long", strings.Replace(minimal, "file: audit.jsonl", "file: audit.jsonl\n  read_delay: 5s", 1),
			[]string{"c.yaml:10: audit.read_delay: 5s: must be between 0"}},
		{"read delay negative", strings.Replace(minimal, "file: audit.jsonl", "file: audit.jsonl\n  read_delay: -1ms", 1),
			[]string{"c.yaml:10: audit.read_delay: negative duration"}},
		// A second document used to be ignored without a word.
		{"second document", minimal + "---\nlisteners: []\n",
			[]string{"c.yaml:10: a second YAML document"}},
		{"upstream is its own listen address", strings.Replace(minimal, "127.0.0.1:15020", "127.0.0.1:5020", 1),
			[]string{"c.yaml:5: listeners[0].upstream: \"127.0.0.1:5020\" is the listen address of this listener"}},
		{"upstream reaches a wildcard listen address", strings.Replace(strings.Replace(minimal, "127.0.0.1:15020", "localhost:5020", 1), "listen: 127.0.0.1:5020", "listen: \":5020\"", 1),
			[]string{"c.yaml:5: listeners[0].upstream: \"localhost:5020\" is the listen address"}},
		{"upstream loop through another listener", strings.Replace(minimal, "policy:", "  - name: plc-line2\n    protocol: modbus\n    listen: \"[::]:15020\"\n    upstream: localhost:5020\npolicy:", 1),
			[]string{"c.yaml:5: listeners[0].upstream: \"127.0.0.1:15020\" leads back to this listener through listeners[1]",
				"c.yaml:9: listeners[1].upstream: \"localhost:5020\" leads back to this listener through listeners[0]"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("/etc/conduit/c.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			for _, w := range tc.want {
				i := strings.Index(msg, w)
				if i < 0 {
					t.Fatalf("error %q does not contain %q", msg, w)
				}
				msg = msg[i+len(w):]
			}
		})
	}
}

// What the loop and document checks must not refuse: a chain of two
// listeners, another port on the same host, an empty trailing document.
func TestParseAcceptsNonLoops(t *testing.T) {
	for name, y := range map[string]string{
		"chain":                                   strings.Replace(minimal, "policy:", "  - name: plc-line2\n    protocol: modbus\n    listen: 0.0.0.0:15020\n    upstream: 10.0.0.7:502\npolicy:", 1),
		"two loopback addresses, same port":       strings.Replace(minimal, "policy:", "  - name: plc-line2\n    protocol: modbus\n    listen: 127.0.0.2:5020\n    upstream: 10.0.0.7:502\npolicy:", 1),
		"same host, other port":                   strings.Replace(minimal, "127.0.0.1:15020", "127.0.0.1:5021", 1),
		"other loopback address":                  strings.Replace(minimal, "127.0.0.1:15020", "127.0.0.2:5020", 1),
		"empty trailing document":                 minimal + "---\n# nothing more\n",
		"audit file next to the policy directory": strings.Replace(minimal, "file: audit.jsonl", "file: rules-audit/audit.jsonl", 1),
	} {
		if _, err := Parse("c.yaml", []byte(y)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "conduit.yaml")
	if err := os.WriteFile(path, []byte("listeners: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	var errs Errors
	if !errors.As(err, &errs) || errs[0].File != path || errs[0].Line != 1 || errs[0].Field != "listeners" {
		t.Fatalf("err = %#v", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestOPCUADefaults(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(strings.Replace(minimal, "protocol: modbus", "protocol: opcua", 1)))
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.Listeners[0].OPCUA
	if o == nil || o.SecurityMode != "none" || o.EndpointURL != "opc.tcp://127.0.0.1:5020" || o.MaxChunkSize != DefaultOPCUAMaxChunk {
		t.Fatalf("opcua = %+v", o)
	}
	if cfg.Listeners[0].Timeouts.Handshake.D() != 10*time.Second {
		t.Fatal("handshake default")
	}
}
