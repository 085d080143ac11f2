package testkit

import (
	"bufio"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// DockerInstruction is one instruction of a Dockerfile, its continuation
// lines joined.
type DockerInstruction struct {
	Op   string // upper case: FROM, ENV, CMD, ...
	Args string
}

// DockerfileInstructions reads the instructions of the Dockerfile at
// path, leaving out comments and blank lines: what the image and the
// deployment tests hold the Dockerfile to.
func DockerfileInstructions(t testing.TB, path string) []DockerInstruction {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var out []DockerInstruction
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cur.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(cont + " ")
			continue
		}
		cur.WriteString(line)
		op, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, DockerInstruction{Op: strings.ToUpper(op), Args: strings.TrimSpace(args)})
		cur.Reset()
	}
	require.NoError(t, sc.Err())
	return out
}
