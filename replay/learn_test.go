package replay

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/replay/internal/synth"
	"github.com/conduit-ot/conduit/rules"
)

// publicCaptures are the committed captures.
func publicCaptures(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(pcapDir, "*.pcap*"))
	if err != nil || len(files) < 10 {
		t.Fatalf("captures: %v %v", files, err)
	}
	return files
}

// learnedPolicy writes a policy directory holding the reference policy's
// Rego (rules.FS) and the given data files, and returns its engine.
// withExample adds the reference data.json too.
func learnedPolicy(t *testing.T, withExample bool, data map[string][]byte) *policy.Engine {
	t.Helper()
	dir := t.TempDir()
	err := fs.WalkDir(rules.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if filepath.Ext(p) == ".rego" || (withExample && p == "data.json") {
			b, err := fs.ReadFile(rules.FS, p)
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, p), b, 0o644)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range data {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A test of the learned data with the reference policy's own
	// validation (rules/validate.rego).
	valid := "package learned_test\n\nimport data.conduit\n\ntest_learned_data_is_valid if {\n\terrors := conduit.data_errors\n\tprint(\"data_errors:\", errors)\n\tcount(errors) == 0\n}\n"
	if err := os.WriteFile(filepath.Join(dir, "zz_learned_test.rego"), []byte(valid), 0o644); err != nil {
		t.Fatal(err)
	}
	rep, err := policy.RunTests(context.Background(), policy.Source{Path: dir}, policy.TestOptions{Filter: "test_learned_data_is_valid"})
	if err != nil {
		t.Fatal(err)
	}
	if pass, fail, errs, _ := rep.Counts(); pass != 1 || fail+errs != 0 {
		t.Fatalf("learned data is not valid for the reference policy: %+v", rep.Results)
	}
	e, err := policy.New(context.Background(), policy.Options{Source: policy.Source{Path: dir}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// learnCapture is a synthetic capture with what the committed ones lack:
// a broadcast write, writes that widen a range, repeated and rare requests.
func learnCapture(t *testing.T) string {
	return writeCapture(t, func(w *synth.Writer) {
		c := w.Conn(ap("10.1.1.5:40000"), ap("10.0.0.2:502"))
		must(t, c.Handshake())
		for range 3 {
			must(t, c.Send(synth.ToServer, readHR)) // holding 10..11, three times
			must(t, c.Send(synth.ToClient, readHRr))
		}
		must(t, c.Send(synth.ToServer, writeHR)) // holding 15 := 500, once
		must(t, c.Send(synth.ToClient, writeHRr))
		must(t, c.Send(synth.ToServer, hexb("0006 0000 0006 01 06 0010 0007")))      // holding 16 := 7
		must(t, c.Send(synth.ToServer, hexb("0007 0000 0006 00 05 0003 ff00")))      // broadcast: coil 3 on
		must(t, c.Send(synth.ToServer, hexb("0008 0000 0008 01 16 0014 00f2 0025"))) // FC 22 on 20
		must(t, c.Send(synth.ToServer, hexb("0009 0000 0006 01 08 0000 1234")))      // FC 8/0 echo
		must(t, c.Close())
	})
}

// TestReplayAfterLearnAllowsEverythingLearned is the proof: learn
// from every committed capture (and a synthetic one), then replay the same
// captures with the reference policy and only the learned data: every
// operation is allowed, except the protocol violations, which the proxy
// refuses whatever the policy says and learn therefore does not learn.
func TestReplayAfterLearnAllowsEverythingLearned(t *testing.T) {
	files := append(publicCaptures(t), learnCapture(t))
	ctx := context.Background()
	l, err := Learn(ctx, files, LearnOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Inexpressible) != 0 || l.BelowMinCount != 0 {
		t.Errorf("inexpressible %v, below min count %d", l.Inexpressible, l.BelowMinCount)
	}
	b, err := l.Data.Encode()
	if err != nil {
		t.Fatal(err)
	}
	// The policy directory is a copy of the reference Rego plus only the
	// learned data (the reference data.json would allow loopback clients
	// on its own; see TestLearnedMergesWithReferenceData).
	e := learnedPolicy(t, false, map[string][]byte{"learned.json": b})
	rep, err := Replay(ctx, files, Options{Decider: e})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Operations != l.Operations || rep.Operations < 290 {
		t.Errorf("replay decided %d operations, learn saw %d", rep.Operations, l.Operations)
	}
	if rep.Denied != rep.ProtocolViolations || rep.ProtocolViolations != l.Refused {
		var text bytes.Buffer
		rep.WriteText(&text)
		t.Errorf("denied %d, protocol violations %d (learn refused %d):\n%s\nlearned:\n%s", rep.Denied, rep.ProtocolViolations, l.Refused, text.String(), b)
	}
	t.Logf("%s; replay: %d allowed, %d protocol violations denied", l, rep.Allowed, rep.Denied)
}

// TestLearnedMergesWithReferenceData: learned.json next to the reference
// data.json loads (grant ids do not collide), the reference policy's own
// Rego tests still pass (policy.run_tests would accept it), and it still
// allows everything.
func TestLearnedMergesWithReferenceData(t *testing.T) {
	files := []string{filepath.Join(pcapDir, "local_pymodbus_allfc.pcapng"), learnCapture(t)}
	ctx := context.Background()
	l, err := Learn(ctx, files, LearnOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := l.Data.Encode()
	e := learnedPolicy(t, true, map[string][]byte{"learned.json": b})
	dir := t.TempDir()
	entries, _ := fs.ReadDir(rules.FS, ".")
	for _, en := range entries {
		copyFromFS(t, en.Name(), dir)
	}
	os.WriteFile(filepath.Join(dir, "learned.json"), b, 0o644)
	rep0, err := policy.RunTests(ctx, policy.Source{Path: dir}, policy.TestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pass, fail, errs, _ := rep0.Counts(); pass == 0 || fail+errs != 0 {
		t.Errorf("reference Rego tests with learned.json beside data.json: %d pass, %d fail, %d errors", pass, fail, errs)
	}
	rep, err := Replay(ctx, files, Options{Decider: e})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Denied != rep.ProtocolViolations || rep.Allowed == 0 {
		t.Errorf("allowed %d, denied %d, violations %d", rep.Allowed, rep.Denied, rep.ProtocolViolations)
	}
}

func copyFromFS(t *testing.T, name, dir string) {
	t.Helper()
	b, err := fs.ReadFile(rules.FS, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLearnMinCount(t *testing.T) {
	files := []string{learnCapture(t)}
	ctx := context.Background()
	l, err := Learn(ctx, files, LearnOptions{MinCount: 3})
	if err != nil {
		t.Fatal(err)
	}
	g := l.Data.Grants["modbus-10.0.0.2-502"]["learned-10.1.1.5"]
	if g == nil || g.Modbus == nil {
		t.Fatalf("grants %+v", l.Data.Grants)
	}
	m := g.Modbus
	// Only the read, seen three times, and unit 1 (six requests) pass.
	if !slices.Equal(m.Units, []int{1}) || len(m.Write) != 0 || len(m.Functions) != 0 || m.AllowBroadcast ||
		len(m.Read["holding_registers"]) != 1 || m.Read["holding_registers"][0].Start != 10 || m.Read["holding_registers"][0].End != 11 {
		b, _ := l.Data.Encode()
		t.Errorf("learned with min count 3:\n%s", b)
	}
	if l.BelowMinCount == 0 {
		t.Error("nothing counted below the minimum")
	}
	b, _ := l.Data.Encode()
	rep, err := Replay(ctx, files, Options{Decider: learnedPolicy(t, false, map[string][]byte{"learned.json": b})})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Allowed != 3 {
		t.Errorf("allowed %d, want the 3 reads", rep.Allowed)
	}
}

func TestLearnedGrantContent(t *testing.T) {
	l, err := Learn(context.Background(), []string{learnCapture(t)}, LearnOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := l.Data.Encode()
	want := `{
  "grants": {
    "modbus-10.0.0.2-502": {
      "learned-10.1.1.5": {
        "description": "learned by conduit learn from traffic seen 2026-05-04T10:00:00Z to 2026-05-04T10:00:00Z: review before use",
        "clients": {
          "cidrs": [
            "10.1.1.5/32"
          ]
        },
        "modbus": {
          "units": [
            0,
            1
          ],
          "allow_broadcast": true,
          "read": {
            "holding_registers": [
              {
                "start": 10,
                "end": 11
              }
            ]
          },
          "write": {
            "coils": [
              {
                "start": 3,
                "end": 3,
                "min": 1,
                "max": 1
              }
            ],
            "holding_registers": [
              {
                "start": 15,
                "end": 16,
                "min": 7,
                "max": 500
              },
              {
                "start": 20,
                "end": 20,
                "min": 5,
                "max": 247
              }
            ]
          },
          "functions": [
            {
              "function": 8,
              "subfunctions": [
                0
              ]
            }
          ]
        }
      }
    }
  }
}
`
	if string(b) != want {
		t.Errorf("learned\n%s\nwant\n%s", b, want)
	}
}

// TestLearnIdempotentAndMerge: the same input gives the same bytes; merging
// a learned file into itself changes nothing; learning captures one by one
// and merging gives what learning them together gives, in any order.
func TestLearnIdempotentAndMerge(t *testing.T) {
	ctx := context.Background()
	a := []string{filepath.Join(pcapDir, "local_pymodbus_allfc.pcapng"), filepath.Join(pcapDir, "opc_open62541_client-server_minimal.pcap")}
	b := []string{learnCapture(t), filepath.Join(pcapDir, "zeek_modbusSmall.pcap"), filepath.Join(pcapDir, "local_nodeopcua_none_session.pcapng")}
	enc := func(files []string) []byte {
		t.Helper()
		l, err := Learn(ctx, files, LearnOptions{})
		if err != nil {
			t.Fatal(err)
		}
		out, err := l.Data.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	parse := func(b []byte) *Data {
		t.Helper()
		d, err := ParseData(b)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	merge := func(x, y []byte) []byte {
		t.Helper()
		d := parse(x)
		MergeData(d, parse(y))
		out, err := d.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	la, lb, lab := enc(a), enc(b), enc(append(slices.Clone(a), b...))
	if again := enc(a); !bytes.Equal(again, la) {
		t.Error("learning the same captures twice gives different bytes")
	}
	if got := merge(la, la); !bytes.Equal(got, la) {
		t.Errorf("merging a file into itself changes it:\n%s\nwas\n%s", got, la)
	}
	if got := merge(la, lb); !bytes.Equal(got, lab) {
		t.Errorf("merge(a, b) differs from learning a and b together:\n%s\nwant\n%s", got, lab)
	}
	if got := merge(lb, la); !bytes.Equal(got, lab) {
		t.Error("merge is not commutative")
	}
	if got := merge(merge(la, lb), lb); !bytes.Equal(got, lab) {
		t.Error("re-merging b changes the result")
	}
	// Hand-written grants in the same file are kept as they are.
	hand := []byte(`{"grants": {"plc-line1": {"engineers": {"clients": {"roles": ["engineer"]}, "modbus": {"units": [1]}}}}}`)
	got := merge(hand, la)
	var doc map[string]map[string]map[string]json.RawMessage
	if err := json.Unmarshal(got, &doc); err != nil {
		t.Fatal(err)
	}
	if _, ok := doc["grants"]["plc-line1"]["engineers"]; !ok || len(doc["grants"]) != 1+len(parse(la).Grants) {
		t.Errorf("hand-written grant lost:\n%s", got)
	}
	if _, err := ParseData([]byte(`{"grants": {"x": {"y": {"clients": {}, "modbus": {"units": [1], "wat": 1}}}}}`)); err == nil ||
		!strings.Contains(err.Error(), "wat") {
		t.Errorf("unknown key accepted: %v", err)
	}
}
