package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Revocation reasons (RFC 5280 section 5.3.1), by the names the CLI accepts.
var revocationReasons = map[string]int{
	"unspecified":            0,
	"key-compromise":         1,
	"ca-compromise":          2,
	"affiliation-changed":    3,
	"superseded":             4,
	"cessation-of-operation": 5,
	"privilege-withdrawn":    9,
}

// RevocationReasons lists the reason names Revoke accepts.
func RevocationReasons() []string {
	var out []string
	for k := range revocationReasons {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Revoke marks the certificate with serial (hex, see ParseSerial) as revoked
// in the index and writes a new CRL. The index is written first: it is the
// source of truth, so a failure to write the CRL is repaired by `pki crl`.
func (ca *CA) Revoke(serial, reason string) (IndexEntry, error) {
	n, err := ParseSerial(serial)
	if err != nil {
		return IndexEntry{}, err
	}
	if reason == "" {
		reason = "unspecified"
	}
	if _, ok := revocationReasons[reason]; !ok {
		return IndexEntry{}, fmt.Errorf("pki: revocation reason %q: use one of %s", reason, strings.Join(RevocationReasons(), ", "))
	}
	signer, err := ca.signer()
	if err != nil {
		return IndexEntry{}, err
	}
	unlock, err := lockDir(ca.Dir)
	if err != nil {
		return IndexEntry{}, err
	}
	defer unlock()
	idx, err := ca.readIndex()
	if err != nil {
		return IndexEntry{}, err
	}
	want := SerialString(n)
	i := -1
	for j := range idx.Certificates {
		if idx.Certificates[j].Serial == want {
			i = j
			break
		}
	}
	if i < 0 {
		return IndexEntry{}, fmt.Errorf("pki: no certificate with serial %s in %s (see `conduit pki list`)", want, filepath.Join(ca.Dir, FileIndex))
	}
	e := &idx.Certificates[i]
	if e.Revoked() {
		return *e, fmt.Errorf("pki: certificate %s (%s) was already revoked at %s", want, e.Name, e.RevokedAt.Format(time.RFC3339))
	}
	at := ca.now().UTC().Truncate(time.Second)
	e.RevokedAt = &at
	e.RevocationReason = reason
	if err := ca.writeIndex(idx); err != nil {
		return IndexEntry{}, err
	}
	if _, err := ca.writeCRL(idx, ca.crlNextUpdate, signer); err != nil {
		return *e, fmt.Errorf("%w (the revocation is recorded in the index; run `conduit pki crl` to publish it)", err)
	}
	return *e, nil
}

// GenerateCRL signs a new CRL listing every revoked certificate of the index
// and writes it to crl.pem. nextUpdate <= 0 uses the CA's default.
func (ca *CA) GenerateCRL(nextUpdate time.Duration) (*x509.RevocationList, error) {
	if nextUpdate <= 0 {
		nextUpdate = ca.crlNextUpdate
	}
	signer, err := ca.signer()
	if err != nil {
		return nil, err
	}
	unlock, err := lockDir(ca.Dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	idx, err := ca.readIndex()
	if err != nil {
		return nil, err
	}
	return ca.writeCRL(idx, nextUpdate, signer)
}

// writeCRL bumps the CRL number in the index, then writes the CRL. Callers
// hold the lock.
func (ca *CA) writeCRL(idx *Index, nextUpdate time.Duration, signer crypto.Signer) (*x509.RevocationList, error) {
	now := ca.now().UTC().Truncate(time.Second)
	tmpl := &x509.RevocationList{
		Number:     big.NewInt(idx.CRLNumber + 1),
		ThisUpdate: now,
		NextUpdate: now.Add(nextUpdate),
	}
	for _, e := range idx.Certificates {
		if !e.Revoked() {
			continue
		}
		n, err := ParseSerial(e.Serial)
		if err != nil {
			return nil, fmt.Errorf("pki: index entry %q: %w", e.Name, err)
		}
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber:   n,
			RevocationTime: *e.RevokedAt,
			ReasonCode:     revocationReasons[e.RevocationReason],
		})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Intermediate, signer)
	if err != nil {
		return nil, fmt.Errorf("pki: sign CRL: %w", err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse new CRL: %w", err)
	}
	idx.CRLNumber++
	if err := ca.writeIndex(idx); err != nil {
		return nil, err
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
	if err := WriteFileAtomic(filepath.Join(ca.Dir, FileCRL), out, ModePublic); err != nil {
		return nil, err
	}
	return crl, nil
}
