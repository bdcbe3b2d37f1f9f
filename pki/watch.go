package pki

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

const defaultDebounce = 250 * time.Millisecond

// watcher calls reload after files change. It watches the directories, not
// the files: an atomic replace (rename over the file, a Kubernetes secret's
// symlink swap) removes the watched inode, and a file watch would go deaf.
// Any event in a watched directory schedules a reload, which is cheap when
// nothing we use changed (the bytes are compared).
type watcher struct {
	w    *fsnotify.Watcher
	done chan struct{}
	wg   sync.WaitGroup
}

func newWatcher(files []string, debounce time.Duration, log *slog.Logger, reload func()) (*watcher, error) {
	if debounce <= 0 {
		debounce = defaultDebounce
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("pki: watch: %w", err)
	}
	dirs := map[string]bool{}
	for _, f := range files {
		if f == "" {
			continue
		}
		d := filepath.Dir(f)
		if dirs[d] {
			continue
		}
		if err := fw.Add(d); err != nil {
			fw.Close()
			return nil, fmt.Errorf("pki: watch %s: %w", d, err)
		}
		dirs[d] = true
	}
	w := &watcher{w: fw, done: make(chan struct{})}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		var timer *time.Timer
		var fire <-chan time.Time
		for {
			select {
			case <-w.done:
				if timer != nil {
					timer.Stop()
				}
				return
			case ev, ok := <-fw.Events:
				if !ok {
					return
				}
				if ev.Op == fsnotify.Chmod {
					continue
				}
				if timer == nil {
					timer = time.NewTimer(debounce)
				} else {
					timer.Reset(debounce)
				}
				fire = timer.C
			case err, ok := <-fw.Errors:
				if !ok {
					return
				}
				log.Warn("certificate watcher error", "err", err)
			case <-fire:
				fire = nil
				reload()
			}
		}
	}()
	return w, nil
}

func (w *watcher) close() {
	close(w.done)
	w.w.Close()
	w.wg.Wait()
}
