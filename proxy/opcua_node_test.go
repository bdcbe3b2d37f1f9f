package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/audit"
)

// Interop with an independent OPC UA stack: a node-opcua client through the
// proxy to a node-opcua server (tests/opcua-node), under the reference
// policy. .ci/install-opcua-node.sh installs the npm project.

const nodeProject = "../tests/opcua-node"

func nodeOPCUA(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node-opcua interop skipped: no node on PATH")
	}
	if _, err := os.Stat(filepath.Join(nodeProject, "node_modules", "node-opcua", "package.json")); err != nil {
		t.Skip("node-opcua interop skipped: tests/opcua-node/node_modules is not installed (run .ci/install-opcua-node.sh)")
	}
	return node
}

// nodeServer runs tests/opcua-node/server.js and collects the WRITE and
// CALL lines it prints.
type nodeServer struct {
	mu    sync.Mutex
	lines []string
}

func (s *nodeServer) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, l := range s.lines {
		if strings.HasPrefix(l, "WRITE ") || strings.HasPrefix(l, "CALL ") {
			out = append(out, l)
		}
	}
	return out
}

func startNodeServer(t *testing.T, node, home string) (*nodeServer, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)

	cmd := exec.Command(node, "server.js", port)
	cmd.Dir = nodeProject
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+home)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	s := &nodeServer{}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.lines = append(s.lines, line)
			s.mu.Unlock()
			if strings.HasPrefix(line, "READY ") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(60 * time.Second):
		t.Fatalf("node-opcua server did not start: %s", stderr.String())
	}
	return s, addr
}

type nodeStep struct {
	OK     bool   `json:"ok"`
	Result any    `json:"result"`
	Error  string `json:"error"`
}

type nodeResult struct {
	Endpoints           []string `json:"endpoints"`
	NotificationsBefore int      `json:"notificationsBefore"`
	NotificationsAfter  int      `json:"notificationsAfter"`
	Read                nodeStep `json:"read"`
	WriteAllowed        nodeStep `json:"writeAllowed"`
	WriteMode           nodeStep `json:"writeMode"`
	WriteLarge          nodeStep `json:"writeLarge"`
	ReadLarge           nodeStep `json:"readLarge"`
	WriteDenied         nodeStep `json:"writeDenied"`
	ReadAfterWriteDeny  nodeStep `json:"readAfterWriteDeny"`
	CallAllowed         nodeStep `json:"callAllowed"`
	CallDenied          nodeStep `json:"callDenied"`
	ReadAfterCallDeny   nodeStep `json:"readAfterCallDeny"`
	WriteAfterDenies    nodeStep `json:"writeAfterDenies"`
}

func TestOPCUANodeOPCUAInterop(t *testing.T) {
	node := nodeOPCUA(t)
	home := t.TempDir() // node-opcua's certificate stores stay in the test
	srv, upstream := startNodeServer(t, node, home)
	rec := &memRecorder{}
	// Small chunks: the large write and read span several chunks each way.
	tp := &tap{}
	l := startUAProxy(t, uaListenerConfig(t, upstream, chunkLimits, ""), referencePolicy(t), rec, tp)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "client.js", proxyURL(l))
	cmd.Dir = nodeProject
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+home)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node client: %v\n%s", err, stderr.String())
	}
	// node-opcua logs on stdout too: the result is the line that is JSON.
	var res nodeResult
	var line string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "{") {
			line = l
		}
	}
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		t.Fatalf("client output %q: %v", out, err)
	}
	t.Logf("node-opcua client: %s", line)

	// Discovery through the proxy names the proxy (the client was built
	// with endpointMustExist, so it checked this itself too).
	if len(res.Endpoints) == 0 {
		t.Fatal("no endpoints")
	}
	for _, ep := range res.Endpoints {
		if ep != proxyURL(l) {
			t.Errorf("endpoint %s, want %s", ep, proxyURL(l))
		}
	}
	ok := func(name string, s nodeStep, want any) {
		t.Helper()
		if !s.OK || (want != nil && s.Result != want) {
			t.Errorf("%s: %+v, want %v", name, s, want)
		}
	}
	deniedStep := func(name string, s nodeStep) {
		t.Helper()
		if s.OK || !strings.Contains(s.Error, "BadUserAccessDenied") {
			t.Errorf("%s: %+v, want BadUserAccessDenied", name, s)
		}
	}
	ok("read", res.Read, 500.0)
	ok("allowed write", res.WriteAllowed, "Good")
	ok("write mode", res.WriteMode, "Good")
	ok("large write", res.WriteLarge, "Good")
	ok("large read", res.ReadLarge, 20000.0)
	// The large write reached the server in several chunks (and the large
	// read came back within the 8 KiB limit, else the proxy would have cut
	// the connection).
	intermediate := 0
	for i := 0; i < tp.count(); i++ {
		for _, c := range splitChunks(t, tp.sent(i)) {
			if c.typ == "MSG" && c.chunkType == 'C' {
				intermediate++
			}
		}
	}
	if intermediate < 2 {
		t.Errorf("%d intermediate chunks upstream", intermediate)
	}
	deniedStep("denied write", res.WriteDenied)
	ok("read after the denied write", res.ReadAfterWriteDeny, 750.0)
	ok("allowed call", res.CallAllowed, "Good")
	deniedStep("denied call", res.CallDenied)
	ok("read after the denied call", res.ReadAfterCallDeny, 750.0)
	ok("write after the denials", res.WriteAfterDenies, "Good")
	if res.NotificationsBefore < 3 || res.NotificationsAfter < 3 {
		t.Errorf("subscription notifications: %d before, %d after the denials", res.NotificationsBefore, res.NotificationsAfter)
	}

	// From the server's side: the allowed writes and call, never the denied.
	want := []string{
		`WRITE ns=2;s=Line1.Setpoint 750`,
		`WRITE ns=2;s=Line1.Mode "manual"`,
		`WRITE ns=2;s=Line1.Mode <20000 chars>`,
		`CALL ns=2;s=Line1 ns=2;s=Line1.ResetCounters`,
		`WRITE ns=2;s=Line1.Setpoint 100`,
	}
	if got := srv.received(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("server received:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// The trail: both denials with the status the client got, and the
	// session on every request after ActivateSession.
	var deniedOps []string
	for _, ev := range rec.byAction(audit.ActionRequest) {
		if !ev.Allowed {
			deniedOps = append(deniedOps, ev.Op.Name)
			if ev.StatusCode != 0x801F0000 || ev.Op.OPCUA.Session == nil {
				t.Errorf("denied %s: status 0x%08X, session %+v", ev.Op.Name, ev.StatusCode, ev.Op.OPCUA.Session)
			}
		}
	}
	if strings.Join(deniedOps, ",") != "write,call" {
		t.Errorf("denied operations %v", deniedOps)
	}
	if n := len(requestEvents(rec, "publish")); n == 0 {
		t.Error("no Publish was decided")
	}
	// A clean session end (CloseSession, CloseSecureChannel) is not an
	// error of either side.
	waitFor(t, "connection-close events", func() bool { return len(rec.byAction(audit.ActionConnectionClose)) >= 1 })
	for _, ev := range rec.byAction(audit.ActionConnectionClose) {
		t.Logf("connection %d closed: %s", ev.ConnID, ev.Reason)
	}
	for _, ev := range rec.byAction(audit.ActionMalformed) {
		t.Errorf("malformed-frame event: %s (%s)", ev.Reason, ev.Rule)
	}
	for _, ev := range rec.byAction(audit.ActionUnsolicited) {
		t.Errorf("unsolicited-response event: %s", ev.Reason)
	}
}
