package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/conduit-ot/conduit/config"
	"github.com/conduit-ot/conduit/pki"
)

// runCombined executes conduit in-process with args and returns its combined output.
func runCombined(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return runCtx(t.Context(), args...)
}

func runCtx(ctx context.Context, args ...string) (string, error) {
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runCombined(t, args...)
	if err != nil {
		t.Fatalf("conduit %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func perm(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestPKICommands(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "ca")
	pw := filepath.Join(tmp, "pass")
	os.WriteFile(pw, []byte("plant-7 secret\n"), 0o600)

	mustRun(t, "pki", "init", "--dir", dir, "--name", "Plant 7", "--password-file", pw, "--crl-next-update", "10d")
	if m := perm(t, dir); m != 0o700 {
		t.Errorf("CA dir %o", m)
	}
	for _, f := range []string{pki.FileRootKey, pki.FileIntermediateKey} {
		if m := perm(t, filepath.Join(dir, f)); m != 0o600 {
			t.Errorf("%s %o", f, m)
		}
	}
	if out, err := runCombined(t, "pki", "init", "--dir", dir); err == nil || !errors.Is(err, pki.ErrCAExists) {
		t.Fatalf("second init: %v\n%s", err, out)
	}
	if _, err := runCombined(t, "pki", "list"); err == nil {
		t.Fatal("pki without --dir accepted")
	}

	// Signing needs the passphrase; the wrong one fails.
	if _, err := runCombined(t, "pki", "issue", "client", "x", "--dir", dir); !errors.Is(err, pki.ErrKeyEncrypted) {
		t.Fatalf("issue without passphrase: %v", err)
	}
	bad := filepath.Join(tmp, "bad")
	os.WriteFile(bad, []byte("wrong"), 0o600)
	if _, err := runCombined(t, "pki", "issue", "client", "x", "--dir", dir, "--password-file", bad); err == nil {
		t.Fatal("issue with a wrong passphrase")
	}

	mustRun(t, "pki", "issue", "server", "appliance", "--dir", dir, "--password-file", pw, "--dns", "appliance.plant.example,localhost", "--ip", "127.0.0.1", "--days", "30")
	out := mustRun(t, "pki", "issue", "client", "hmi-1", "--dir", dir, "--password-file", pw, "--role", "operator", "--uri", "spiffe://plant.example/hmi-1", "--ou", "Line 3")
	if !strings.Contains(out, "role (Modbus/TCP Security, 1.3.6.1.4.1.50316.802.1): operator") {
		t.Fatalf("issue output:\n%s", out)
	}
	mustRun(t, "pki", "issue", "client", "viewer-1", "--dir", dir, "--password-file", pw, "--kty", "RSA", "--size", "2048")

	certs := filepath.Join(dir, pki.DirIssued)
	for _, n := range []string{"appliance", "hmi-1", "viewer-1"} {
		if m := perm(t, filepath.Join(certs, n+".key")); m != 0o600 {
			t.Errorf("%s.key %o", n, m)
		}
	}
	root := readCert(t, filepath.Join(dir, pki.FileRootCert))
	inter := readCert(t, filepath.Join(dir, pki.FileIntermediateCert))
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	inters.AddCert(inter)
	srv := readCert(t, filepath.Join(certs, "appliance.crt"))
	if _, err := srv.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, DNSName: "appliance.plant.example"}); err != nil {
		t.Fatalf("server certificate: %v", err)
	}
	if got := srv.NotAfter.Sub(srv.NotBefore); got != 30*24*time.Hour {
		t.Fatalf("--days 30 gave %s", got)
	}
	hmi := readCert(t, filepath.Join(certs, "hmi-1.crt"))
	if _, err := hmi.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("client certificate: %v", err)
	}
	// The role extension, decoded by hand: an ASN.1 UTF8String (tag 12).
	var raw asn1.RawValue
	found := false
	for _, e := range hmi.Extensions {
		if e.Id.Equal(pki.OIDModbusRole) {
			found = true
			if _, err := asn1.Unmarshal(e.Value, &raw); err != nil || raw.Tag != asn1.TagUTF8String || string(raw.Bytes) != "operator" || e.Critical {
				t.Fatalf("role extension: tag %d %q critical=%v err=%v", raw.Tag, raw.Bytes, e.Critical, err)
			}
		}
	}
	if !found {
		t.Fatal("no role extension")
	}
	if hmi.URIs[0].String() != "spiffe://plant.example/hmi-1" || hmi.Subject.OrganizationalUnit[0] != "Line 3" {
		t.Fatalf("client SANs/OU: %v %v", hmi.URIs, hmi.Subject.OrganizationalUnit)
	}
	if openssl, err := exec.LookPath("openssl"); err == nil {
		text, err := exec.Command(openssl, "x509", "-in", filepath.Join(certs, "hmi-1.crt"), "-noout", "-text").CombinedOutput()
		if err != nil {
			t.Fatalf("openssl: %v\n%s", err, text)
		}
		if !strings.Contains(string(text), "1.3.6.1.4.1.50316.802.1") || !strings.Contains(string(text), "operator") || !strings.Contains(string(text), "TLS Web Client Authentication") {
			t.Fatalf("openssl x509 -text:\n%s", text)
		}
		// openssl verifies the chain too, independently of crypto/x509.
		if v, err := exec.Command(openssl, "verify", "-CAfile", filepath.Join(dir, pki.FileRootCert), "-untrusted", filepath.Join(dir, pki.FileIntermediateCert), "-purpose", "sslclient", filepath.Join(certs, "hmi-1.crt")).CombinedOutput(); err != nil {
			t.Fatalf("openssl verify: %v\n%s", err, v)
		}
	} else {
		t.Log("openssl not installed: skipping the openssl cross-check")
	}

	// list, revoke, list again, crl.
	serial := pki.SerialString(hmi.SerialNumber)
	out = mustRun(t, "pki", "list", "--dir", dir)
	if !strings.Contains(out, serial) || !strings.Contains(out, "operator") || strings.Count(out, "\n") != 4 {
		t.Fatalf("list:\n%s", out)
	}
	out = mustRun(t, "pki", "revoke", strings.ToLower(serial), "--dir", dir, "--password-file", pw, "--reason", "key-compromise")
	if !strings.Contains(out, "Revoked "+serial) {
		t.Fatalf("revoke: %s", out)
	}
	var entries []pki.IndexEntry
	if err := json.Unmarshal([]byte(mustRun(t, "pki", "list", "--dir", dir, "--json")), &entries); err != nil {
		t.Fatal(err)
	}
	revoked := 0
	for _, e := range entries {
		if e.Revoked() {
			revoked++
			if e.Serial != serial || e.RevocationReason != "key-compromise" {
				t.Fatalf("revoked entry %+v", e)
			}
		}
	}
	if len(entries) != 3 || revoked != 1 {
		t.Fatalf("%d entries, %d revoked", len(entries), revoked)
	}
	crl := readCRL(t, filepath.Join(dir, pki.FileCRL))
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(hmi.SerialNumber) != 0 {
		t.Fatalf("CRL after revoke: %+v", crl.RevokedCertificateEntries)
	}
	if got := crl.NextUpdate.Sub(crl.ThisUpdate); got != 10*24*time.Hour {
		t.Fatalf("init --crl-next-update 10d: CRL next update in %s", got)
	}
	mustRun(t, "pki", "crl", "--dir", dir, "--password-file", pw, "--next-update", "36h")
	crl2 := readCRL(t, filepath.Join(dir, pki.FileCRL))
	if crl2.NextUpdate.Sub(crl2.ThisUpdate) != 36*time.Hour || crl2.Number.Cmp(crl.Number) <= 0 || len(crl2.RevokedCertificateEntries) != 1 {
		t.Fatalf("pki crl: next update %s, number %v", crl2.NextUpdate.Sub(crl2.ThisUpdate), crl2.Number)
	}
	if err := crl2.CheckSignatureFrom(inter); err != nil {
		t.Fatalf("CRL not signed by the intermediate: %v", err)
	}
	if _, err := runCombined(t, "pki", "revoke", serial, "--dir", dir, "--password-file", pw); err == nil {
		t.Fatal("revoked twice")
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := pki.ReadCerts(path)
	if err != nil {
		t.Fatal(err)
	}
	return c[0]
}

func readCRL(t *testing.T, path string) *x509.RevocationList {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	crls, err := pki.ParseCRLs(b)
	if err != nil {
		t.Fatal(err)
	}
	return crls[0]
}

// TestConnectCommand runs `conduit connect` in-process in front of an mTLS
// server built from the same CA, and relays a Modbus request through it.
func TestConnectCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	mustRun(t, "pki", "init", "--dir", dir)
	mustRun(t, "pki", "issue", "server", "appliance", "--dir", dir, "--dns", "localhost")
	mustRun(t, "pki", "issue", "client", "legacy", "--dir", dir, "--role", "operator")
	certs := filepath.Join(dir, pki.DirIssued)

	s, err := pki.NewServerTLS(t.Context(), &config.TLS{
		CertFile: filepath.Join(certs, "appliance.chain.crt"), KeyFile: filepath.Join(certs, "appliance.key"),
		ClientCAFile: filepath.Join(dir, pki.FileRootCert), CRLFile: filepath.Join(dir, pki.FileCRL),
	}, pki.ServerOptions{NoWatch: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	appl, err := tls.Listen("tcp", "127.0.0.1:0", s.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer appl.Close()
	roles := make(chan []string, 1)
	go func() {
		c, err := appl.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if tc.Handshake() != nil {
			return
		}
		id, _ := pki.IdentityFromConnectionState(tc.ConnectionState())
		roles <- id.Roles
		io.Copy(tc, tc)
	}()

	l, _ := net.Listen("tcp", "127.0.0.1:0")
	listen := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := runCtx(ctx, "connect", "--listen", listen, "--to", appl.Addr().String(), "--server-name", "localhost",
			"--cert", filepath.Join(certs, "legacy.chain.crt"), "--key", filepath.Join(certs, "legacy.key"), "--ca", filepath.Join(dir, pki.FileRootCert))
		done <- err
	}()
	var c net.Conn
	deadline := time.Now().Add(10 * time.Second)
	for c == nil {
		if c, err = net.Dial("tcp", listen); err != nil {
			c = nil
			if time.Now().After(deadline) {
				t.Fatalf("connect never listened: %v", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req := []byte{0, 7, 0, 0, 0, 6, 1, 3, 0, 0, 0, 2}
	c.Write(req)
	got := make([]byte, len(req))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, req) {
		t.Fatalf("through conduit connect: % x, %v", got, err)
	}
	if r := <-roles; len(r) != 1 || r[0] != "operator" {
		t.Fatalf("appliance saw roles %v", r)
	}
	c.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("connect did not stop on cancel")
	}
	if _, err := runCombined(t, "connect", "--to", "x:1", "--cert", "a", "--key", "b", "--ca", "c"); err == nil {
		t.Fatal("connect with missing files started")
	}
}
