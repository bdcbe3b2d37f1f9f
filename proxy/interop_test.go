package proxy

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/audit"
)

const debianPython = "/usr/bin/python3"

// pymodbusAvailable skips the test unless Debian's python3-pymodbus is
// installed (.ci/run installs it).
func pymodbusAvailable(t *testing.T) {
	t.Helper()
	if err := exec.Command(debianPython, "-c", "import pymodbus").Run(); err != nil {
		t.Skip("python3-pymodbus is not installed (apt-get install python3-pymodbus; .ci/run does)")
	}
}

// startPymodbusServer runs a pymodbus 3.0 server, a Modbus implementation
// independent of Conduit, with fresh tables.
func startPymodbusServer(t *testing.T) string {
	t.Helper()
	addr := freeLoopbackAddr(t)
	host, port, _ := strings.Cut(addr, ":")
	cmd := exec.Command(debianPython, "testdata/pymodbus_server.py", host, port)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		ready <- sc.Scan() && sc.Text() == "ready"
		for sc.Scan() {
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatal("pymodbus server did not start")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pymodbus server did not start in time")
	}
	return addr
}

// runPymodbusClient runs the pymodbus client script (shared with the
// codec's interop test) against addr and returns what it decoded, per
// request.
func runPymodbusClient(t *testing.T, addr string) map[string]any {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	out, err := exec.Command(debianPython, "../inspect/modbus/testdata/pymodbus_client.py", host, port).Output()
	if err != nil {
		t.Fatalf("pymodbus client: %v", err)
	}
	var res map[string]any
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("pymodbus client output %q: %v", out, err)
	}
	return res
}

// Every function code pymodbus speaks — 1..8, 11, 12, 15..17, 20..24, 43/14
// and the refusals — gives the client the same answers through the proxy
// (allow-all policy) as straight from the device.
func TestPymodbusEveryFunctionRoundTripsThroughTheProxy(t *testing.T) {
	pymodbusAvailable(t)
	if _, err := os.Stat("../inspect/modbus/testdata/pymodbus_client.py"); err != nil {
		t.Fatal(err)
	}
	direct := runPymodbusClient(t, startPymodbusServer(t))

	rec := &memRecorder{}
	l := startProxy(t, listenerConfig(t, startPymodbusServer(t), ""), allowAll(), rec)
	proxied := runPymodbusClient(t, l.Addr().String())

	// pymodbus 3.0's server answers FC 20 (read file record) with a
	// response that holds no sub-response at all; the proxy validates
	// responses against their request and refuses it (exception 0x0B),
	// which is the point of validating responses. Everything else must be
	// identical.
	refusedDeviceBug := map[string]bool{"fc20": true, "fc20_after_fc21": true}
	for name, want := range direct {
		got := proxied[name]
		if refusedDeviceBug[name] {
			// pymodbus prints exception 0x0B of function 20 as
			// "Exception Response(148, 20, GatewayNoResponse)".
			if e, ok := got.(map[string]any); !ok || e["error"] != "Exception Response(148, 20, GatewayNoResponse)" {
				t.Errorf("%s: through the proxy %v, want the gateway's exception", name, got)
			}
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: through the proxy %v, directly %v", name, got, want)
		}
	}
	if len(proxied) != len(direct) {
		t.Errorf("proxied results %d, direct %d", len(proxied), len(direct))
	}
	if n := len(rec.byAction(audit.ActionRequest)); n < len(direct) {
		t.Errorf("%d request events for %d requests", n, len(direct))
	}
	if n := len(rec.byAction(audit.ActionMalformed)); n != 2 {
		t.Errorf("%d malformed events, want 2 (the two FC 20 answers)", n)
	}
}
