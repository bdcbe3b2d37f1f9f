// Command conduit is the OT segmentation proxy: it terminates IT-side
// connections, inspects every Modbus/TCP and OPC UA request, asks the policy,
// audits the decision and forwards only what is allowed.
//
// Subcommands: run, validate, demo, version, policy, pki, replay, learn,
// connect. This package parses flags and builds the pieces; the logic lives in
// the packages it calls.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// Exit codes shared by every subcommand. replay uses 1 for "something would
// be denied".
const (
	exitOK    = 0
	exitFound = 1
	exitError = 2
)

// exitError carries a specific exit status out of a command.
type exitCodeError struct {
	code int
	err  error
}

func (e *exitCodeError) Error() string { return e.err.Error() }
func (e *exitCodeError) Unwrap() error { return e.err }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "conduit",
		Short:         "Conduit: the controlled path between an IT and an OT network",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newRunCmd(),
		newValidateCmd(),
		newDemoCmd(),
		newVersionCmd(),
		newPolicyCmd(),
		newPKICmd(),
		newConnectCmd(),
		newReplayCmd(),
		newLearnCmd(),
	)
	return root
}

func main() {
	err := newRootCmd().Execute()
	if err == nil {
		os.Exit(exitOK)
	}
	fmt.Fprintln(os.Stderr, "conduit:", err)
	if ce, ok := err.(*exitCodeError); ok {
		os.Exit(ce.code)
	}
	os.Exit(exitError)
}
