package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/conduit-ot/conduit/rules"
)

// The captures and configuration replay's package generates and commits
// (replay/testdata_test.go).
var (
	replayData  = filepath.Join("..", "..", "replay", "testdata")
	replayCfg   = filepath.Join(replayData, "conduit.yaml")
	plcAllowed  = filepath.Join(replayData, "plc_line1.pcap")
	plcDenied   = filepath.Join(replayData, "plc_line1_denied.pcap")
	messy       = filepath.Join(replayData, "messy_modbus.pcap")
	publicPcaps = filepath.Join("..", "..", "testdata", "pcap")
)

func wantAll(t *testing.T, what, text string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(text, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, text)
		}
	}
}

func TestReplayAllowedExitsZero(t *testing.T) {
	out, errOut, code := run(t, "", "replay", "--config", replayCfg, plcAllowed)
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	wantAll(t, "report", out,
		"policy      embedded reference policy (rules/): --policy not given",
		"listeners   from "+replayCfg+", matched by server address",
		"plc-line1  modbus        1           7        7       0",
		"modbus      16  write_multiple_registers      1        1       0",
		"RESULT: all 7 operations would be allowed (exit status 0)")
}

func TestReplayDeniedExitsOne(t *testing.T) {
	out, errOut, code := run(t, "", "replay", "--config", replayCfg, plcDenied)
	if code != exitFound {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	wantAll(t, "report", out,
		"conduit.modbus.value     write of 5000 to holding_registers 15 exceeds max 1000 for listener plc-line1",
		"conduit.modbus.unit      unit 2 is not granted on listener plc-line1",
		"function 8 subfunction 1 (restart communications option) is not allowed on listener plc-line1",
		"exceptions: 11 gateway target failed to respond ×1",
		"RESULT: 3 of 4 operations would be DENIED (exit status 1)")
	wantAll(t, "stderr", errOut, "3 of 4 operations would be denied")
}

// TestReplayMatchesListenersByAddress: the same capture without the
// configuration gets a synthetic listener, which the reference grants do
// not know.
func TestReplayMatchesListenersByAddress(t *testing.T) {
	out, _, code := run(t, "", "replay", plcAllowed)
	if code != exitFound {
		t.Fatalf("exit %d\n%s", code, out)
	}
	wantAll(t, "report", out,
		"listeners   synthetic, one per server address (no --config)",
		"modbus-127.0.0.1-5020 *  modbus",
		"conduit.listener  listener modbus-127.0.0.1-5020 has no grants")
}

func TestReplayJSON(t *testing.T) {
	out, errOut, code := run(t, "", "replay", "--format", "json", "--config", replayCfg, plcDenied, messy)
	if code != exitFound {
		t.Fatalf("exit %d\n%s", code, errOut)
	}
	var ops, problems int
	var last map[string]any
	var write map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, line)
		}
		switch r["type"] {
		case "operation":
			ops++
			in := r["input"].(map[string]any)
			if in["operation"].(map[string]any)["name"] == "write_single_register" && write == nil {
				write = r
			}
			for _, k := range []string{"time", "file", "flow", "client", "server", "offset", "decision", "response"} {
				if _, ok := r[k]; !ok {
					t.Errorf("operation record without %s: %s", k, line)
				}
			}
		case "problem":
			problems++
		}
		last = r
	}
	if ops != 4+8 || problems != 2 {
		t.Errorf("%d operation and %d problem records", ops, problems)
	}
	in := write["input"].(map[string]any)
	dec := write["decision"].(map[string]any)
	resp := write["response"].(map[string]any)
	mb := in["modbus"].(map[string]any)
	if in["listener"] != "plc-line1" || in["upstream"] != "192.168.1.10:502" || in["client"].(map[string]any)["identity"] != nil ||
		mb["address"] != 15.0 || mb["values"].([]any)[0] != 5000.0 ||
		dec["allow"] != false || dec["rule"] != "conduit.modbus.value" || dec["exception_code"] != 3.0 || dec["policy"] != true ||
		resp["status"] != "ok" || write["file"] != plcDenied || write["flow"] != 1.0 || write["client"] != "127.0.0.1:41001" {
		t.Errorf("write record %v", write)
	}
	if last["type"] != "summary" || last["exit_status"] != 1.0 || last["operations"] != 12.0 || last["denied"] != 11.0 ||
		!strings.HasPrefix(last["revision"].(string), "sha256:") || last["config"] != replayCfg {
		t.Errorf("summary %v", last)
	}
}

func TestReplayErrorsExitTwo(t *testing.T) {
	dir := t.TempDir()
	notCapture := filepath.Join(dir, "notes.txt")
	os.WriteFile(notCapture, []byte("these are not packets\n"), 0o644)
	badPolicy := writePolicy(t, map[string]string{"p.rego": "package conduit\n\ndecision := \n"})
	badConfig := filepath.Join(dir, "bad.yaml")
	os.WriteFile(badConfig, []byte("listeners: [{name: x}]\n"), 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"replay", filepath.Join(dir, "missing.pcap")}, "no such file"},
		{[]string{"replay", notCapture}, "not a pcap or pcapng file"},
		{[]string{"replay", "--policy", badPolicy, plcAllowed}, "p.rego:"},
		{[]string{"replay", "--policy", filepath.Join(dir, "nope"), plcAllowed}, "nope"},
		{[]string{"replay", "--format", "yaml", plcAllowed}, `--format "yaml"`},
		{[]string{"replay", "--config", badConfig, plcAllowed}, "bad.yaml"},
		{[]string{"replay"}, "requires at least 1 arg"},
	} {
		out, errOut, code := run(t, "", tc.args...)
		if code != exitError || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q (want %q)\n%s", tc.args, code, errOut, tc.want, out)
		}
	}
	// A bad file after good ones: the report still covers what was read.
	out, _, code := run(t, "", "replay", "--config", replayCfg, plcAllowed, notCapture)
	if code != exitError || !strings.Contains(out, "7 decided: 7 allowed") {
		t.Errorf("partial: exit %d\n%s", code, out)
	}
	// The verdict line must not promise another exit status than the
	// command's: "all 7 operations would be allowed (exit status 0)" on a
	// run that could not read a capture reads as a clean result. Nor when
	// the bad file comes first and nothing was read at all.
	for _, args := range [][]string{
		{"replay", "--config", replayCfg, plcAllowed, notCapture},
		{"replay", "--config", replayCfg, notCapture, plcDenied},
	} {
		out, _, code := run(t, "", args...)
		if code != exitError || strings.Contains(out, "exit status 0") || strings.Contains(out, "exit status 1") ||
			!strings.Contains(out, "RESULT: INCOMPLETE") || !strings.Contains(out, "(exit status 2)") {
			t.Errorf("%v: exit %d, verdict:\n%s", args[3:], code, out)
		}
	}
}

// TestReplayPolicyBundle: an OPA bundle of the reference policy decides
// as its directory does.
func TestReplayPolicyBundle(t *testing.T) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	err := fs.WalkDir(rules.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(rules.FS, p)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: "/" + p, Mode: 0o644, Size: int64(len(b))}); err != nil {
			return err
		}
		_, err = tw.Write(b)
		return err
	})
	if err != nil || tw.Close() != nil || gz.Close() != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(t.TempDir(), "policy.tar.gz")
	if err := os.WriteFile(bundle, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := run(t, "", "replay", "--policy", bundle, "--config", replayCfg, plcAllowed, plcDenied)
	if code != exitFound {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	wantAll(t, "report", out, "policy      "+bundle, "11 decided: 8 allowed, 3 denied")
}

// referenceRegoWith writes a policy directory: the reference Rego and the
// given data files (no data.json).
func referenceRegoWith(t *testing.T, files map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	err := fs.WalkDir(rules.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(p) != ".rego" {
			return err
		}
		b, err := fs.ReadFile(rules.FS, p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, p), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLearnIdempotentMergeAndReplay(t *testing.T) {
	learned := filepath.Join(t.TempDir(), "learned.json")
	out, errOut, code := run(t, "", "learn", "--config", replayCfg, "-o", learned, plcAllowed)
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	wantAll(t, "summary", out, "learned 1 grants from 7 operations", "plc-line1", "learned-127.0.0.1", "written to "+learned)
	first, err := os.ReadFile(learned)
	if err != nil {
		t.Fatal(err)
	}
	wantAll(t, "learned.json", string(first), `"plc-line1": {`, `"learned-127.0.0.1": {`, `"127.0.0.1/32"`)

	// Again: byte-identical.
	if _, _, code := run(t, "", "learn", "--config", replayCfg, "-o", learned, plcAllowed); code != exitOK {
		t.Fatal(code)
	}
	again, _ := os.ReadFile(learned)
	if !bytes.Equal(first, again) {
		t.Errorf("re-learning changed the file:\n%s\nwas\n%s", again, first)
	}

	// Merge the second capture into it; the same as learning both at once.
	out, _, code = run(t, "", "learn", "--config", replayCfg, "-o", learned, plcDenied)
	if code != exitOK || !strings.Contains(out, "(merged into the existing grants)") {
		t.Fatalf("merge: exit %d\n%s", code, out)
	}
	merged, _ := os.ReadFile(learned)
	both, _, code := run(t, "", "learn", "--config", replayCfg, plcAllowed, plcDenied)
	if code != exitOK || both != string(merged) {
		t.Errorf("merged file differs from learning both together:\n%s\nvs\n%s", merged, both)
	}
	wantAll(t, "merged", string(merged), `"max": 5000`, `"subfunctions": [`)

	// Replay with the reference Rego and only the learned data: everything
	// learned is allowed (the reference data.json is left out: it would
	// allow this loopback client on its own).
	policyDir := referenceRegoWith(t, map[string][]byte{"learned.json": merged})
	out, errOut, code = run(t, "", "replay", "--policy", policyDir, "--config", replayCfg, plcAllowed, plcDenied)
	if code != exitOK {
		t.Errorf("replay after learn: exit %d\n%s\n%s", code, out, errOut)
	}
	wantAll(t, "report", out, "11 decided: 11 allowed, 0 denied")

	// And every committed capture, learned without a configuration.
	pcaps, _ := filepath.Glob(filepath.Join(publicPcaps, "*.pcap*"))
	data, errOut, code := run(t, "", append([]string{"learn"}, pcaps...)...)
	if code != exitOK || !strings.Contains(errOut, "learned 9 grants") {
		t.Fatalf("learn to stdout: exit %d\n%s", code, errOut)
	}
	policyDir = referenceRegoWith(t, map[string][]byte{"learned.json": []byte(data)})
	out, _, code = run(t, "", append([]string{"replay", "--policy", policyDir}, pcaps...)...)
	// Only the three protocol violations are denied: the proxy refuses them
	// whatever the policy says.
	if code != exitFound || !strings.Contains(out, "3 denied (3 protocol violations refused without the policy)") {
		t.Errorf("replay of the public captures after learn: exit %d\n%s", code, out)
	}
}

func TestLearnMinCountAndErrors(t *testing.T) {
	out, errOut, code := run(t, "", "learn", "--min-count", "2", "--config", replayCfg, plcAllowed)
	if code != exitOK || !strings.Contains(errOut, "learned 0 grants from 7 operations") || strings.TrimSpace(out) != `{
  "grants": {}
}` {
		t.Errorf("min count 2: exit %d\n%s\n%s", code, out, errOut)
	}
	bad := filepath.Join(t.TempDir(), "learned.json")
	os.WriteFile(bad, []byte(`{"grants": {}, "other": 1}`), 0o644)
	for _, args := range [][]string{
		{"learn", "--min-count", "0", plcAllowed},
		{"learn", "-o", bad, plcAllowed},
		{"learn", filepath.Join(t.TempDir(), "missing.pcap")},
		{"learn"},
	} {
		if _, errOut, code := run(t, "", args...); code != exitError {
			t.Errorf("%v: exit %d %s", args, code, errOut)
		}
	}
}
