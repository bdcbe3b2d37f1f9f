//go:build unix

package tunnel

import "syscall"

const syscallEMFILE = syscall.EMFILE
