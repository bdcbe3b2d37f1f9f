package pki

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// Reason is the stable code of a refused TLS handshake. It doubles as the
// audit event.reason and a metric label. Reason implements error so that
// errors.Is(err, pki.ReasonRevoked) works on a handshake error.
type Reason string

// Handshake refusal reasons.
const (
	ReasonNoClientCert     Reason = "no_client_cert"     // the client sent no certificate
	ReasonUnknownCA        Reason = "unknown_ca"         // no chain to client_ca_file
	ReasonExpired          Reason = "expired"            // the leaf (or an issuer) is past NotAfter
	ReasonNotYetValid      Reason = "not_yet_valid"      // the leaf (or an issuer) is before NotBefore
	ReasonRevoked          Reason = "revoked"            // listed in the issuer's CRL
	ReasonBadKeyUsage      Reason = "bad_key_usage"      // no ExtKeyUsage clientAuth
	ReasonBadRoleExtension Reason = "bad_role_extension" // malformed Modbus/TCP Security role
	ReasonCRLExpired       Reason = "crl_expired"        // the issuer's CRL is past its NextUpdate
	ReasonCRLMissing       Reason = "crl_missing"        // crl_file has no CRL of the leaf's issuer
	ReasonBadCertificate   Reason = "bad_certificate"    // unparsable or otherwise unusable
	ReasonProtocolVersion  Reason = "protocol_version"   // TLS version below min_version
	ReasonHandshakeTimeout Reason = "handshake_timeout"  // deadline passed during the handshake
	ReasonHandshakeFailed  Reason = "handshake_failed"   // anything else (no common cipher, reset...)
)

// Error makes a Reason usable as an errors.Is target.
func (r Reason) Error() string { return string(r) }

// HandshakeError is returned by the server's tls.Conn.Handshake (and passed
// to ServerOptions.OnReject) when a client certificate is refused.
type HandshakeError struct {
	Reason  Reason
	Subject string // RFC 2253 subject of the presented leaf ("" if none)
	Issuer  string
	Serial  string // upper-case hex, as Identity.Serial
	Err     error  // detail, for the log
}

func (e *HandshakeError) Error() string {
	var b strings.Builder
	b.WriteString("pki: client certificate refused: ")
	b.WriteString(string(e.Reason))
	if e.Subject != "" {
		fmt.Fprintf(&b, " (subject %q, serial %s)", e.Subject, e.Serial)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the detail error.
func (e *HandshakeError) Unwrap() error { return e.Err }

// Is reports whether target is this error's Reason.
func (e *HandshakeError) Is(target error) bool {
	r, ok := target.(Reason)
	return ok && r == e.Reason
}

// ReasonOf classifies any error returned by a server-side TLS handshake made
// with ServerTLS.Config: the HandshakeError reason when the certificate was
// refused, else what crypto/tls said (version, timeout, other).
func ReasonOf(err error) Reason {
	if err == nil {
		return ""
	}
	var he *HandshakeError
	if errors.As(err, &he) {
		return he.Reason
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return ReasonHandshakeTimeout
	}
	// crypto/tls has no typed errors for these; the texts are stable
	// across Go releases (handshake_server.go, handshake_server_tls13.go).
	msg := err.Error()
	switch {
	case strings.Contains(msg, "unsupported versions"), strings.Contains(msg, "protocol version not supported"):
		return ReasonProtocolVersion
	case strings.Contains(msg, "failed to parse client certificate"):
		return ReasonBadCertificate
	case strings.Contains(msg, "didn't provide a certificate"):
		return ReasonNoClientCert
	}
	return ReasonHandshakeFailed
}

// ParseTLSVersion maps the configuration's min_version to a crypto/tls
// constant: "1.3" (also the default for "") or "1.2". Nothing older.
func ParseTLSVersion(v string) (uint16, error) {
	switch v {
	case "", "1.3":
		return tls.VersionTLS13, nil
	case "1.2":
		return tls.VersionTLS12, nil
	}
	return 0, fmt.Errorf("pki: min_version %q: use \"1.3\" or \"1.2\" (older versions are refused)", v)
}

// crlInfo is one parsed CRL with its revoked serials indexed.
type crlInfo struct {
	crl     *x509.RevocationList
	revoked map[string]time.Time // serial (SerialString) -> revocation time
}

// ParseCRLs decodes every CRL in data: PEM ("X509 CRL" blocks, several
// allowed, one per issuing CA) or a single DER CRL.
func ParseCRLs(data []byte) ([]*x509.RevocationList, error) {
	var out []*x509.RevocationList
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "X509 CRL" {
			return nil, fmt.Errorf("pki: unexpected PEM block %q in a CRL file", block.Type)
		}
		crl, err := x509.ParseRevocationList(block.Bytes)
		if err == nil {
			err = checkCRLExtensions(crl)
		}
		if err != nil {
			return nil, fmt.Errorf("pki: parse CRL %d: %w", len(out)+1, err)
		}
		out = append(out, crl)
	}
	if len(out) == 0 {
		if len(bytes.TrimSpace(data)) == 0 {
			return nil, errors.New("pki: the CRL file is empty")
		}
		crl, err := x509.ParseRevocationList(data)
		if err != nil {
			return nil, fmt.Errorf("pki: no PEM CRL found, and not a DER CRL: %w", err)
		}
		if err := checkCRLExtensions(crl); err != nil {
			return nil, fmt.Errorf("pki: parse CRL 1: %w", err)
		}
		out = append(out, crl)
	}
	return out, nil
}

// CRL extensions this package understands (RFC 5280 sections 5.2, 5.3).
var (
	oidAuthorityKeyID = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidCRLNumber      = asn1.ObjectIdentifier{2, 5, 29, 20}
	oidReasonCode     = asn1.ObjectIdentifier{2, 5, 29, 21}
	oidInvalidityDate = asn1.ObjectIdentifier{2, 5, 29, 24}
)

// checkCRLExtensions refuses a CRL with a critical extension, or an entry
// with a critical entry extension, that the revocation check does not
// implement (RFC 5280 5.2: such a CRL must not be used). crypto/x509
// parses them without a word, and the check would then take a delta CRL
// (deltaCRLIndicator), a CRL of only some certificates or reasons
// (issuingDistributionPoint) or an indirect CRL's entries
// (certificateIssuer) for the issuer's complete list: certificates
// revoked in the base CRL, in another partition or by another issuer
// would pass.
func checkCRLExtensions(crl *x509.RevocationList) error {
	for _, e := range crl.Extensions {
		if e.Critical && !e.Id.Equal(oidAuthorityKeyID) && !e.Id.Equal(oidCRLNumber) {
			return fmt.Errorf("unsupported critical CRL extension %s (delta, partitioned and indirect CRLs are not supported: give the issuer's complete CRL)", e.Id)
		}
	}
	for _, entry := range crl.RevokedCertificateEntries {
		for _, e := range entry.Extensions {
			if e.Critical && !e.Id.Equal(oidReasonCode) && !e.Id.Equal(oidInvalidityDate) {
				return fmt.Errorf("unsupported critical extension %s in the entry of serial %s", e.Id, SerialString(entry.SerialNumber))
			}
		}
	}
	return nil
}

// clientVerifier checks client certificates against one version of the
// client CA bundle and CRLs. It is immutable; a reload builds a new one.
type clientVerifier struct {
	roots    *x509.CertPool
	cas      []*x509.Certificate
	crls     map[string][]*crlInfo // by raw issuer name
	checkCRL bool
	now      func() time.Time

	// sigOK caches CRL signature checks against a chain's issuer: the
	// issuer in a verified chain is a real CA, so the cache is bounded by
	// the number of CAs and CRLs.
	sigOK sync.Map // sigKey -> error (nil when the signature is good)
}

type sigKey struct {
	crl    *crlInfo
	issuer [32]byte
}

// newClientVerifier builds a verifier. crls may be nil (no crl_file). A CRL
// whose issuer is in the bundle must be signed by it; one whose issuer is
// not (an intermediate that clients send in their chain) is checked against
// that intermediate at handshake time.
func newClientVerifier(cas []*x509.Certificate, crls []*x509.RevocationList, checkCRL bool, now func() time.Time) (*clientVerifier, error) {
	if len(cas) == 0 {
		return nil, errors.New("pki: the client CA bundle holds no certificate")
	}
	v := &clientVerifier{roots: x509.NewCertPool(), cas: cas, crls: map[string][]*crlInfo{}, checkCRL: checkCRL, now: now}
	for _, c := range cas {
		if !c.IsCA {
			return nil, fmt.Errorf("pki: client CA bundle: %q is not a CA certificate", c.Subject)
		}
		v.roots.AddCert(c)
	}
	for i, crl := range crls {
		var matched, verified bool
		for _, c := range cas {
			if bytes.Equal(c.RawSubject, crl.RawIssuer) {
				matched = true
				if crl.CheckSignatureFrom(c) == nil {
					verified = true
					break
				}
			}
		}
		if matched && !verified {
			return nil, fmt.Errorf("pki: CRL %d (issuer %q): signature does not verify with the CA of that name in the client CA bundle", i+1, crl.Issuer)
		}
		info := &crlInfo{crl: crl, revoked: make(map[string]time.Time, len(crl.RevokedCertificateEntries))}
		for _, e := range crl.RevokedCertificateEntries {
			info.revoked[SerialString(e.SerialNumber)] = e.RevocationTime
		}
		v.crls[string(crl.RawIssuer)] = append(v.crls[string(crl.RawIssuer)], info)
	}
	return v, nil
}

// verify checks a client's presented chain now and returns nil or a
// *HandshakeError. certs[0] is the leaf, the rest are what the client sent
// as intermediates (untrusted).
func (v *clientVerifier) verify(certs []*x509.Certificate) *HandshakeError {
	return v.verifyAt(certs, v.now())
}

// verifyAt is verify with validity periods and CRL freshness judged at now.
func (v *clientVerifier) verifyAt(certs []*x509.Certificate, now time.Time) *HandshakeError {
	if len(certs) == 0 {
		return &HandshakeError{Reason: ReasonNoClientCert, Err: errors.New("a client certificate is required")}
	}
	leaf := certs[0]
	fail := func(r Reason, err error) *HandshakeError {
		return &HandshakeError{Reason: r, Subject: leaf.Subject.String(), Issuer: leaf.Issuer.String(), Serial: SerialString(leaf.SerialNumber), Err: err}
	}
	// crypto/x509 refuses unknown critical extensions. The Modbus role is
	// one we do handle, so a client whose CA marked it critical must not be
	// refused for it.
	check := leaf
	if len(leaf.UnhandledCriticalExtensions) > 0 {
		cp := *leaf
		cp.UnhandledCriticalExtensions = nil
		for _, oid := range leaf.UnhandledCriticalExtensions {
			if !oid.Equal(OIDModbusRole) {
				cp.UnhandledCriticalExtensions = append(cp.UnhandledCriticalExtensions, oid)
			}
		}
		check = &cp
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	opts := x509.VerifyOptions{
		Roots:         v.roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	chains, err := check.Verify(opts)
	if err != nil {
		return fail(v.classify(check, certs[1:], opts, err), err)
	}
	// crypto/x509 treats a leaf without ExtKeyUsage as valid for any use.
	// We do not: a client certificate must say it is one.
	if !hasEKU(leaf, x509.ExtKeyUsageClientAuth) {
		return fail(ReasonBadKeyUsage, errors.New("the certificate has no ExtKeyUsage clientAuth"))
	}
	if _, err := RolesFromCertificate(leaf); err != nil {
		return fail(ReasonBadRoleExtension, err)
	}
	if v.checkCRL {
		for _, chain := range chains {
			if r, err := v.checkRevocation(chain, now); err != nil {
				return fail(r, err)
			}
		}
	}
	return nil
}

// classify turns a crypto/x509 verification error into a Reason. A time
// error is reported as expired/not_yet_valid only when the chain would
// otherwise verify: an expired certificate from a foreign CA is unknown_ca.
func (v *clientVerifier) classify(leaf *x509.Certificate, presented []*x509.Certificate, opts x509.VerifyOptions, err error) Reason {
	var inv x509.CertificateInvalidError
	var ua x509.UnknownAuthorityError
	switch {
	case errors.As(err, &ua):
		return ReasonUnknownCA
	case errors.As(err, &inv):
		switch inv.Reason {
		case x509.Expired:
			// crypto/x509 checks validity periods before signatures, so
			// find out whether the chain is ours at all.
			budget := maxSignatureChecks
			if !v.signedByBundle(leaf, presented, &budget) {
				return ReasonUnknownCA
			}
			return timeReason(inv.Cert, opts.CurrentTime)
		case x509.IncompatibleUsage, x509.CANotAuthorizedForExtKeyUsage:
			return ReasonBadKeyUsage
		}
		return ReasonBadCertificate
	}
	// UnhandledCriticalExtension, constraint violations, unparsable keys.
	return ReasonBadCertificate
}

// signedByBundle reports whether c chains to a bundle certificate by
// signatures alone, through the client's intermediates, ignoring validity
// periods and key usages. The client chooses the intermediates, so the
// search is bounded by a budget of signature checks (crypto/x509 bounds its
// own the same way).
func (v *clientVerifier) signedByBundle(c *x509.Certificate, presented []*x509.Certificate, budget *int) bool {
	for _, ca := range v.cas {
		if bytes.Equal(c.RawIssuer, ca.RawSubject) {
			if *budget--; *budget < 0 {
				return false
			}
			if c.CheckSignatureFrom(ca) == nil {
				return true
			}
		}
	}
	for _, ca := range presented {
		if bytes.Equal(c.RawIssuer, ca.RawSubject) && !ca.Equal(c) {
			if *budget--; *budget < 0 {
				return false
			}
			if c.CheckSignatureFrom(ca) == nil && v.signedByBundle(ca, presented, budget) {
				return true
			}
		}
	}
	return false
}

// maxSignatureChecks bounds signedByBundle.
const maxSignatureChecks = 16

func timeReason(c *x509.Certificate, now time.Time) Reason {
	if c != nil && now.Before(c.NotBefore) {
		return ReasonNotYetValid
	}
	return ReasonExpired
}

func hasEKU(c *x509.Certificate, want x509.ExtKeyUsage) bool {
	for _, u := range c.ExtKeyUsage {
		if u == want || u == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

// checkRevocation checks every certificate of a verified chain (but the
// anchor) against the newest CRL of its issuer whose signature that issuer
// made. The leaf's issuer must have one: with crl_file set, "no CRL" is not
// "not revoked". An intermediate whose issuer (a root) publishes no CRL is
// not checked: replace the bundle to distrust an intermediate.
func (v *clientVerifier) checkRevocation(chain []*x509.Certificate, now time.Time) (Reason, error) {
	for i := 0; i+1 < len(chain); i++ {
		cert, issuer := chain[i], chain[i+1]
		crl := v.newestCRL(issuer)
		if crl == nil {
			if i == 0 {
				return ReasonCRLMissing, fmt.Errorf("crl_file has no CRL signed by the issuer %q", issuer.Subject)
			}
			continue
		}
		if !crl.crl.NextUpdate.IsZero() && now.After(crl.crl.NextUpdate) {
			return ReasonCRLExpired, fmt.Errorf("the CRL of %q expired at %s (regenerate it: conduit pki crl)", issuer.Subject, crl.crl.NextUpdate.UTC().Format(time.RFC3339))
		}
		if at, ok := crl.revoked[SerialString(cert.SerialNumber)]; ok {
			what := "certificate"
			if i > 0 {
				what = fmt.Sprintf("issuing CA %q", cert.Subject)
			}
			return ReasonRevoked, fmt.Errorf("%s revoked at %s", what, at.UTC().Format(time.RFC3339))
		}
	}
	return "", nil
}

func (v *clientVerifier) newestCRL(issuer *x509.Certificate) *crlInfo {
	var best *crlInfo
	fp := sha256.Sum256(issuer.Raw)
	for _, c := range v.crls[string(issuer.RawSubject)] {
		k := sigKey{crl: c, issuer: fp}
		res, ok := v.sigOK.Load(k)
		if !ok {
			res = errOrNil{c.crl.CheckSignatureFrom(issuer)}
			v.sigOK.Store(k, res)
		}
		if res.(errOrNil).err != nil {
			continue
		}
		if best == nil || c.crl.ThisUpdate.After(best.crl.ThisUpdate) {
			best = c
		}
	}
	return best
}

type errOrNil struct{ err error }
