package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

const auditKeygenUsage = `Usage: stage4 audit keygen NAME --out FILE

Makes a new Ed25519 key for signing the audit log's checkpoints, in the
signed-note format of golang.org/x/mod/sumdb/note (C2SP signed-note). NAME
is the log's origin, the first line of every checkpoint: a name auditors
recognise, such as stage4.example.com/audit (no spaces, no '+').

The private key (PRIVATE+KEY+NAME+...) is written to FILE with mode 0600;
FILE must not exist. Give it to stage4 serve --audit-signing-key and keep
it secret: whoever holds it can sign checkpoints of a forged log. The
verifier key (NAME+<hash>+<key>) is printed on stdout: publish it to
auditors, who check checkpoints with it (stage4 audit verify --verifier-key).

Exit status: 0 written, 2 bad arguments or FILE exists or cannot be written.
`

// newAuditKeygenFlags declares audit keygen's flags.
func newAuditKeygenFlags() (*flag.FlagSet, *string) {
	fs := newFlagSet("audit keygen", auditKeygenUsage)
	out := fs.String("out", "", "`file` to write the private key to (mode 0600, must not exist); required")
	return fs, out
}

// runAuditKeygen is the audit keygen command.
func runAuditKeygen(args []string, stdout, stderr io.Writer) error {
	fs, out := newAuditKeygenFlags()
	pos, err := parseInterspersed(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *out == "" {
		fs.Usage()
		return silentExit(exitUsage)
	}
	skey, vkey, err := note.GenerateKey(rand.Reader, pos[0])
	if err == nil {
		// GenerateKey takes any name; NewSigner checks it, as serve will.
		_, err = note.NewSigner(skey)
	}
	if err != nil {
		return usageError("audit keygen: %q is not a key name (no spaces or '+'): %w", pos[0], err)
	}
	if err := writeNewSecret(*out, skey+"\n"); err != nil {
		return usageError("audit keygen: %w", err)
	}
	fmt.Fprintln(stdout, vkey)
	return nil
}

// writeNewSecret creates path with mode 0600 and data, refusing to replace
// a file, and makes it durable.
func writeNewSecret(path, data string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// verifierKeyOf derives the verifier key from a note private key
// (PRIVATE+KEY+<name>+<hash>+<base64 of 0x01 and the Ed25519 seed>): the
// note package signs with a private key but does not say its public half.
func verifierKeyOf(skey string) (string, error) {
	parts := strings.SplitN(strings.TrimSpace(skey), "+", 5)
	if len(parts) != 5 || parts[0] != "PRIVATE" || parts[1] != "KEY" {
		return "", errors.New("not a note private key")
	}
	key, err := base64.StdEncoding.DecodeString(parts[4])
	if err != nil || len(key) != 1+ed25519.SeedSize || key[0] != 1 {
		return "", errors.New("not an Ed25519 note private key")
	}
	pub := ed25519.NewKeyFromSeed(key[1:]).Public().(ed25519.PublicKey)
	return note.NewEd25519VerifierKey(parts[2], pub)
}

// devKeyName is the origin of stage4 dev's checkpoints.
const devKeyName = "localhost/stage4-dev"

// devSigningKey returns the checkpoint signing key of stage4 dev in dir,
// made at the first run and kept, so that checkpoints of a dev log that
// survives restarts stay verifiable, and its verifier key.
func devSigningKey(dir string) (path, vkey string, err error) {
	path = filepath.Join(dir, "checkpoint-signing.key")
	skey, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		var s string
		if s, vkey, err = note.GenerateKey(rand.Reader, devKeyName); err != nil {
			return "", "", err
		}
		if err := writeNewSecret(path, s+"\n"); err != nil {
			return "", "", fmt.Errorf("write dev signing key: %w", err)
		}
		return path, vkey, nil
	}
	if err != nil {
		return "", "", fmt.Errorf("read dev signing key: %w", err)
	}
	if vkey, err = verifierKeyOf(string(skey)); err != nil {
		return "", "", fmt.Errorf("dev signing key %s: %w", path, err)
	}
	return path, vkey, nil
}

// parseInterspersed parses flags that may come before, between or after
// the positional arguments (stage4 audit keygen NAME --out FILE), which
// the flag package alone stops at, and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string, stderr io.Writer) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args, stderr, false); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
