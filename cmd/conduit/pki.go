package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/conduit-ot/conduit/pki"
)

// newPKICmd is `conduit pki`: the local CA (docs/pki.md).
func newPKICmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "pki",
		Short: "Manage Conduit's local certificate authority (init, issue, revoke, crl, list)",
		Long: `Manage a local two-tier CA (root + intermediate) in a directory: issue
server certificates for the proxy and client certificates for IT-side
clients (optionally with a Modbus/TCP Security role), revoke them and
publish the CRL the proxy reads. See docs/pki.md.`,
	}
	cmd.PersistentFlags().StringVar(&dir, "dir", "", "CA directory (required)")
	cmd.MarkPersistentFlagRequired("dir")
	cmd.AddCommand(newPKIInitCmd(&dir), newPKIIssueCmd(&dir), newPKIRevokeCmd(&dir), newPKICRLCmd(&dir), newPKIListCmd(&dir))
	return cmd
}

// keyFlags are the key algorithm flags shared by init and issue.
type keyFlags struct {
	kty, curve string
	size       int
}

func (k *keyFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&k.kty, "kty", "EC", "key type: EC, RSA or OKP (Ed25519)")
	cmd.Flags().StringVar(&k.curve, "curve", "", "EC curve: P-256 (default), P-384, P-521")
	cmd.Flags().IntVar(&k.size, "size", 0, fmt.Sprintf("RSA key size in bits (default %d)", pki.DefaultRSABits))
}

func (k *keyFlags) spec() pki.KeySpec { return pki.KeySpec{Type: k.kty, Curve: k.curve, Bits: k.size} }

func readPassword(file string) ([]byte, error) {
	if file == "" {
		return nil, nil
	}
	return pki.ReadPasswordFile(file)
}

func openCA(dir, passwordFile string) (*pki.CA, error) {
	pw, err := readPassword(passwordFile)
	if err != nil {
		return nil, err
	}
	return pki.OpenCA(dir, pw)
}

// parseDays accepts "30d", "12h", "90m" or a bare number of days.
func parseDays(s string) (time.Duration, error) {
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * 24 * time.Hour, nil
	}
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err == nil {
			return time.Duration(n) * 24 * time.Hour, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q: want a positive duration such as 7d, 36h or 30", s)
	}
	return d, nil
}

func days(n int) time.Duration { return time.Duration(n) * 24 * time.Hour }

func newPKIInitCmd(dir *string) *cobra.Command {
	var (
		name, passwordFile, crlNext string
		rootDays, intDays           int
		key                         keyFlags
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a root and an intermediate CA, an empty index and CRL",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pw, err := readPassword(passwordFile)
			if err != nil {
				return err
			}
			nu, err := parseDays(crlNext)
			if err != nil {
				return fmt.Errorf("--crl-next-update %w", err)
			}
			ca, err := pki.InitCA(*dir, pki.InitOptions{
				Name: name, Key: key.spec(), Password: pw,
				RootValidity: days(rootDays), IntermediateValidity: days(intDays), CRLNextUpdate: nu,
			})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Created CA %q in %s\n", ca.Name, ca.Dir)
			fmt.Fprintf(out, "  root:         %s (until %s)\n", ca.Root.Subject, ca.Root.NotAfter.UTC().Format(time.DateOnly))
			fmt.Fprintf(out, "  intermediate: %s (until %s)\n", ca.Intermediate.Subject, ca.Intermediate.NotAfter.UTC().Format(time.DateOnly))
			fmt.Fprintf(out, "  root SHA-256: %s\n", fingerprint(ca))
			if len(pw) == 0 {
				fmt.Fprintln(out, "  keys are NOT encrypted (use --password-file to encrypt them)")
			}
			fmt.Fprintf(out, "Proxy: tls.client_ca_file: %s/%s, tls.crl_file: %s/%s\n", ca.Dir, pki.FileRootCert, ca.Dir, pki.FileCRL)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", pki.DefaultCAName, "CA name (subjects: \"NAME Root CA\", \"NAME Intermediate CA\")")
	cmd.Flags().StringVar(&passwordFile, "password-file", "", "encrypt the CA keys with the passphrase in this file")
	cmd.Flags().IntVar(&rootDays, "root-days", int(pki.DefaultRootValidity/(24*time.Hour)), "root validity in days")
	cmd.Flags().IntVar(&intDays, "intermediate-days", int(pki.DefaultIntermediateValidity/(24*time.Hour)), "intermediate validity in days")
	cmd.Flags().StringVar(&crlNext, "crl-next-update", "30d", "default next-update interval of CRLs")
	key.add(cmd)
	return cmd
}

func fingerprint(ca *pki.CA) string {
	id, _ := pki.IdentityFromCertificate(ca.Root)
	return id.FingerprintSHA256
}

func newPKIIssueCmd(dir *string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "issue",
		Short: "Issue a server or client certificate",
	}
	var (
		dns, ips, uris, ous         []string
		role, out, passwordFile, cn string
		validDays                   int
		force                       bool
		key                         keyFlags
	)
	run := func(typ pki.CertType) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			ca, err := openCA(*dir, passwordFile)
			if err != nil {
				return err
			}
			req := pki.IssueRequest{
				Type: typ, Name: args[0], CommonName: cn, DNSNames: dns, Role: role,
				OrganizationalUnits: ous, Validity: days(validDays), Key: key.spec(), OutDir: out, Force: force,
			}
			for _, s := range ips {
				ip := net.ParseIP(s)
				if ip == nil {
					return fmt.Errorf("--ip %q: not an IP address", s)
				}
				req.IPAddresses = append(req.IPAddresses, ip)
			}
			for _, s := range uris {
				u, err := url.Parse(s)
				if err != nil || u.Scheme == "" {
					return fmt.Errorf("--uri %q: want an absolute URI such as spiffe://plant.example/hmi-1", s)
				}
				req.URIs = append(req.URIs, u)
			}
			is, err := ca.Issue(req)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "Issued %s certificate %q, serial %s, valid until %s\n", typ, is.Entry.Name, is.Entry.Serial, is.Cert.NotAfter.UTC().Format(time.RFC3339))
			if is.Entry.Role != "" {
				fmt.Fprintf(w, "  role (Modbus/TCP Security, %s): %s\n", pki.OIDModbusRole, is.Entry.Role)
			}
			fmt.Fprintf(w, "  certificate: %s\n  chain:       %s\n  key:         %s (0600)\n", is.CertFile, is.ChainFile, is.KeyFile)
			return nil
		}
	}
	common := func(c *cobra.Command) {
		c.Flags().StringVar(&cn, "cn", "", "common name (default NAME)")
		c.Flags().StringSliceVar(&ous, "ou", nil, "organizational unit (repeatable)")
		c.Flags().IntVar(&validDays, "days", int(pki.DefaultLeafValidity/(24*time.Hour)), "validity in days")
		c.Flags().StringVar(&out, "out", "", "output directory (default DIR/certs)")
		c.Flags().BoolVar(&force, "force", false, "replace existing files of the same name")
		c.Flags().StringVar(&passwordFile, "password-file", "", "passphrase of the CA keys")
		key.add(c)
	}
	server := &cobra.Command{
		Use:   "server NAME --dns NAME... --ip ADDR...",
		Short: "Issue a server certificate (ExtKeyUsage serverAuth) for the proxy",
		Args:  cobra.ExactArgs(1),
		RunE:  run(pki.CertServer),
	}
	server.Flags().StringSliceVar(&dns, "dns", nil, "DNS name clients dial (repeatable, comma-separated)")
	server.Flags().StringSliceVar(&ips, "ip", nil, "IP address clients dial (repeatable)")
	common(server)
	client := &cobra.Command{
		Use:   "client NAME [--role ROLE] [--uri spiffe://...] [--ou OU]",
		Short: "Issue a client certificate (ExtKeyUsage clientAuth), optionally with a Modbus role",
		Args:  cobra.ExactArgs(1),
		RunE:  run(pki.CertClient),
	}
	client.Flags().StringVar(&role, "role", "", "Modbus/TCP Security role (extension 1.3.6.1.4.1.50316.802.1)")
	client.Flags().StringSliceVar(&uris, "uri", nil, "URI SAN, e.g. spiffe://plant.example/hmi-1 (repeatable)")
	client.Flags().StringSliceVar(&dns, "dns", nil, "DNS name SAN (repeatable)")
	common(client)
	cmd.AddCommand(server, client)
	return cmd
}

func newPKIRevokeCmd(dir *string) *cobra.Command {
	var reason, passwordFile string
	cmd := &cobra.Command{
		Use:   "revoke SERIAL",
		Short: "Revoke a certificate by serial (see `pki list`) and publish a new CRL",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ca, err := openCA(*dir, passwordFile)
			if err != nil {
				return err
			}
			e, err := ca.Revoke(args[0], reason)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Revoked %s (%s, %s): %s\nCRL written to %s/%s\n", e.Serial, e.Name, e.Subject, e.RevocationReason, ca.Dir, pki.FileCRL)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "unspecified", "one of: "+strings.Join(pki.RevocationReasons(), ", "))
	cmd.Flags().StringVar(&passwordFile, "password-file", "", "passphrase of the CA keys")
	return cmd
}

func newPKICRLCmd(dir *string) *cobra.Command {
	var next, passwordFile string
	cmd := &cobra.Command{
		Use:   "crl",
		Short: "Regenerate the CRL (run it before the current one's next update)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := openCA(*dir, passwordFile)
			if err != nil {
				return err
			}
			var nu time.Duration
			if next != "" {
				if nu, err = parseDays(next); err != nil {
					return fmt.Errorf("--next-update %w", err)
				}
			}
			crl, err := ca.GenerateCRL(nu)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "CRL #%s written to %s/%s: %d revoked, next update %s\n",
				crl.Number, ca.Dir, pki.FileCRL, len(crl.RevokedCertificateEntries), crl.NextUpdate.UTC().Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().StringVar(&next, "next-update", "", "next-update interval, e.g. 7d or 36h (default: the CA's, set at init)")
	cmd.Flags().StringVar(&passwordFile, "password-file", "", "passphrase of the CA keys")
	return cmd
}

func newPKIListCmd(dir *string) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List issued certificates (serial, subject, type, role, not after, revoked)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := pki.OpenCA(*dir, nil)
			if err != nil {
				return err
			}
			list, err := ca.List()
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if list == nil {
					list = []pki.IndexEntry{}
				}
				return enc.Encode(list)
			}
			return printList(cmd.OutOrStdout(), list)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the index entries as JSON")
	return cmd
}

func printList(w io.Writer, list []pki.IndexEntry) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERIAL\tSUBJECT\tTYPE\tROLE\tNOT AFTER\tREVOKED")
	for _, e := range list {
		role, revoked := e.Role, "no"
		if role == "" {
			role = "-"
		}
		if e.Revoked() {
			revoked = e.RevokedAt.Format(time.DateOnly) + " " + e.RevocationReason
		} else if time.Now().After(e.NotAfter) {
			revoked = "no (expired)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Serial, e.Subject, e.Type, role, e.NotAfter.Format(time.RFC3339), revoked)
	}
	return tw.Flush()
}
