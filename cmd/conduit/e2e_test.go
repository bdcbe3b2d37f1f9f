package main

// Black-box tests of the built binary: configuration errors, reload on
// SIGHUP (a bad policy is refused, the last good one keeps deciding), drain
// on SIGTERM, and the invariant that the device received exactly the writes
// the audit trail allowed.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mb "github.com/simonvetter/modbus"

	"github.com/conduit-ot/conduit/audit"
	"github.com/conduit-ot/conduit/audit/audittest"
	"github.com/conduit-ot/conduit/rules"
	"github.com/conduit-ot/conduit/sim"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// conduitBinary builds the conduit binary once per test run.
func conduitBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "conduit-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "conduit")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// copyReferencePolicy writes the embedded reference policy into a new
// directory, so a test can change it.
func copyReferencePolicy(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	err := fs.WalkDir(rules.FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := rules.FS.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, path), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// proc is a running conduit process.
type proc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startConduit runs `conduit run` and waits until the listener accepts.
func startConduit(t *testing.T, config, listen string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(conduitBinary(t), "run", "--config", config, "--drain", "5s"), stderr: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("conduit stderr:\n%s", p.stderr.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("tcp", listen)
		if err == nil {
			c.Close()
			return p
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("conduit exited: %v\n%s", err, p.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("conduit did not listen on %s\n%s", listen, p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func writeConfig(t *testing.T, dir, listen, upstream, policyDir, extra string) (path, auditFile string) {
	t.Helper()
	auditFile = filepath.Join(dir, "audit.jsonl")
	path = filepath.Join(dir, "conduit.yaml")
	y := fmt.Sprintf(`listeners:
  - name: plc-line1
    protocol: modbus
    listen: %s
    upstream: %s
%spolicy:
  path: %s
  decision_timeout: 5s
audit:
  file: %s
log:
  level: info
`, listen, upstream, extra, policyDir, auditFile)
	if err := os.WriteFile(path, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, auditFile
}

// setOption adds line (e.g. "watch: false") to the top-level section
// ("policy", "audit") of the configuration writeConfig wrote.
func setOption(t *testing.T, cfgPath, section, line string) {
	t.Helper()
	head := []byte("\n" + section + ":\n")
	cfg := mustRead(t, cfgPath)
	if !bytes.Contains(cfg, head) {
		t.Fatalf("%s has no %s section", cfgPath, section)
	}
	cfg = bytes.Replace(cfg, head, append(head, "  "+line+"\n"...), 1)
	if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
}

func setPolicyOption(t *testing.T, cfgPath, line string) {
	t.Helper()
	setOption(t, cfgPath, "policy", line)
}

func setAuditOption(t *testing.T, cfgPath, line string) {
	t.Helper()
	setOption(t, cfgPath, "audit", line)
}

// startRun starts `conduit run --config cfgPath` without waiting for it
// (startConduit waits until it listens), standard output to stdout (nil:
// discarded), and kills it at the end of the test. done receives its exit.
func startRun(t *testing.T, cfgPath string, stdout io.Writer) (cmd *exec.Cmd, stderr *syncBuffer, done chan error) {
	t.Helper()
	cmd = exec.Command(conduitBinary(t), "run", "--config", cfgPath)
	stderr = &syncBuffer{}
	cmd.Stderr = stderr
	cmd.Stdout = stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done = make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("conduit stderr:\n%s", stderr.String())
		}
	})
	return cmd, stderr, done
}

// waitOutput waits until out holds what, failing the test if the process
// whose exit done reports ends first (the exit is put back for others).
func waitOutput(t *testing.T, out *syncBuffer, done chan error, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), what) {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("conduit exited (%v) before writing %q", err, what)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("conduit did not write %q", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// startPLC starts a simulated PLC for the test's lifetime.
func startPLC(t *testing.T) *sim.PLC {
	t.Helper()
	plc, err := sim.StartPLC(sim.PLCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plc.Close() })
	return plc
}

func modbusClient(t *testing.T, addr string) *mb.ModbusClient {
	t.Helper()
	c, err := mb.NewClient(&mb.ClientConfiguration{URL: "tcp://" + addr, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestBinaryValidateNamesFileLineAndField(t *testing.T) {
	bin := conduitBinary(t)
	dir := t.TempDir()
	path, _ := writeConfig(t, dir, "127.0.0.1:0", "127.0.0.1:notaport", copyReferencePolicy(t), "")
	out, err := exec.Command(bin, "validate", "--config", path).CombinedOutput()
	if code := exitCode(err); code != exitError {
		t.Fatalf("exit %d, want %d\n%s", code, exitError, out)
	}
	if want := path + `:5: listeners[0].upstream: "127.0.0.1:notaport": invalid port "notaport"`; !strings.Contains(string(out), want) {
		t.Fatalf("output %q does not contain %q", out, want)
	}

	// A policy that does not compile is refused by validate too.
	pol := copyReferencePolicy(t)
	os.WriteFile(filepath.Join(pol, "broken.rego"), []byte("package conduit\n\nallow if {\n"), 0o644)
	path, _ = writeConfig(t, dir, "127.0.0.1:0", "127.0.0.1:502", pol, "")
	out, err = exec.Command(bin, "validate", "--config", path).CombinedOutput()
	if code := exitCode(err); code != exitError || !strings.Contains(string(out), "broken.rego:") {
		t.Fatalf("exit %d\n%s", code, out)
	}

	path, _ = writeConfig(t, dir, "127.0.0.1:0", "127.0.0.1:502", copyReferencePolicy(t), "")
	out, err = exec.Command(bin, "validate", "--config", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": ok: 1 listener(s)") {
		t.Fatalf("valid config: %v\n%s", err, out)
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// A bad policy is refused on SIGHUP and the last good one keeps deciding;
// a good one replaces it without dropping the client's connection.
func TestBinaryReloadKeepsLastGoodPolicy(t *testing.T) {
	plc := startPLC(t)
	dir := t.TempDir()
	pol := copyReferencePolicy(t)
	listen := freeAddr(t)
	cfgPath, auditFile := writeConfig(t, dir, listen, plc.Addr(), pol, "")
	// watch: the test drives reloads with SIGHUP only.
	setPolicyOption(t, cfgPath, "watch: false")
	p := startConduit(t, cfgPath, listen)
	c := modbusClient(t, listen)

	if err := c.WriteRegister(12, 300); err != nil {
		t.Fatalf("allowed write: %v", err)
	}

	// 1. A syntax error: refused, the running policy still allows.
	os.WriteFile(filepath.Join(pol, "broken.rego"), []byte("package conduit\n\nallow if {\n"), 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitAudit(t, auditFile, func(r audittest.Record) bool {
		return r.Action() == "policy-reload" && r.String("event.outcome") == "failure" && strings.Contains(r.String("event.reason"), "broken.rego")
	})
	if err := c.WriteRegister(12, 301); err != nil {
		t.Fatalf("write after a refused reload: %v", err)
	}
	os.Remove(filepath.Join(pol, "broken.rego"))

	// 2. A policy whose own Rego tests fail: refused too.
	os.WriteFile(filepath.Join(pol, "extra_test.rego"), []byte("package conduit_test\n\ntest_impossible if false\n"), 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitAudit(t, auditFile, func(r audittest.Record) bool {
		return r.Action() == "policy-reload" && r.String("event.outcome") == "failure" && strings.Contains(r.String("event.reason"), "test_impossible")
	})
	if err := c.WriteRegister(12, 302); err != nil {
		t.Fatalf("write after a refused reload: %v", err)
	}
	os.Remove(filepath.Join(pol, "extra_test.rego"))

	// 3. A good new version — one more grant, in a file of its own, as a
	// policy repository adds them — replaces it without dropping the
	// client's connection.
	if err := c.WriteRegister(50, 7); err == nil {
		t.Fatal("write to holding register 50 allowed before it was granted")
	}
	grant := `{"grants": {"plc-line1": {"reload-test": {
		"clients": {"cidrs": ["127.0.0.0/8"]},
		"modbus": {"units": [1], "write": {"holding_registers": [{"start": 50, "end": 50, "min": 0, "max": 10}]}}}}}}`
	os.WriteFile(filepath.Join(pol, "extra.json"), []byte(grant), 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitAudit(t, auditFile, func(r audittest.Record) bool {
		return r.Action() == "policy-reload" && r.String("event.outcome") == "success" && strings.HasPrefix(r.String("event.reason"), "reload: policy")
	})
	if err := c.WriteRegister(50, 7); err != nil {
		t.Fatalf("write granted by the new version, on the same connection: %v", err)
	}
	if err := c.WriteRegister(50, 11); err == nil {
		t.Fatal("write above the new grant's maximum was allowed")
	}
	if got := plc.Holding(50); got != 7 {
		t.Fatalf("holding 50 = %d", got)
	}
	checkInvariant(t, plc, auditFile)
}

// SIGTERM lets a request in flight finish, then the process exits 0.
func TestBinaryDrainsOnSIGTERM(t *testing.T) {
	release := make(chan struct{})
	dev := slowDevice(t, release)
	dir := t.TempDir()
	listen := freeAddr(t)
	cfgPath, auditFile := writeConfig(t, dir, listen, dev, copyReferencePolicy(t), "    timeouts:\n      response: 10s\n")
	p := startConduit(t, cfgPath, listen)

	conn, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte{0, 1, 0, 0, 0, 6, 1, 3, 0, 10, 0, 1}) // read holding 10
	waitAudit(t, auditFile, func(r audittest.Record) bool { return r.Action() == "request" })
	p.cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(200 * time.Millisecond) // the process must be draining, not gone
	select {
	case err := <-p.done:
		t.Fatalf("conduit exited before the request in flight was answered: %v", err)
	default:
	}
	close(release)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp := make([]byte, 11)
	if _, err := io.ReadFull(conn, resp); err != nil {
		t.Fatalf("response to the request in flight: %v", err)
	}
	if !bytes.Equal(resp, []byte{0, 1, 0, 0, 0, 5, 1, 3, 2, 0x12, 0x34}) {
		t.Fatalf("response % x", resp)
	}
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, p.stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("conduit did not exit after draining")
	}
	recs, err := audittest.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	if last := recs[len(recs)-1]; last.Action() != "stop" {
		t.Fatalf("last audit event %q, want stop", last.Action())
	}
}

// SIGTERM during a SIGHUP reload whose Rego tests take long (each runs
// until the 5 s test timeout): the reload used to run under
// context.Background(), so the main loop, busy with it, ignored SIGTERM
// until every test had timed out (here 20 × 5 s). Now SIGTERM cancels the
// reload, which is refused and audited, and the process stops at once.
func TestBinarySIGTERMCancelsASlowReload(t *testing.T) {
	plc := startPLC(t)
	dir := t.TempDir()
	pol := copyReferencePolicy(t)
	listen := freeAddr(t)
	cfgPath, auditFile := writeConfig(t, dir, listen, plc.Addr(), pol, "")
	setPolicyOption(t, cfgPath, "watch: false")
	p := startConduit(t, cfgPath, listen)

	// Tests that iterate without end (and without allocating) until the
	// per-test timeout.
	var slow strings.Builder
	slow.WriteString("package conduit_slow_test\n\nr := numbers.range(1, 1000)\n\nnever if {\n\tsome a in r\n\tsome b in r\n\tsome c in r\n\tsome d in r\n\ta + b + c + d < 0\n}\n")
	for i := range 20 {
		fmt.Fprintf(&slow, "\ntest_slow_%d if not never\n", i)
	}
	if err := os.WriteFile(filepath.Join(pol, "slow_test.rego"), []byte(slow.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.stderr.String(), "reloading (SIGHUP)") {
		if time.Now().After(deadline) {
			t.Fatal("the reload did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("conduit did not stop within 15 s of SIGTERM during a reload")
	}
	recs, err := audittest.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	refused := false
	for _, r := range recs {
		if r.Action() == "policy-reload" && r.String("event.outcome") == "failure" && strings.HasPrefix(r.String("event.reason"), "reload:") {
			refused = true
		}
	}
	if !refused || recs[len(recs)-1].Action() != "stop" {
		t.Errorf("audit trail: reload refusal %v, last event %q", refused, recs[len(recs)-1].Action())
	}
}

// The invariant, under concurrency: the set of writes the device received
// equals the set of allowed write events in the audit file.
func TestBinaryDeviceWritesEqualAllowedWriteEvents(t *testing.T) {
	plc := startPLC(t)
	dir := t.TempDir()
	listen := freeAddr(t)
	cfgPath, auditFile := writeConfig(t, dir, listen, plc.Addr(), copyReferencePolicy(t), "")
	p := startConduit(t, cfgPath, listen)

	randomWrites(t, listen)
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	p.done <- nil
	checkInvariant(t, plc, auditFile)
}

// randomWrites runs four concurrent clients through listen, each a mix of
// register and coil writes (some outside the reference policy's grants)
// and reads.
func randomWrites(t *testing.T, listen string) {
	t.Helper()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			c := modbusClient(t, listen)
			r := rand.New(rand.NewPCG(seed, 1))
			for i := 0; i < 60; i++ {
				// Addresses 5..24 and values 0..1500: some outside the
				// writable range 10..19, some above the maximum 1000.
				addr := uint16(5 + r.IntN(20))
				switch r.IntN(4) {
				case 0:
					c.WriteRegister(addr, uint16(r.IntN(1500)))
				case 1:
					c.WriteRegisters(addr, []uint16{uint16(r.IntN(1500)), uint16(r.IntN(1500))})
				case 2:
					c.WriteCoil(addr, r.IntN(2) == 1)
				default:
					c.ReadRegisters(addr, 2, mb.HOLDING_REGISTER)
				}
			}
		}(uint64(w))
	}
	wg.Wait()
}

// Monitor mode (policy.dry_run) forwards the reads the policy denies, never
// a write: the device still receives exactly the allowed writes.
func TestBinaryDryRunNeverForwardsDeniedWrites(t *testing.T) {
	plc := startPLC(t)
	dir := t.TempDir()
	listen := freeAddr(t)
	cfgPath, auditFile := writeConfig(t, dir, listen, plc.Addr(), copyReferencePolicy(t), "")
	setPolicyOption(t, cfgPath, "dry_run: true")
	p := startConduit(t, cfgPath, listen)

	// Holding registers 200-201 are outside the grant: a deny the monitor
	// mode forwards.
	c := modbusClient(t, listen)
	if _, err := c.ReadRegisters(200, 2, mb.HOLDING_REGISTER); err != nil {
		t.Fatalf("denied read in monitor mode: %v", err)
	}
	// A write of 5000 (above the maximum 1000) stays denied.
	if err := c.WriteRegister(12, 5000); err == nil {
		t.Fatal("a write above the maximum was accepted in monitor mode")
	}
	randomWrites(t, listen)
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	p.done <- nil

	recs, err := audittest.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	dry := 0
	for _, r := range recs {
		if b, _ := r.Get("conduit.dry_run"); b == true {
			dry++
			if r.String("conduit.operation.access") != "read" {
				t.Errorf("a %s was let through by monitor mode: %v", r.String("conduit.operation.access"), r)
			}
		}
	}
	if dry == 0 {
		t.Error("no event says the monitor mode let a denied read through")
	}
	checkInvariant(t, plc, auditFile)
}

// checkInvariant compares the device's write log with the allowed write
// events of the audit file, as multisets of (table, address, values).
func checkInvariant(t *testing.T, plc *sim.PLC, auditFile string) {
	t.Helper()
	recs, err := audittest.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := audittest.CheckSequence(recs); err != nil {
		t.Fatal(err)
	}
	audited := map[string]int{}
	denied := 0
	for _, r := range recs {
		if r.Action() == "request" && r.String("conduit.operation.access") == "write" && !r.AllowedWrite() {
			denied++
		}
	}
	for _, r := range audittest.AllowedWrites(recs) {
		vals, _ := r.Get("modbus.values")
		audited[fmt.Sprintf("%s %d %v", r.String("modbus.table"), r.Uint("modbus.address"), vals)]++
	}
	received := map[string]int{}
	for _, w := range plc.Writes() {
		vals := make([]any, len(w.Values))
		for i, v := range w.Values {
			vals[i] = float64(v)
		}
		received[fmt.Sprintf("%s %d %v", w.Table, w.Address, vals)]++
	}
	if fmt.Sprint(audited) != fmt.Sprint(received) {
		t.Fatalf("device received %v\naudit allowed   %v", received, audited)
	}
	if len(received) == 0 {
		t.Fatal("no write went through: the test proves nothing")
	}
	t.Logf("%d distinct allowed writes, %d denied write events, device and audit agree", len(received), denied)
}

func waitAudit(t *testing.T, path string, match func(audittest.Record) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if f, err := os.Open(path); err == nil {
			sc := bufio.NewScanner(f)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				if r, err := audittest.ParseLine(sc.Bytes()); err == nil && match(r) {
					f.Close()
					return
				}
			}
			f.Close()
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no matching audit event in %s", path)
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// slowDevice answers every FC 3 request with 0x1234 once release is closed.
func slowDevice(t *testing.T, release chan struct{}) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				req := make([]byte, 12)
				for {
					if _, err := io.ReadFull(conn, req); err != nil {
						return
					}
					<-release
					conn.Write([]byte{req[0], req[1], 0, 0, 0, 5, req[6], 3, 2, 0x12, 0x34})
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// With the reference policy, the attack frames get a refusal and nothing
// reaches the device; the connection lives on.
func TestBinaryReferencePolicyRefusesAttacks(t *testing.T) {
	plc := startPLC(t)
	dir := t.TempDir()
	listen := freeAddr(t)
	cfgPath, auditFile := writeConfig(t, dir, listen, plc.Addr(), copyReferencePolicy(t), "")
	startConduit(t, cfgPath, listen)
	conn, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, tc := range []struct {
		name      string
		req, want []byte
	}{
		{"broadcast write (unit 0, FC 6)", []byte{0, 1, 0, 0, 0, 6, 0, 6, 0, 12, 0, 7}, []byte{0, 1, 0, 0, 0, 3, 0, 0x86, 1}},
		{"FC 8 sub-function 4, force listen only", []byte{0, 2, 0, 0, 0, 6, 1, 8, 0, 4, 0, 0}, []byte{0, 2, 0, 0, 0, 3, 1, 0x88, 1}},
		{"FC 8 sub-function 1, restart communications", []byte{0, 3, 0, 0, 0, 6, 1, 8, 0, 1, 0, 0}, []byte{0, 3, 0, 0, 0, 3, 1, 0x88, 1}},
		{"FC 90, Schneider UMAS", []byte{0, 4, 0, 0, 0, 4, 1, 90, 0, 2}, []byte{0, 4, 0, 0, 0, 3, 1, 0xda, 1}},
		{"FC 43/13, CANopen", []byte{0, 5, 0, 0, 0, 4, 1, 43, 13, 0}, []byte{0, 5, 0, 0, 0, 3, 1, 0xab, 1}},
		{"setpoint above the maximum", []byte{0, 6, 0, 0, 0, 6, 1, 6, 0, 12, 0x13, 0x88}, []byte{0, 6, 0, 0, 0, 3, 1, 0x86, 3}},
		{"write outside the writable registers", []byte{0, 7, 0, 0, 0, 6, 1, 6, 0, 50, 0, 1}, []byte{0, 7, 0, 0, 0, 3, 1, 0x86, 2}},
		{"unknown client unit 9", []byte{0, 8, 0, 0, 0, 6, 9, 3, 0, 0, 0, 1}, []byte{0, 8, 0, 0, 0, 3, 9, 0x83, 1}},
	} {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write(tc.req); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got := make([]byte, len(tc.want))
		if _, err := io.ReadFull(conn, got); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !bytes.Equal(got, tc.want) {
			t.Errorf("%s: got % x, want % x", tc.name, got, tc.want)
		}
	}
	if n := plc.Requests(); n != 0 {
		t.Fatalf("the device received %d requests", n)
	}
	recs, err := audittest.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	denied := 0
	for _, r := range audittest.Filter(recs, "request") {
		if r.HasType("denied") {
			denied++
		}
	}
	if denied != 8 {
		t.Fatalf("%d denied request events, want 8", denied)
	}
}

// audit.read_delay, end to end: an allowed read is answered before its
// event is in the file, the event follows within the delay without any
// other event to carry it, and with reads and writes mixed the invariant
// holds and no event is missing after a drain.
func TestBinaryReadDelay(t *testing.T) {
	plc := startPLC(t)
	dir := t.TempDir()
	listen := freeAddr(t)
	cfgPath, auditFile := writeConfig(t, dir, listen, plc.Addr(), copyReferencePolicy(t), "")
	setAuditOption(t, cfgPath, "read_delay: 1s")
	p := startConduit(t, cfgPath, listen)

	reads := func() int {
		recs, err := audittest.ReadFile(auditFile)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, r := range audittest.Filter(recs, audit.ActionRequest) {
			if r.String("conduit.operation.access") == "read" {
				n++
			}
		}
		return n
	}
	// startConduit's probe connection ends with an event that is waited
	// for, and would carry the read's event with it if it came late.
	waitAudit(t, auditFile, func(r audittest.Record) bool { return r.Action() == audit.ActionConnectionClose })
	c := modbusClient(t, listen)
	if _, err := c.ReadRegisters(10, 2, mb.HOLDING_REGISTER); err != nil {
		t.Fatal(err)
	}
	if n := reads(); n != 0 {
		t.Fatalf("the read's event was on file when its answer came (%d): read_delay did not reach the audit sink", n)
	}
	waitAudit(t, auditFile, func(r audittest.Record) bool {
		return r.Action() == audit.ActionRequest && r.String("conduit.operation.access") == "read"
	})
	c.Close()

	randomWrites(t, listen)
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	p.done <- nil
	checkInvariant(t, plc, auditFile)
	if got, want := reads(), plc.Requests()-len(plc.Writes()); got < want {
		t.Errorf("%d read events after the drain, the device answered %d reads", got, want)
	}
}

// A SIGHUP that arrives while conduit run is still starting (policy
// loaded, listeners not yet serving) is a reload once it runs, not the
// end of the process: SIGHUP's default action is to terminate, and
// logrotate or a deploy script does not wait for "conduit running".
func TestBinarySIGHUPDuringStartup(t *testing.T) {
	plc := startPLC(t)
	dir := t.TempDir()
	listen := freeAddr(t)
	cfgPath, _ := writeConfig(t, dir, listen, plc.Addr(), copyReferencePolicy(t), "")
	cmd, stderr, done := startRun(t, cfgPath, nil)
	waitLog := func(what string) { t.Helper(); waitOutput(t, stderr, done, what) }
	waitLog(`"msg":"policy loaded"`) // inside startup, before the listeners serve
	cmd.Process.Signal(syscall.SIGHUP)
	waitLog(`"msg":"conduit running"`)
	waitLog(`"msg":"reloading (SIGHUP)"`)
	c := modbusClient(t, listen)
	if _, err := c.ReadRegisters(10, 1, mb.HOLDING_REGISTER); err != nil {
		t.Fatalf("after the early SIGHUP: %v", err)
	}
}

// TestBinaryBrokenStdout: with audit.stdout on, the reader of standard
// output goes away (a log shipper that died). Go's default is to end the
// process on the first write to that broken pipe — every connection of
// the plant with it, and nothing said why. Conduit stays up: the copy
// cannot be written, so operations are denied (fail closed) and stderr
// says why; the file trail records the failure.
func TestBinaryBrokenStdout(t *testing.T) {
	plc := startPLC(t)
	dir := t.TempDir()
	listen := freeAddr(t)
	cfgPath, auditFile := writeConfig(t, dir, listen, plc.Addr(), copyReferencePolicy(t), "")
	setAuditOption(t, cfgPath, "stdout: true")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	_, stderr, done := startRun(t, cfgPath, w)
	w.Close()
	// Read standard output until the listener answers, then stop reading.
	go io.Copy(io.Discard, r)
	waitOutput(t, stderr, done, `"msg":"conduit running"`)
	r.Close()

	c := modbusClient(t, listen)
	if _, err := c.ReadRegisters(10, 1, mb.HOLDING_REGISTER); err == nil {
		t.Fatal("a read was allowed although its event could not be copied to standard output")
	}
	select {
	case err := <-done:
		done <- err
		t.Fatalf("conduit ended when standard output broke: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := c.ReadRegisters(10, 1, mb.HOLDING_REGISTER); err == nil {
		t.Fatal("a second read was allowed")
	}
	if !strings.Contains(stderr.String(), "audit write failed") || !strings.Contains(stderr.String(), "broken pipe") {
		t.Errorf("stderr does not say that the audit copy failed with a broken pipe")
	}
	waitAudit(t, auditFile, func(r audittest.Record) bool {
		return r.String("event.action") == "audit-write-failure" && strings.Contains(r.String("event.reason"), "broken pipe")
	})
}
