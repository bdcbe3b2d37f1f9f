package policy

import (
	"cmp"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultWatchDebounce is the quiet period before a watch reload.
const DefaultWatchDebounce = 250 * time.Millisecond

// watchMaxDelay bounds, in debounce periods, how long changes that keep
// coming postpone a watch reload.
const watchMaxDelay = 20

// watchReloadTimeout bounds one watch-triggered reload (compile and tests).
const watchReloadTimeout = 2 * time.Minute

// startWatch watches the policy directory (recursively) or the directory of
// the bundle, and reloads when the files have been quiet for the debounce
// period. Directories are watched rather than files because editors and
// deployment tools replace files by renaming (a watch on the old inode would
// go silent). A change that leaves the content as it was is detected by the
// content hash and costs no compile.
func (e *Engine) startWatch() error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("policy: watch %s: %w", e.opts.Path, err)
	}
	bundleName, linkName := "", ""
	if e.opts.Source.isBundle() {
		bundleName = filepath.Base(e.opts.Path)
		err = w.Add(filepath.Dir(e.opts.Path))
	} else {
		// A directory given as a symlink (current -> releases/v42, a
		// common atomic deployment): the tree watched is the target's
		// (filepath.WalkDir does not follow a symlink, not even the
		// root, so nothing at all was watched), and the link's parent
		// is watched for the link being swapped.
		if fi, lerr := os.Lstat(e.opts.Path); lerr == nil && fi.Mode()&fs.ModeSymlink != 0 {
			linkName = filepath.Base(e.opts.Path)
			err = w.Add(filepath.Dir(e.opts.Path))
		}
		if err == nil {
			err = addTree(w, resolve(e.opts.Path))
		}
	}
	if err != nil {
		w.Close()
		return fmt.Errorf("policy: watch %s: %w", e.opts.Path, err)
	}
	debounce := cmp.Or(e.opts.WatchDebounce, DefaultWatchDebounce)
	e.watchDone = make(chan struct{})
	go e.watchLoop(w, bundleName, linkName, debounce)
	return nil
}

// resolve returns path with symlinks resolved, or path if that fails.
func resolve(path string) string {
	if r, err := filepath.EvalSymlinks(path); err == nil {
		return r
	}
	return path
}

func (e *Engine) watchLoop(w *fsnotify.Watcher, bundleName, linkName string, debounce time.Duration) {
	defer close(e.watchDone)
	defer w.Close()
	timer := time.NewTimer(debounce)
	timer.Stop()
	// first is when the oldest change not yet reloaded came (zero: none).
	// Changes postpone the reload by debounce each, but not past
	// watchMaxDelay debounce periods after first: files that never stop
	// changing (a log in the directory) must not hold a reload back.
	var first time.Time
	for {
		select {
		case <-e.ctx.Done():
			timer.Stop()
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if bundleName != "" {
				if filepath.Base(ev.Name) != bundleName {
					continue
				}
			} else if linkName != "" && filepath.Dir(ev.Name) == filepath.Dir(e.opts.Path) {
				// The link's parent: only the link itself counts. A new
				// target is watched too (the old one's watches stay:
				// a change there reloads to an unchanged hash).
				if filepath.Base(ev.Name) != linkName {
					continue
				}
				_ = addTree(w, resolve(e.opts.Path))
			} else if ev.Has(fsnotify.Create) {
				// A new sub-directory holds policy files too.
				if info, err := os.Stat(ev.Name); err == nil && info.IsDir() && !hidden(ev.Name) {
					_ = addTree(w, ev.Name)
				}
			}
			now := time.Now()
			if first.IsZero() {
				first = now
			}
			if now.Sub(first) < watchMaxDelay*debounce {
				timer.Reset(debounce)
			} // else the timer set by an earlier change fires soon
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			if e.opts.OnReload != nil {
				e.opts.OnReload(ReloadEvent{
					Time:    time.Now(),
					Trigger: TriggerWatch,
					Source:  e.opts.Source.String(),
					Running: e.Revision(),
					Err:     fmt.Errorf("%w: watching files: %v (reload with SIGHUP)", ErrLoad, err),
				})
			}
		case <-timer.C:
			first = time.Time{}
			ctx, cancel := context.WithTimeout(e.ctx, watchReloadTimeout)
			_ = e.reload(ctx, TriggerWatch) // reported through OnReload
			cancel()
		}
	}
}

func hidden(path string) bool { return strings.HasPrefix(filepath.Base(path), ".") }

// addTree watches dir and its sub-directories, skipping hidden ones (.git).
func addTree(w *fsnotify.Watcher, dir string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if path != dir && hidden(path) {
			return filepath.SkipDir
		}
		return w.Add(path)
	})
}
