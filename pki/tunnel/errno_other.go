//go:build !unix

package tunnel

import "errors"

var syscallEMFILE = errors.New("EMFILE")
