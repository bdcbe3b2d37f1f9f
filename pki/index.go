package pki

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Index is index.json: every certificate the local CA issued, and which of
// them are revoked. It is the source of truth the CRL is generated from.
type Index struct {
	Version      int          `json:"version"`
	CRLNumber    int64        `json:"crl_number"` // of the last CRL written
	Certificates []IndexEntry `json:"certificates"`
}

// IndexEntry is one issued certificate.
type IndexEntry struct {
	Serial      string    `json:"serial"` // upper-case hex, as Identity.Serial
	Name        string    `json:"name"`
	Type        CertType  `json:"type"`
	Subject     string    `json:"subject"`
	DNSNames    []string  `json:"dns_names,omitempty"`
	IPAddresses []string  `json:"ip_addresses,omitempty"`
	URIs        []string  `json:"uris,omitempty"`
	Role        string    `json:"role,omitempty"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	SHA256      string    `json:"sha256"`
	File        string    `json:"file"` // the chain file written by Issue

	RevokedAt        *time.Time `json:"revoked_at,omitempty"`
	RevocationReason string     `json:"revocation_reason,omitempty"`
}

// Revoked reports whether the entry is revoked.
func (e IndexEntry) Revoked() bool { return e.RevokedAt != nil }

func newIndexEntry(name string, typ CertType, c *x509.Certificate, file string) IndexEntry {
	sum := sha256.Sum256(c.Raw)
	e := IndexEntry{
		Serial:    SerialString(c.SerialNumber),
		Name:      name,
		Type:      typ,
		Subject:   c.Subject.String(),
		DNSNames:  append([]string(nil), c.DNSNames...),
		NotBefore: c.NotBefore.UTC(),
		NotAfter:  c.NotAfter.UTC(),
		SHA256:    hex.EncodeToString(sum[:]),
		File:      file,
	}
	for _, ip := range c.IPAddresses {
		e.IPAddresses = append(e.IPAddresses, ip.String())
	}
	for _, u := range c.URIs {
		e.URIs = append(e.URIs, u.String())
	}
	if roles, err := RolesFromCertificate(c); err == nil {
		e.Role = strings.Join(roles, ",")
	}
	return e
}

// SerialString formats a serial number the way Identity.Serial, the index
// and `pki list` do: upper-case hex without separators.
func SerialString(n *big.Int) string { return strings.ToUpper(n.Text(16)) }

// ParseSerial accepts a serial in hex, with or without ':' separators, a
// "0x" prefix or leading zeros, in either case.
func ParseSerial(s string) (*big.Int, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimPrefix(strings.TrimPrefix(t, "0x"), "0X")
	t = strings.ReplaceAll(t, ":", "")
	n, ok := new(big.Int).SetString(t, 16)
	if !ok || t == "" || n.Sign() < 0 {
		return nil, fmt.Errorf("pki: serial %q: want hexadecimal (as shown by `conduit pki list`)", s)
	}
	return n, nil
}

// List returns the index entries, oldest first.
func (ca *CA) List() ([]IndexEntry, error) {
	idx, err := ca.readIndex()
	if err != nil {
		return nil, err
	}
	out := append([]IndexEntry(nil), idx.Certificates...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].NotBefore.Before(out[j].NotBefore) })
	return out, nil
}

func (ca *CA) readIndex() (*Index, error) {
	path := filepath.Join(ca.Dir, FileIndex)
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("pki: %s is missing: the CA directory is incomplete", path)
		}
		return nil, fmt.Errorf("pki: %w", err)
	}
	var idx Index
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&idx); err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	if idx.Version != 1 {
		return nil, fmt.Errorf("pki: %s: unsupported version %d", path, idx.Version)
	}
	return &idx, nil
}

// writeIndex replaces index.json atomically. Callers hold the directory lock.
func (ca *CA) writeIndex(idx *Index) error {
	b, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return WriteFileAtomic(filepath.Join(ca.Dir, FileIndex), append(b, '\n'), ModePublic)
}
