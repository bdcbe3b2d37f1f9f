package policy_test

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/conduit-ot/conduit/policy"
)

// A policy that could reach another host — http.send, net.lookup_ip_addr,
// called directly or as the value of a with modifier — does not compile:
// it is refused at start and on reload (the last good version keeps
// deciding), and nothing is sent. A local listener counts connection
// attempts to prove it.
func TestNetworkBuiltinsAreRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var dialled atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dialled.Add(1)
			c.Close()
		}
	}()
	url := "http://" + ln.Addr().String() + "/"
	for name, body := range map[string]string{
		"http.send":          fmt.Sprintf(`decision := {"allow": true, "reason": "x"} if http.send({"method": "GET", "url": %q}).status_code == 200`, url),
		"http.send with":     fmt.Sprintf("g(a) := {}\ndecision := {\"allow\": true, \"reason\": sprintf(\"%%v\", [x])} if {\n\tx := g({\"method\": \"GET\", \"url\": %q}) with g as http.send\n}", url),
		"net.lookup_ip_addr": `decision := {"allow": true, "reason": "x"} if count(net.lookup_ip_addr("localhost")) >= 0`,
	} {
		t.Run(name, func(t *testing.T) {
			src := "package conduit\n\n" + body + "\n"
			_, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: policyDir(t, map[string]string{"p.rego": src})}})
			fn := strings.Fields(name)[0]
			if !errors.Is(err, policy.ErrCompile) || !strings.Contains(err.Error(), fn) {
				t.Fatalf("New: %v, want ErrCompile naming %s", err, fn)
			}

			// On reload: refused, the last good version keeps deciding.
			dir := policyDir(t, map[string]string{"p.rego": allowAll})
			e, err := policy.New(ctx, policy.Options{Source: policy.Source{Path: dir}})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			good := e.Revision()
			writeFiles(t, dir, map[string]string{"p.rego": src})
			if err := e.Reload(ctx); !errors.Is(err, policy.ErrCompile) {
				t.Fatalf("Reload: %v, want ErrCompile", err)
			}
			if d := e.Decide(ctx, readHR("127.0.0.1:1", 0, 1)); !d.Allow || d.Revision != good {
				t.Errorf("decision after the refused reload %+v", d)
			}
			// The Rego test runner refuses it the same way.
			if _, err := policy.RunTests(ctx, policy.Source{Path: policyDir(t, map[string]string{"p.rego": src})}, policy.TestOptions{}); err == nil {
				t.Error("RunTests accepted the policy")
			}
		})
	}
	if n := dialled.Load(); n != 0 {
		t.Errorf("the policies connected %d times", n)
	}
}
