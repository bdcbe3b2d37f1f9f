package pki

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smallstep/certificates/api"
	"github.com/smallstep/certificates/ca"

	"github.com/conduit-ot/conduit/config"
)

// Files kept in step_ca.dir.
const (
	StepCACertFile = "server.crt"  // leaf + intermediates from the CA
	StepCAKeyFile  = "server.key"  // 0600; renewals keep the same key
	StepCARootFile = "root_ca.crt" // the root, verified against root_fingerprint
)

// StepCAOptions tune a StepCASource.
type StepCAOptions struct {
	Logger *slog.Logger // nil: discard
	// OnRenew is called after every renewal attempt: the new leaf, or the
	// error (the current certificate stays in use).
	OnRenew func(leaf *x509.Certificate, err error)
	// Timeout bounds one request to the CA. Default 30s.
	Timeout time.Duration
	// Now is the clock (tests). Default time.Now.
	Now func() time.Time
}

// StepCASource obtains the server certificate from a step-ca with a one-time
// token (JWK provisioner), keeps it in step_ca.dir, and renews it with the
// current certificate (mTLS to /renew) at two thirds of its lifetime, as
// smallstep's ca.TLSRenewer does. It is a CertSource: each handshake gets the
// newest certificate, established connections are untouched.
type StepCASource struct {
	cfg  config.StepCA
	opts StepCAOptions
	log  *slog.Logger
	now  func() time.Time

	key   crypto.Signer
	roots *x509.CertPool
	cert  atomic.Pointer[tls.Certificate]

	clientMu sync.Mutex
	client   *ca.Client

	renewMu sync.Mutex // one renewal at a time (timer and RenewNow)
	stop    chan struct{}
	kick    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
	next    atomic.Pointer[time.Time]
}

// NewStepCASource loads the certificate persisted in cfg.Dir if it is still
// valid and was issued under cfg.RootFingerprint; otherwise it obtains one
// with the token in cfg.TokenFile. Then it starts the renewal loop.
func NewStepCASource(ctx context.Context, cfg *config.StepCA, opts StepCAOptions) (*StepCASource, error) {
	if cfg == nil {
		return nil, errors.New("pki: no step_ca configuration")
	}
	fp := normalizeFingerprint(cfg.RootFingerprint)
	if b, err := hex.DecodeString(fp); err != nil || len(b) != sha256.Size {
		return nil, errors.New("pki: step_ca.root_fingerprint must be the SHA-256 of the root certificate (64 hex digits)")
	}
	if cfg.URL == "" || cfg.Dir == "" {
		return nil, errors.New("pki: step_ca.url and step_ca.dir are required")
	}
	s := &StepCASource{
		cfg: *cfg, opts: opts, log: opts.Logger, now: opts.Now,
		stop: make(chan struct{}), kick: make(chan struct{}, 1),
	}
	s.cfg.RootFingerprint = fp
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.opts.Timeout <= 0 {
		s.opts.Timeout = 30 * time.Second
	}
	if err := os.MkdirAll(cfg.Dir, ModeCADir); err != nil {
		return nil, fmt.Errorf("pki: step_ca.dir: %w", err)
	}
	if err := s.loadPersisted(); err != nil {
		s.log.Info("step-ca: no usable persisted certificate; obtaining one with the token", "reason", err)
		if err := s.obtain(ctx); err != nil {
			return nil, err
		}
	}
	next := renewAt(s.cert.Load().Leaf)
	s.next.Store(&next)
	s.wg.Add(1)
	go s.loop()
	return s, nil
}

func normalizeFingerprint(s string) string {
	return strings.ToLower(strings.NewReplacer(":", "", "-", "", " ", "").Replace(strings.TrimSpace(s)))
}

// GetCertificate implements CertSource.
func (s *StepCASource) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cert.Load(), nil
}

// Certificate returns the current certificate (chain, key, Leaf).
func (s *StepCASource) Certificate() *tls.Certificate { return s.cert.Load() }

// NextRenewal is when the renewal loop will next try to renew.
func (s *StepCASource) NextRenewal() time.Time {
	if t := s.next.Load(); t != nil {
		return *t
	}
	return time.Time{}
}

// RenewNow renews immediately (an operator's request; tests).
func (s *StepCASource) RenewNow(ctx context.Context) error {
	err := s.renew(ctx)
	select { // re-plan the timer around the new certificate
	case s.kick <- struct{}{}:
	default:
	}
	return err
}

// Close stops the renewal loop.
func (s *StepCASource) Close() error {
	s.once.Do(func() {
		close(s.stop)
		s.wg.Wait()
	})
	return nil
}

// renewAt is the 2/3 point of the certificate's validity.
func renewAt(leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotBefore.Add(life * 2 / 3)
}

// retryAfter spaces failed renewals: a twentieth of the lifetime, between
// one second and five minutes, so that a short outage of the CA is ridden out
// well before the certificate expires.
func retryAfter(leaf *x509.Certificate) time.Duration {
	d := leaf.NotAfter.Sub(leaf.NotBefore) / 20
	return min(max(d, time.Second), 5*time.Minute)
}

func (s *StepCASource) loop() {
	defer s.wg.Done()
	failed := false
	for {
		leaf := s.cert.Load().Leaf
		var wait time.Duration
		if failed {
			wait = retryAfter(leaf)
		} else {
			wait = renewAt(leaf).Sub(s.now())
		}
		wait = max(wait, 0)
		at := s.now().Add(wait)
		s.next.Store(&at)
		t := time.NewTimer(wait)
		select {
		case <-s.stop:
			t.Stop()
			return
		case <-s.kick:
			t.Stop()
			failed = false
			continue
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.opts.Timeout)
		go func() { // Close interrupts a renewal in flight
			select {
			case <-s.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		err := s.renew(ctx)
		cancel()
		failed = err != nil
		if err != nil && s.now().After(leaf.NotAfter) {
			s.log.Error("step-ca: the certificate has expired and cannot be renewed with itself; put a new token in token_file and restart", "not_after", leaf.NotAfter, "err", err)
		}
	}
}

// renew asks the CA for a new certificate for the same key, authenticating
// with the current one.
func (s *StepCASource) renew(ctx context.Context) error {
	s.renewMu.Lock()
	defer s.renewMu.Unlock()
	cur := s.cert.Load()
	leaf, err := s.doRenew(ctx, cur)
	if s.opts.OnRenew != nil {
		s.opts.OnRenew(leaf, err)
	}
	if err != nil {
		s.log.Warn("step-ca: renewal failed; the current certificate stays in use", "err", err, "not_after", cur.Leaf.NotAfter)
		return err
	}
	s.log.Info("step-ca: certificate renewed", "serial", SerialString(leaf.SerialNumber), "not_after", leaf.NotAfter)
	return nil
}

func (s *StepCASource) doRenew(ctx context.Context, cur *tls.Certificate) (*x509.Certificate, error) {
	client, err := s.getClient(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := client.RenewWithContext(ctx, s.transport(cur))
	if err != nil {
		return nil, fmt.Errorf("pki: step-ca renew: %w", err)
	}
	chain, err := chainFromResponse(resp)
	if err != nil {
		return nil, err
	}
	if !publicKeysEqual(s.key.Public(), chain[0].PublicKey) {
		return nil, errors.New("pki: step-ca renew: the CA returned a certificate for another key")
	}
	c, err := s.install(chain)
	if err != nil {
		return nil, err
	}
	return c.Leaf, nil
}

// obtain signs a new key with the one-time token and persists the result.
func (s *StepCASource) obtain(ctx context.Context) error {
	if s.cfg.TokenFile == "" {
		return errors.New("pki: step-ca: no valid certificate in step_ca.dir and no step_ca.token_file to obtain one")
	}
	b, err := ReadMaterial(s.cfg.TokenFile)
	if err != nil {
		return fmt.Errorf("pki: step-ca token: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return fmt.Errorf("pki: step-ca token file %s is empty", s.cfg.TokenFile)
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	// The root first, verified against the configured fingerprint; then
	// every request goes over TLS verified with it.
	boot, err := ca.NewClient(s.cfg.URL, ca.WithTransport(s.transport(nil)), ca.WithTimeout(s.opts.Timeout))
	if err != nil {
		return fmt.Errorf("pki: step-ca client: %w", err)
	}
	rr, err := boot.RootWithContext(ctx, s.cfg.RootFingerprint)
	if err != nil {
		return fmt.Errorf("pki: step-ca root %s: %w", s.cfg.RootFingerprint, err)
	}
	root := rr.RootPEM.Certificate
	s.roots = x509.NewCertPool()
	s.roots.AddCert(root)

	client, err := s.getClient(ctx)
	if err != nil {
		return err
	}
	req, pk, err := ca.CreateSignRequest(token)
	if err != nil {
		return fmt.Errorf("pki: step-ca token: %w", err)
	}
	resp, err := client.SignWithContext(ctx, req)
	if err != nil {
		return fmt.Errorf("pki: step-ca sign (is the token valid, unused and unexpired?): %w", err)
	}
	chain, err := chainFromResponse(resp)
	if err != nil {
		return err
	}
	key, ok := pk.(crypto.Signer)
	if !ok {
		return fmt.Errorf("pki: step-ca: unexpected key type %T", pk)
	}
	keyPEM, err := EncodeKey(key, nil)
	if err != nil {
		return err
	}
	if err := WriteFileAtomic(filepath.Join(s.cfg.Dir, StepCARootFile), EncodeCerts(root), ModePublic); err != nil {
		return err
	}
	if err := WriteFileAtomic(filepath.Join(s.cfg.Dir, StepCAKeyFile), keyPEM, ModePrivateKey); err != nil {
		return err
	}
	s.key = key
	if _, err := s.install(chain); err != nil {
		return err
	}
	s.log.Info("step-ca: certificate obtained", "subject", chain[0].Subject.String(), "not_after", chain[0].NotAfter)
	return nil
}

// install verifies chain against the root, persists it and makes it current.
func (s *StepCASource) install(chain []*x509.Certificate) (*tls.Certificate, error) {
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{
		Roots: s.roots, Intermediates: inter, CurrentTime: s.now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return nil, fmt.Errorf("pki: step-ca: the certificate does not verify with the root: %w", err)
	}
	c := &tls.Certificate{PrivateKey: s.key, Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	if err := WriteFileAtomic(filepath.Join(s.cfg.Dir, StepCACertFile), EncodeCerts(chain...), ModePublic); err != nil {
		return nil, err
	}
	s.cert.Store(c)
	return c, nil
}

// loadPersisted uses the certificate in Dir when it is unexpired, matches
// its key and chains to a root with the configured fingerprint.
func (s *StepCASource) loadPersisted() error {
	roots, err := ReadCerts(filepath.Join(s.cfg.Dir, StepCARootFile))
	if err != nil {
		return err
	}
	sum := sha256.Sum256(roots[0].Raw)
	if hex.EncodeToString(sum[:]) != s.cfg.RootFingerprint {
		return fmt.Errorf("%s is not the root with fingerprint %s", StepCARootFile, s.cfg.RootFingerprint)
	}
	s.roots = x509.NewCertPool()
	s.roots.AddCert(roots[0])
	c, err := LoadKeyPair(filepath.Join(s.cfg.Dir, StepCACertFile), filepath.Join(s.cfg.Dir, StepCAKeyFile))
	if err != nil {
		return err
	}
	if s.now().After(c.Leaf.NotAfter) {
		return fmt.Errorf("the persisted certificate expired at %s", c.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	key, ok := c.PrivateKey.(crypto.Signer)
	if !ok {
		return fmt.Errorf("unexpected key type %T", c.PrivateKey)
	}
	s.key = key
	chain := []*x509.Certificate{c.Leaf}
	for _, der := range c.Certificate[1:] {
		x, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		chain = append(chain, x)
	}
	_, err = s.install(chain)
	if err == nil {
		s.log.Info("step-ca: using the persisted certificate", "not_after", c.Leaf.NotAfter)
	}
	return err
}

// getClient returns the CA client, built once the root is known.
func (s *StepCASource) getClient(ctx context.Context) (*ca.Client, error) {
	s.clientMu.Lock()
	defer s.clientMu.Unlock()
	if s.client != nil {
		return s.client, nil
	}
	c, err := ca.NewClient(s.cfg.URL, ca.WithTransport(s.transport(nil)), ca.WithTimeout(s.opts.Timeout))
	if err != nil {
		return nil, fmt.Errorf("pki: step-ca client: %w", err)
	}
	s.client = c
	return c, nil
}

// transport is an HTTPS transport that trusts only the step-ca root and
// presents cert (nil: none). GetClientCertificate is always set so that
// smallstep's client never adds the "default identity" of a step CLI user
// found on the host.
func (s *StepCASource) transport(cert *tls.Certificate) *http.Transport {
	empty := &tls.Certificate{}
	return &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   true,
		TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS12,
			RootCAs:    s.roots,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				if cert != nil {
					return cert, nil
				}
				return empty, nil
			},
		},
	}
}

func chainFromResponse(resp *api.SignResponse) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	for _, c := range resp.CertChainPEM {
		if c.Certificate != nil {
			chain = append(chain, c.Certificate)
		}
	}
	if len(chain) == 0 {
		if resp.ServerPEM.Certificate == nil {
			return nil, errors.New("pki: step-ca returned no certificate")
		}
		chain = append(chain, resp.ServerPEM.Certificate)
		if resp.CaPEM.Certificate != nil {
			chain = append(chain, resp.CaPEM.Certificate)
		}
	}
	return chain, nil
}
