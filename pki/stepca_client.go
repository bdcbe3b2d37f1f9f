package pki

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/x509util"
)

// stepClient speaks the three calls of step-ca's HTTP API that a
// StepCASource needs: GET /root/{sha256}, POST /sign, POST /renew (see
// github.com/smallstep/certificates/ca.Client, whose wire format this
// follows). It is written here rather than imported because package ca also
// holds the CA server: importing it links the authority, its database
// drivers and cloud KMS clients into the proxy (3.8 MB -> 35 MB), none of
// which a TLS client needs. stepca_test.go checks compatibility against
// the real step-ca.
type stepClient struct {
	base    *url.URL
	timeout time.Duration
}

// maxResponse bounds what we read from the CA: a chain of a few
// certificates, or an error message.
const maxResponse = 1 << 20

func newStepClient(rawURL string, timeout time.Duration) (*stepClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("pki: step_ca.url %q: want https://host[:port]", rawURL)
	}
	return &stepClient{base: u, timeout: timeout}, nil
}

// stepCertResponse is step-ca's api.SignResponse (PEM strings).
type stepCertResponse struct {
	Crt       string   `json:"crt"`
	CA        string   `json:"ca"`
	CertChain []string `json:"certChain"`
}

// stepError is step-ca's error body.
type stepError struct {
	Status  int    `json:"status"`
	Message string `json:"message"`
}

// root fetches the root certificate whose SHA-256 is fp. The connection is
// not verified (there is nothing to verify it with yet): the fingerprint
// check is what makes the answer trustworthy.
func (c *stepClient) root(ctx context.Context, fp string) (*x509.Certificate, error) {
	tr := c.transport(&tls.Config{InsecureSkipVerify: true}) //nolint:gosec // checked by fingerprint below
	var resp struct {
		CA string `json:"ca"`
	}
	if err := c.do(ctx, tr, http.MethodGet, "/root/"+fp, nil, &resp); err != nil {
		return nil, err
	}
	certs, err := ParseCerts([]byte(resp.CA))
	if err != nil {
		return nil, fmt.Errorf("pki: step-ca root: %w", err)
	}
	sum := sha256.Sum256(certs[0].Raw)
	if hex.EncodeToString(sum[:]) != fp {
		return nil, fmt.Errorf("pki: step-ca returned a root whose fingerprint is not %s", fp)
	}
	return certs[0], nil
}

// sign sends a CSR with a one-time token.
func (c *stepClient) sign(ctx context.Context, roots *x509.CertPool, csr *x509.CertificateRequest, ott string) ([]*x509.Certificate, error) {
	body, err := json.Marshal(map[string]string{
		"csr": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw})),
		"ott": ott,
	})
	if err != nil {
		return nil, err
	}
	var resp stepCertResponse
	if err := c.do(ctx, c.transport(&tls.Config{RootCAs: roots}), http.MethodPost, "/sign", body, &resp); err != nil {
		return nil, err
	}
	return resp.chain()
}

// renew asks for a new certificate for cert's key, authenticating with cert.
func (c *stepClient) renew(ctx context.Context, roots *x509.CertPool, cert *tls.Certificate) ([]*x509.Certificate, error) {
	tr := c.transport(&tls.Config{RootCAs: roots, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }})
	var resp stepCertResponse
	if err := c.do(ctx, tr, http.MethodPost, "/renew", nil, &resp); err != nil {
		return nil, err
	}
	return resp.chain()
}

func (c *stepClient) transport(tc *tls.Config) *http.Transport {
	tc.MinVersion = tls.VersionTLS12
	return &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		TLSClientConfig:     tc,
		ForceAttemptHTTP2:   true,
	}
}

func (c *stepClient) do(ctx context.Context, tr *http.Transport, method, path string, body []byte, out any) error {
	defer tr.CloseIdleConnections()
	u := c.base.ResolveReference(&url.URL{Path: strings.TrimSuffix(c.base.Path, "/") + path})
	req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("pki: step-ca: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := (&http.Client{Transport: tr, Timeout: c.timeout}).Do(req)
	if err != nil {
		return fmt.Errorf("pki: step-ca %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("pki: step-ca %s: %w", path, err)
	}
	if resp.StatusCode >= 400 {
		var se stepError
		if json.Unmarshal(b, &se) == nil && se.Message != "" {
			return fmt.Errorf("pki: step-ca %s: %s (HTTP %d)", path, se.Message, resp.StatusCode)
		}
		return fmt.Errorf("pki: step-ca %s: HTTP %d", path, resp.StatusCode)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("pki: step-ca %s: decode response: %w", path, err)
	}
	return nil
}

func (r *stepCertResponse) chain() ([]*x509.Certificate, error) {
	pems := r.CertChain
	if len(pems) == 0 {
		pems = []string{r.Crt, r.CA}
	}
	var chain []*x509.Certificate
	for _, p := range pems {
		if p == "" {
			continue
		}
		certs, err := ParseCerts([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("pki: step-ca response: %w", err)
		}
		chain = append(chain, certs...)
	}
	if len(chain) == 0 {
		return nil, errors.New("pki: step-ca returned no certificate")
	}
	return chain, nil
}

// csrFromToken builds a key and a CSR that match what a JWK token
// authorizes: the token's subject as common name and its SANs (the subject
// alone when it lists none, as step-ca does).
func csrFromToken(ott string) (*x509.CertificateRequest, crypto.Signer, error) {
	tok, err := jose.ParseSigned(ott)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: step-ca token: %w", err)
	}
	var claims struct {
		jose.Claims
		SANs []string `json:"sans"`
	}
	// Unverified: the CA verifies the token; we only read what to ask for.
	if err := tok.UnsafeClaimsWithoutVerification(&claims); err != nil {
		return nil, nil, fmt.Errorf("pki: step-ca token: %w", err)
	}
	if claims.Subject == "" {
		return nil, nil, errors.New("pki: step-ca token has no subject")
	}
	sans := claims.SANs
	if len(sans) == 0 {
		sans = []string{claims.Subject}
	}
	key, err := GenerateKey(KeySpec{})
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509util.CreateCertificateRequest(claims.Subject, sans, key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: step-ca CSR: %w", err)
	}
	return csr, key, nil
}
