package config

import (
	"errors"
	"os"
	"testing"
)

// FuzzParse: any bytes either load into a configuration that validates, or
// fail with errors that name the file — never a panic.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("../examples/conduit.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(minimal))
	f.Add([]byte("listeners: [{name: a, protocol: opcua, listen: ':0', upstream: 'h:1', opcua: {security_mode: sign}}]\npolicy: {path: p}\naudit: {file: a}\n"))
	f.Add([]byte("listeners:\n  - tls: {step_ca: {url: 'https://ca:9000'}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data)
		if err != nil {
			var es Errors
			var e *Error
			if !errors.As(err, &es) && !errors.As(err, &e) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			for _, one := range es {
				if one.File != "fuzz.yaml" {
					t.Fatalf("error without the file: %v", one)
				}
			}
			return
		}
		if errs := cfg.validate(); len(errs) != 0 {
			t.Fatalf("a loaded configuration does not validate: %v", errs[0])
		}
	})
}
