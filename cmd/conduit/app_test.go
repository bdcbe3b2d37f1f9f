package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mb "github.com/simonvetter/modbus"

	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/policy"
	"github.com/conduit-ot/conduit/rules"
	"github.com/conduit-ot/conduit/sim"
)

// The Prometheus endpoint serves the proxy's counters as traffic moves them.
func TestMetricsEndpoint(t *testing.T) {
	plc, err := sim.StartPLC(sim.PLCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer plc.Close()
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
