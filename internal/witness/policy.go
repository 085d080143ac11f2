package witness

import (
	"bufio"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// ErrInvalidPolicy: a witness policy that does not parse or does not hold
// together (an undefined name, a threshold out of range, no quorum).
var ErrInvalidPolicy = errors.New("invalid witness policy")

// maxPolicyBytes bounds a policy file: a witness line is about 150 bytes,
// and a policy names a handful of witnesses.
const maxPolicyBytes = 1 << 20

// none is the name Sigsum reserves for the empty group ("quorum none").
const none = "none"

// Witness is a witness line of a policy.
type Witness struct {
	// Name is the witness's own name: the name of its cosignature key,
	// which its cosignature lines carry (e.g. witness.example/w1).
	Name string
	// Key is the witness's Ed25519 public key.
	Key ed25519.PublicKey
	// URL is the witness's submission prefix (add-checkpoint is at
	// URL/add-checkpoint); "" when the line has none, as in a policy that
	// only verifies.
	URL string

	verifier note.Verifier
}

// Verifier returns the note verifier of the witness's c2sp.org/tlog-cosignature
// (cosignature/v1) signatures: torchwood's CosignatureVerifier.
func (w Witness) Verifier() note.Verifier { return w.verifier }

// VerifierKey returns the witness's key in c2sp.org/signed-note verifier key
// form, <name>+<key hash>+<base64 of 0x04 || key>: how torchwood, litewitness
// and the witness network name a cosignature key.
func (w Witness) VerifierKey() string { return w.verifier.(fmt.Stringer).String() }

// Policy is a witness policy: the witnesses Stage-4 asks to cosign its
// checkpoints and the quorum of their cosignatures that a checkpoint needs.
// It is immutable and safe for concurrent use.
type Policy struct {
	witnesses []Witness      // in the order of the file
	byName    map[string]int // index in witnesses by name
	quorum    *quorumNode
	quorumOf  string // the name that the quorum line names
}

// quorumNode is a witness (a leaf, witness != "") or a K-of-N group.
type quorumNode struct {
	witness string
	k       int
	members []*quorumNode
}

// met reports whether the cosigners meet the node.
func (n *quorumNode) met(cosigned map[string]bool) bool {
	if n.witness != "" {
		return cosigned[n.witness]
	}
	c := 0
	for _, m := range n.members {
		if m.met(cosigned) {
			c++
		}
	}
	return c >= n.k
}

// Witnesses returns the policy's witnesses in the order of its lines.
func (p *Policy) Witnesses() []Witness {
	return append([]Witness(nil), p.witnesses...)
}

// Witness returns the witness of that name.
func (p *Policy) Witness(name string) (Witness, bool) {
	i, ok := p.byName[name]
	if !ok {
		return Witness{}, false
	}
	return p.witnesses[i], true
}

// QuorumName returns the name that the policy's quorum line names.
func (p *Policy) QuorumName() string { return p.quorumOf }

// QuorumMet reports whether cosignatures by the named witnesses meet the
// policy's quorum. The caller has verified those cosignatures (see
// VerifyCheckpoint); names that are not the policy's witnesses count for
// nothing, and a name given twice counts once.
func (p *Policy) QuorumMet(cosigners []string) bool {
	set := make(map[string]bool, len(cosigners))
	for _, name := range cosigners {
		if _, ok := p.byName[name]; ok {
			set[name] = true
		}
	}
	return p.quorum.met(set)
}

// Verifiers returns the note verifiers of every witness's cosignatures.
func (p *Policy) Verifiers() []note.Verifier {
	vs := make([]note.Verifier, len(p.witnesses))
	for i, w := range p.witnesses {
		vs[i] = w.verifier
	}
	return vs
}

// ReadPolicyFile reads and parses the policy file at path (see ParsePolicy).
func ReadPolicyFile(path string) (*Policy, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("witness policy: %w", err)
	}
	defer f.Close()
	p, err := ParsePolicy(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// ParsePolicy parses a witness policy in the Sigsum policy format
// (https://git.glasklar.is/sigsum/core/sigsum-go/-/blob/main/doc/policy.md),
// restricted to the lines that concern witnesses:
//
//	witness NAME PUBKEY-HEX [URL]
//	group NAME K|all|any MEMBER...
//	quorum NAME
//
// Fields are separated by spaces or tabs; blank lines and lines whose
// first field starts with # are ignored. NAME of a witness is the
// witness's own name, which its cosignature lines carry; PUBKEY-HEX is its
// raw 32-byte Ed25519 key in hex; URL its submission prefix. A group is
// satisfied when K of its members are (all: every member, any: one); its
// members are witnesses or groups defined on earlier lines, each a member
// of one group at most. Witnesses and groups share one namespace. Exactly
// one quorum line names the witness or group that a checkpoint must
// satisfy. Sigsum's log lines and "quorum none" are refused: the log's key
// is Stage-4's own, and a policy that asks for no cosignature is no
// policy. Errors wrap ErrInvalidPolicy and name the line.
func ParsePolicy(r io.Reader) (*Policy, error) {
	b := &policyBuilder{
		Policy: &Policy{byName: map[string]int{}},
		nodes:  map[string]*quorumNode{},
		member: map[string]string{},
		keys:   map[string]string{},
	}
	sc := bufio.NewScanner(io.LimitReader(r, maxPolicyBytes))
	lineno := 0
	for sc.Scan() {
		lineno++
		if err := b.line(sc.Text()); err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrInvalidPolicy, lineno, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: line %d: %w", ErrInvalidPolicy, lineno+1, err)
	}
	if b.quorum == nil {
		return nil, fmt.Errorf("%w: no quorum line", ErrInvalidPolicy)
	}
	return b.Policy, nil
}

// policyBuilder is a Policy being parsed.
type policyBuilder struct {
	*Policy
	nodes  map[string]*quorumNode // witnesses and groups by name
	member map[string]string      // names that are members, to their group
	keys   map[string]string      // witness keys (hex) to their names
}

func (b *policyBuilder) line(line string) error {
	// Sigsum's character set: no control characters but tab; octets
	// from 0x80 are opaque (a witness name must still be a note key
	// name, in UTF-8: newCosignatureVerifier checks).
	for i := 0; i < len(line); i++ {
		if c := line[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return fmt.Errorf("control character %q", c)
		}
	}
	fields := strings.FieldsFunc(line, func(c rune) bool { return c == ' ' || c == '\t' })
	if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
		return nil
	}
	switch args := fields[1:]; fields[0] {
	case "witness":
		return b.witness(args)
	case "group":
		return b.group(args)
	case "quorum":
		return b.setQuorum(args)
	case "log":
		return errors.New("log lines are not part of a Stage-4 witness policy: the log is Stage-4's own (its key is --audit-signing-key)")
	default:
		return fmt.Errorf("unknown keyword %q (want witness, group or quorum)", fields[0])
	}
}

func (b *policyBuilder) define(name string) error {
	if name == none {
		return fmt.Errorf("%q is a reserved name", none)
	}
	if _, dup := b.nodes[name]; dup {
		return fmt.Errorf("%q is defined twice", name)
	}
	return nil
}

func (b *policyBuilder) witness(args []string) error {
	if len(args) < 2 || len(args) > 3 {
		return errors.New("want witness NAME PUBKEY-HEX [URL]")
	}
	name, keyHex := args[0], args[1]
	if err := b.define(name); err != nil {
		return err
	}
	key, err := hex.DecodeString(keyHex)
	if err != nil || len(key) != ed25519.PublicKeySize {
		return fmt.Errorf("witness %s: the key %q is not 64 hex digits (a raw Ed25519 public key)", name, keyHex)
	}
	keyHex = hex.EncodeToString(key) // one spelling, for the duplicate check
	if other, dup := b.keys[keyHex]; dup {
		return fmt.Errorf("witness %s has the key of witness %s", name, other)
	}
	w := Witness{Name: name, Key: ed25519.PublicKey(key)}
	if len(args) == 3 {
		if w.URL, err = parseWitnessURL(args[2]); err != nil {
			return fmt.Errorf("witness %s: %w", name, err)
		}
	}
	if w.verifier, err = newCosignatureVerifier(name, w.Key); err != nil {
		return fmt.Errorf("witness %s: %w", name, err)
	}
	b.keys[keyHex] = name
	b.nodes[name] = &quorumNode{witness: name}
	b.byName[name] = len(b.witnesses)
	b.witnesses = append(b.witnesses, w)
	return nil
}

// parseWitnessURL checks a submission prefix: an absolute http or https
// URL, without query or fragment (the protocol appends a path to it).
func parseWitnessURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("URL %q: want http:// or https:// and a host", s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("URL %q: want no user, query or fragment", s)
	}
	return strings.TrimSuffix(s, "/"), nil
}

func (b *policyBuilder) group(args []string) error {
	if len(args) < 3 {
		return errors.New("want group NAME K|all|any MEMBER...")
	}
	name, members := args[0], args[2:]
	if err := b.define(name); err != nil {
		return err
	}
	var k int
	switch args[1] {
	case "all":
		k = len(members)
	case "any":
		k = 1
	default:
		var err error
		if k, err = strconv.Atoi(args[1]); err != nil {
			return fmt.Errorf("group %s: threshold %q is not a number, all or any", name, args[1])
		}
		if k < 1 || k > len(members) {
			return fmt.Errorf("group %s: threshold %d out of range 1..%d (its members)", name, k, len(members))
		}
	}
	g := &quorumNode{k: k}
	for _, m := range members {
		n, ok := b.nodes[m]
		if !ok {
			return fmt.Errorf("group %s: member %q is not a witness or group defined above", name, m)
		}
		if other, dup := b.member[m]; dup {
			return fmt.Errorf("group %s: %q is already a member of group %s", name, m, other)
		}
		b.member[m] = name
		g.members = append(g.members, n)
	}
	b.nodes[name] = g
	return nil
}

func (b *policyBuilder) setQuorum(args []string) error {
	if len(args) != 1 {
		return errors.New("want quorum NAME")
	}
	if b.quorum != nil {
		return errors.New("a second quorum line")
	}
	if args[0] == none {
		return errors.New("quorum none asks for no cosignature: leave out the witness policy instead")
	}
	n, ok := b.nodes[args[0]]
	if !ok {
		return fmt.Errorf("quorum %q is not a witness or group defined above", args[0])
	}
	b.quorum, b.quorumOf = n, args[0]
	return nil
}
