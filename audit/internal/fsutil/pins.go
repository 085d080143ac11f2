package fsutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/stage4/stage4/internal/atomicfile"
)

// PinFile keeps the verifier keys pinned for a log (audit.Store's
// VerifierKeys and PinVerifierKeys) in a file, one key a line, sorted,
// replaced atomically. One process uses a log directory (its lock), so
// the compare-and-swap is a mutex's.
type PinFile struct {
	path  string
	watch *Watched
	mu    sync.Mutex
	keys  []string
}

// LoadPinFile reads the pin file at path, if there is one.
func LoadPinFile(path string) (*PinFile, error) {
	p := &PinFile{path: path, watch: NewWatched(path)}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read verifier keys file: %w", err)
	}
	for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if line == "" || strings.ContainsAny(line, " \t\r") {
			return nil, fmt.Errorf("verifier keys file %s: %q is not a verifier key", path, line)
		}
		p.keys = append(p.keys, line)
	}
	slices.Sort(p.keys)
	if err := p.watch.Known(int64(len(data))); err != nil {
		return nil, err
	}
	return p, nil
}

// Exists reports whether keys are pinned.
func (p *PinFile) Exists() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.keys != nil
}

// Keys returns the pinned keys, nil when none are.
func (p *PinFile) Keys() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.keys)
}

// Check reports, as a *ChangedError, a pin file that something else
// changed.
func (p *PinFile) Check() error { return p.watch.Check() }

// Pin pins keys if old are pinned, and returns the keys pinned after.
func (p *PinFile) Pin(old, keys []string) ([]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !slices.Equal(p.keys, old) {
		return slices.Clone(p.keys), nil
	}
	if err := p.watch.Check(); err != nil {
		return nil, err
	}
	data := []byte(strings.Join(keys, "\n") + "\n")
	if err := atomicfile.Replace(p.path, data, 0o600); err != nil {
		return nil, fmt.Errorf("write verifier keys file: %w", err)
	}
	if err := p.watch.Known(int64(len(data))); err != nil {
		return nil, err
	}
	p.keys = slices.Clone(keys)
	return slices.Clone(p.keys), nil
}
