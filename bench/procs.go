package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a target's process (device, HAProxy, Conduit).
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	addr string // where clients connect
}

// start runs argv with its output in logFile and waits until addr accepts
// a TCP connection.
func start(name, logFile, addr string, env []string, argv ...string) (*proc, error) {
	f, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	// Own process group: a harness that dies does not leave targets behind
	// in the caller's group, and stop() signals only what it started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	f.Close()
	p := &proc{name: name, cmd: cmd, log: logFile, addr: addr}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(90 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			go func() { <-exited }()
			return p, nil
		}
		select {
		case err := <-exited:
			return nil, fmt.Errorf("%s exited before listening (%v); log %s:\n%s", name, err, logFile, tail(logFile, 20))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("%s: %s does not accept connections; log %s:\n%s", name, addr, logFile, tail(logFile, 20))
		}
	}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) signal(s syscall.Signal) error { return p.cmd.Process.Signal(s) }

// stop asks the process to stop (SIGTERM) and kills it after 10 s.
func (p *proc) stop() {
	if p == nil || p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	for range 100 {
		if err := p.cmd.Process.Signal(syscall.Signal(0)); err != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.cmd.Process.Kill()
}

// cpu returns the process's user+system CPU time so far (all threads).
func (p *proc) cpu() time.Duration { return procCPU(p.pid()) }

func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may contain spaces).
	s := string(b)
	s = s[strings.LastIndexByte(s, ')')+2:]
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTicks
}

// clockTicks is USER_HZ, 100 on every Linux this runs on.
const clockTicks = 100

// rss returns the resident set size in bytes.
func (p *proc) rss() int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.pid()))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func tail(file string, n int) string {
	b, _ := os.ReadFile(file)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freePort returns a loopback address nobody listens on right now.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// loadavg returns the first three fields of /proc/loadavg.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// machineCPU returns busy and total jiffies of all CPUs (/proc/stat).
func machineCPU() (busy, total int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)[1:]
	for i, s := range f {
		v, _ := strconv.ParseInt(s, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

// run runs a command to completion, returning its combined output in the
// error.
func runCmd(ctx context.Context, argv ...string) error {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out)
	}
	return nil
}

// ensureHAProxy installs HAProxy from Debian's packages when it is missing.
func ensureHAProxy(ctx context.Context, logf func(string, ...any)) (string, error) {
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p, nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", errors.New("haproxy is not installed and there is no apt-get: install HAProxy 2.6 and re-run")
	}
	logf("installing haproxy (apt-get)")
	env := []string{"DEBIAN_FRONTEND=noninteractive"}
	for _, argv := range [][]string{{"apt-get", "update", "-q"}, {"apt-get", "install", "-y", "-q", "--no-install-recommends", "haproxy"}} {
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out)
		}
	}
	return exec.LookPath("haproxy")
}

// pkiFiles are the certificates made with `conduit pki` for the mTLS
// targets.
type pkiFiles struct {
	dir                 string
	rootCA              string
	serverChain, srvKey string
	clientChain, cliKey string
	haproxyPEM          string // server chain + key, as HAProxy's crt wants it
}

// makePKI creates a CA, a server certificate for 127.0.0.1 and a client
// certificate with `conduit pki`, once per output directory.
func makePKI(ctx context.Context, conduit, dir string) (*pkiFiles, error) {
	p := &pkiFiles{
		dir:         dir,
		rootCA:      filepath.Join(dir, "root_ca.crt"),
		serverChain: filepath.Join(dir, "certs", "conduit.chain.crt"),
		srvKey:      filepath.Join(dir, "certs", "conduit.key"),
		clientChain: filepath.Join(dir, "certs", "bench-client.chain.crt"),
		cliKey:      filepath.Join(dir, "certs", "bench-client.key"),
		haproxyPEM:  filepath.Join(dir, "haproxy.pem"),
	}
	if _, err := os.Stat(p.rootCA); err != nil {
		if err := runCmd(ctx, conduit, "pki", "init", "--dir", dir, "--name", "Conduit bench"); err != nil {
			return nil, err
		}
	}
	if err := p.issueServer(ctx, conduit); err != nil {
		return nil, err
	}
	if _, err := os.Stat(p.clientChain); err != nil {
		if err := runCmd(ctx, conduit, "pki", "issue", "client", "bench-client", "--dir", dir); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// issueServer (re)issues the server certificate.
func (p *pkiFiles) issueServer(ctx context.Context, conduit string) error {
	if err := p.issueServerTo(ctx, conduit, ""); err != nil {
		return err
	}
	return p.writeHAProxyPEM()
}

// issueServerTo issues a server certificate into out (DIR/certs if
// empty), with the files named as Conduit's configuration names them.
func (p *pkiFiles) issueServerTo(ctx context.Context, conduit, out string) error {
	argv := []string{conduit, "pki", "issue", "server", "conduit", "--dir", p.dir,
		"--ip", "127.0.0.1", "--dns", "localhost", "--force"}
	if out != "" {
		argv = append(argv, "--out", out)
	}
	return runCmd(ctx, argv...)
}

// stageServer issues the server certificate of the i-th certificate
// reload of the reload scenario into a side directory, before the
// measured run: issuing (a process that generates a key) is not what the
// scenario measures.
func (p *pkiFiles) stageServer(ctx context.Context, conduit string, i int) (string, error) {
	out := filepath.Join(p.dir, fmt.Sprintf("next-%d", i))
	if err := os.RemoveAll(out); err != nil {
		return "", err
	}
	return out, p.issueServerTo(ctx, conduit, out)
}

// installServer moves a staged server certificate and key into place, on
// the same file system (rename): all that happens in the measured run
// before the SIGHUP.
func (p *pkiFiles) installServer(staged string) error {
	for _, f := range []string{p.serverChain, p.srvKey} {
		if err := os.Rename(filepath.Join(staged, filepath.Base(f)), f); err != nil {
			return err
		}
	}
	return p.writeHAProxyPEM()
}

// writeHAProxyPEM writes the server chain and key as HAProxy's crt wants
// them.
func (p *pkiFiles) writeHAProxyPEM() error {
	chain, err := os.ReadFile(p.serverChain)
	if err != nil {
		return err
	}
	key, err := os.ReadFile(p.srvKey)
	if err != nil {
		return err
	}
	return os.WriteFile(p.haproxyPEM, append(chain, key...), 0o600)
}

// clientTLS is the load generator's TLS configuration: TLS 1.3, the
// client certificate, the bench CA as the only root.
func (p *pkiFiles) clientTLS() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(p.clientChain, p.cliKey)
	if err != nil {
		return nil, err
	}
	rootPEM, err := os.ReadFile(p.rootCA)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		return nil, fmt.Errorf("%s: no certificate", p.rootCA)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
		ServerName:   "127.0.0.1",
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// cpuStall returns the machine's cumulative "some" CPU pressure stall time
// (/proc/pressure/cpu): time in which a runnable task waited for a CPU.
func cpuStall() time.Duration {
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	_, v, ok := strings.Cut(line, "total=")
	if !ok {
		return 0
	}
	us, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	return time.Duration(us) * time.Microsecond
}
