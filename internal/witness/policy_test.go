package witness_test

import (
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/internal/witness"
)

// keyHex returns a distinct valid Ed25519 public key in hex for each i.
func keyHex(i int) string {
	seed := make([]byte, ed25519.SeedSize)
	seed[0] = byte(i)
	return hex.EncodeToString(ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey))
}

// witnessLines returns witness lines for the names, with distinct keys
// and URLs.
func witnessLines(names ...string) string {
	var b strings.Builder
	for i, n := range names {
		fmt.Fprintf(&b, "witness %s %s https://%s.example/\n", n, keyHex(i), strings.ReplaceAll(n, "/", "-"))
	}
	return b.String()
}

func TestPolicyQuorum(t *testing.T) {
	t.Parallel()
	// The example of Sigsum's policy.md, two levels of groups.
	sigsumExample := witnessLines("X1", "X2", "X3", "Y1", "Y2", "Y3") + `
group X-witnesses 2 X1 X2 X3
group Y-witnesses any Y1 Y2 Y3
group X-and-Y all X-witnesses Y-witnesses
quorum X-and-Y
`
	tests := []struct {
		name   string
		policy string
		met    [][]string // sets of cosigners that meet the quorum
		notMet [][]string // and sets that do not
	}{
		{
			name:   "one witness",
			policy: witnessLines("w1", "w2") + "quorum w1\n",
			met:    [][]string{{"w1"}, {"w1", "w2"}},
			notMet: [][]string{nil, {"w2"}, {"w3"}},
		},
		{
			name:   "2 of 3",
			policy: witnessLines("w1", "w2", "w3") + "group g 2 w1 w2 w3\nquorum g\n",
			met:    [][]string{{"w1", "w2"}, {"w2", "w3"}, {"w1", "w2", "w3"}},
			notMet: [][]string{nil, {"w1"}, {"w1", "w1"}, {"w3", "other"}},
		},
		{
			name:   "all",
			policy: witnessLines("w1", "w2") + "group g all w1 w2\nquorum g\n",
			met:    [][]string{{"w1", "w2"}},
			notMet: [][]string{{"w1"}, {"w2"}},
		},
		{
			name:   "any",
			policy: witnessLines("w1", "w2") + "group g any w1 w2\nquorum g\n",
			met:    [][]string{{"w1"}, {"w2"}},
			notMet: [][]string{nil, {"g"}},
		},
		{
			name:   "nested groups (Sigsum's example)",
			policy: sigsumExample,
			met:    [][]string{{"X1", "X2", "Y3"}, {"X1", "X3", "Y1", "Y2"}},
			notMet: [][]string{{"X1", "X2"}, {"X1", "Y1", "Y2", "Y3"}, {"X-witnesses", "Y-witnesses"}},
		},
		{
			name: "comments, blank lines, tabs and spaces",
			policy: "# a policy\n\n  # indented comment\n" +
				"witness\tw1  " + keyHex(1) + "\thttps://w1.example\n" +
				"   witness w2 " + strings.ToUpper(keyHex(2)) + "   \n" +
				"group g\t1 w1 w2\n\nquorum g\n",
			met:    [][]string{{"w2"}},
			notMet: [][]string{nil},
		},
		{
			name:   "CRLF line ends (as bufio.ScanLines, like Sigsum's parser)",
			policy: strings.ReplaceAll(witnessLines("w1")+"quorum w1\n", "\n", "\r\n"),
			met:    [][]string{{"w1"}},
		},
		{
			name:   "a witness name with a path and non-ASCII",
			policy: witnessLines("witness.example/π") + "quorum witness.example/π\n",
			met:    [][]string{{"witness.example/π"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := witness.ParsePolicy(strings.NewReader(tt.policy))
			require.NoError(t, err)
			for _, set := range tt.met {
				require.True(t, p.QuorumMet(set), "%v", set)
			}
			for _, set := range tt.notMet {
				require.False(t, p.QuorumMet(set), "%v", set)
			}
		})
	}
}

func TestPolicyWitnesses(t *testing.T) {
	t.Parallel()
	p, err := witness.ParsePolicy(strings.NewReader(
		"witness w1 " + keyHex(1) + " http://127.0.0.1:7380/\n" +
			"witness w2 " + keyHex(2) + "\n" +
			"quorum w2\n"))
	require.NoError(t, err)
	ws := p.Witnesses()
	require.Len(t, ws, 2)
	require.Equal(t, "w1", ws[0].Name)
	require.Equal(t, keyHex(1), hex.EncodeToString(ws[0].Key))
	require.Equal(t, "http://127.0.0.1:7380", ws[0].URL, "without the trailing slash")
	require.Equal(t, "", ws[1].URL)
	require.Equal(t, "w2", p.QuorumName())
	w, ok := p.Witness("w2")
	require.True(t, ok)
	require.Equal(t, ws[1], w)
	_, ok = p.Witness("w3")
	require.False(t, ok)
	require.Len(t, p.Verifiers(), 2)
	require.Equal(t, "w1", p.Verifiers()[0].Name())

	// A witness without a URL can be verified but not asked.
	_, err = witness.NewCosigner(p, witness.HashProver(nil))
	require.ErrorContains(t, err, "witness w2 has no URL")
}

func TestParsePolicyErrors(t *testing.T) {
	t.Parallel()
	w12 := witnessLines("w1", "w2")
	tests := []struct {
		name   string
		policy string
		want   string // in the error
	}{
		{name: "empty", policy: "", want: "no quorum line"},
		{name: "only comments", policy: "# nothing\n", want: "no quorum line"},
		{name: "no quorum", policy: w12, want: "no quorum line"},
		{name: "unknown keyword", policy: "witnesses w1 " + keyHex(1) + "\n", want: `line 1: unknown keyword "witnesses"`},
		{name: "log line", policy: "log " + keyHex(1) + "\nquorum none\n", want: "line 1: log lines are not part"},
		{name: "quorum none", policy: w12 + "quorum none\n", want: "line 3: quorum none asks for no cosignature"},
		{name: "two quorums", policy: w12 + "quorum w1\nquorum w2\n", want: "line 4: a second quorum line"},
		{name: "quorum of nothing", policy: w12 + "quorum w3\n", want: `line 3: quorum "w3" is not a witness or group defined above`},
		{name: "quorum before its group", policy: w12 + "quorum g\ngroup g any w1 w2\n", want: `line 3: quorum "g"`},
		{name: "quorum without a name", policy: w12 + "quorum\n", want: "want quorum NAME"},
		{name: "witness without a key", policy: "witness w1\n", want: "want witness NAME PUBKEY-HEX [URL]"},
		{name: "witness with too much", policy: "witness w1 " + keyHex(1) + " https://w1.example # comment\n", want: "want witness NAME PUBKEY-HEX [URL]"},
		{name: "short key", policy: "witness w1 " + keyHex(1)[:62] + "\n", want: "is not 64 hex digits"},
		{name: "key not hex", policy: "witness w1 " + strings.Repeat("g", 64) + "\n", want: "is not 64 hex digits"},
		{name: "duplicate witness name", policy: "witness w1 " + keyHex(1) + "\nwitness w1 " + keyHex(2) + "\n", want: `line 2: "w1" is defined twice`},
		{name: "duplicate key", policy: "witness w1 " + keyHex(1) + "\nwitness w2 " + strings.ToUpper(keyHex(1)) + "\n", want: "line 2: witness w2 has the key of witness w1"},
		{name: "witness named none", policy: "witness none " + keyHex(1) + "\n", want: `"none" is a reserved name`},
		{name: "witness name with a plus", policy: "witness w+1 " + keyHex(1) + "\n", want: "cannot name a note key"},
		{name: "witness name not UTF-8", policy: "witness w\xff " + keyHex(1) + "\n", want: "cannot name a note key"},
		{name: "URL without scheme", policy: "witness w1 " + keyHex(1) + " w1.example\n", want: "want http:// or https://"},
		{name: "URL of another scheme", policy: "witness w1 " + keyHex(1) + " ftp://w1.example\n", want: "want http:// or https://"},
		{name: "URL with a query", policy: "witness w1 " + keyHex(1) + " https://w1.example/?a=b\n", want: "want no user, query or fragment"},
		{name: "control character", policy: "witness w1 " + keyHex(1) + "\r \n", want: `line 1: control character '\r'`},
		{name: "NUL", policy: "# \x00\n", want: `line 1: control character '\x00'`},
		{name: "group of nothing", policy: w12 + "group g 1\n", want: "want group NAME K|all|any MEMBER..."},
		{name: "group threshold 0", policy: w12 + "group g 0 w1 w2\n", want: "threshold 0 out of range 1..2"},
		{name: "group threshold too high", policy: w12 + "group g 3 w1 w2\n", want: "threshold 3 out of range 1..2"},
		{name: "group threshold negative", policy: w12 + "group g -1 w1 w2\n", want: "out of range"},
		{name: "group threshold not a number", policy: w12 + "group g most w1 w2\n", want: `threshold "most" is not a number, all or any`},
		{name: "group of an undefined member", policy: w12 + "group g any w1 w3\n", want: `member "w3" is not a witness or group defined above`},
		{name: "group of itself", policy: w12 + "group g any w1 g\n", want: `member "g"`},
		{name: "group of none", policy: w12 + "group g any w1 none\n", want: `member "none"`},
		{name: "member twice in a group", policy: w12 + "group g all w1 w1\n", want: `"w1" is already a member of group g`},
		{name: "member of two groups", policy: w12 + "group g1 any w1 w2\ngroup g2 any w1\n", want: `line 4: group g2: "w1" is already a member of group g1`},
		{name: "group named like a witness", policy: w12 + "group w1 any w2\n", want: `"w1" is defined twice`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := witness.ParsePolicy(strings.NewReader(tt.policy))
			require.ErrorIs(t, err, witness.ErrInvalidPolicy)
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestReadPolicyFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "policy")
	require.NoError(t, os.WriteFile(path, []byte(witnessLines("w1")+"quorum w1\n"), 0o644))
	p, err := witness.ReadPolicyFile(path)
	require.NoError(t, err)
	require.Equal(t, "w1", p.QuorumName())

	require.NoError(t, os.WriteFile(path, []byte(witnessLines("w1")+"quorum w2\n"), 0o644))
	_, err = witness.ReadPolicyFile(path)
	require.ErrorIs(t, err, witness.ErrInvalidPolicy)
	require.ErrorContains(t, err, path+": invalid witness policy: line 2:")

	_, err = witness.ReadPolicyFile(filepath.Join(dir, "missing"))
	require.ErrorIs(t, err, os.ErrNotExist)
}
