package config

import "testing"

// The documented example must stay valid.
func TestExampleConfigIsValid(t *testing.T) {
	cfg, err := Load("../examples/conduit.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Listeners) != 1 || cfg.Listeners[0].Name != "plc-line1" {
		t.Fatalf("listeners = %+v", cfg.Listeners)
	}
}
