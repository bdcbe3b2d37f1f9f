package aside

import (
	"runtime"
	"testing"
)

func TestRunReturnsOnAnotherGoroutine(t *testing.T) {
	caller := goid()
	got := Run(func() uint64 { return goid() })
	if got == 0 || got == caller {
		t.Fatalf("ran on goroutine %d, the caller is %d", got, caller)
	}
}

func TestRunRaisesThePanicInTheCaller(t *testing.T) {
	defer func() {
		if p := recover(); p != "boom" {
			t.Fatalf("recovered %v, want boom", p)
		}
	}()
	Run(func() int { panic("boom") })
	t.Fatal("Run returned after a panic")
}

// goid reads the current goroutine's id from its stack header.
func goid() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	// "goroutine 17 [running]:..."
	var id uint64
	for _, c := range b[len("goroutine "):] {
		if c < '0' || c > '9' {
			break
		}
		id = id*10 + uint64(c-'0')
	}
	return id
}
