package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mb "github.com/simonvetter/modbus"

	"github.com/conduit-ot/conduit/audit/audittest"
	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/rules"
)

// The Prometheus endpoint serves the proxy's counters as traffic moves them.
func TestMetricsEndpoint(t *testing.T) {
	plc := startPLC(t)
	dir := t.TempDir()
	metricsAddr := freeAddr(t)
	y := fmt.Sprintf(`listeners:
  - name: plc-line1
    protocol: modbus
    listen: 127.0.0.1:0
    upstream: %s
policy:
  path: embedded
  decision_timeout: 5s
audit:
  file: %s
metrics:
  listen: %s
`, plc.Addr(), filepath.Join(dir, "audit.jsonl"), metricsAddr)
	cfg, err := config.Parse(filepath.Join(dir, "conduit.yaml"), []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	a, err := startApp(context.Background(), cfg, appOptions{Policy: &policy.Source{Path: "rules", FS: rules.FS}})
	if err != nil {
		t.Fatal(err)
	}
	a.serve()
	defer a.shutdown(context.Background())

	c := modbusClient(t, a.listeners[0].Addr().String())
	if _, err := c.ReadRegisters(10, 2, mb.HOLDING_REGISTER); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteRegister(12, 5000); err == nil {
		t.Fatal("write above the maximum allowed")
	}

	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`conduit_decisions_total{listener="plc-line1",outcome="allowed"} 1`,
		`conduit_decisions_total{listener="plc-line1",outcome="denied"} 1`,
		`conduit_connections_accepted_total{listener="plc-line1"} 1`,
		`conduit_connections_open{listener="plc-line1"} 1`,
		"go_goroutines",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// logrotate renames the audit file and sends SIGHUP; if Conduit then stops
// without a clean shutdown (power loss, kill -9) before the next request,
// the restart must continue the sequence (audit/FIELDS.md: continued
// across restarts and log rotation). The SIGHUP's own events go to the new
// file, so it is never left empty.
func TestSequenceContinuesAfterRotationAndCrash(t *testing.T) {
	dir := t.TempDir()
	auditFile := filepath.Join(dir, "audit.jsonl")
	y := fmt.Sprintf(`listeners:
  - name: plc-line1
    protocol: modbus
    listen: 127.0.0.1:0
    upstream: 127.0.0.1:1
policy:
  path: embedded
  watch: false
audit:
  file: %s
`, auditFile)
	cfg, err := config.Parse(filepath.Join(dir, "conduit.yaml"), []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	start := func() *app {
		a, err := startApp(context.Background(), cfg, appOptions{Policy: &policy.Source{Path: "rules", FS: rules.FS}})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	a := start()
	if err := os.Rename(auditFile, auditFile+".1"); err != nil {
		t.Fatal(err)
	}
	a.reload(context.Background())
	a.close() // no stop event: as if the process died here
	rotated, err := audittest.ReadFile(auditFile + ".1")
	if err != nil || len(rotated) == 0 {
		t.Fatalf("rotated file: %d events, %v", len(rotated), err)
	}
	last := rotated[len(rotated)-1].Seq()

	b := start()
	b.close()
	cur, err := audittest.ReadFile(auditFile)
	if err != nil || len(cur) == 0 {
		t.Fatalf("new file: %d events, %v", len(cur), err)
	}
	if first := cur[0].Seq(); first != last+1 {
		t.Errorf("the new file starts at sequence %d; the rotated one ended at %d", first, last)
	}
	if err := audittest.CheckSequence(append(rotated, cur...)); err != nil {
		t.Error(err)
	}
}
