package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
)

// stage4Package is what the image runs.
const stage4Package = "github.com/stage4/stage4/cmd/stage4"

// ldflags are the Dockerfile's: no symbol table or DWARF (-s -w), and the
// revision for stage4 version, since neither build lets Go stamp it.
func ldflags(revision string) string {
	return "-s -w -X main.revision=" + revision
}

// buildStage4 compiles stage4 for linux/arch into out as the Dockerfile
// does: static (CGO_ENABLED=0, for an image without libc), without the
// build machine's paths (-trimpath). -buildvcs=false matches the
// Dockerfile's build context, which has no .git: the revision comes from
// ldflags in both, so that the two images' binaries say the same.
func buildStage4(ctx context.Context, out, arch, revision string, stderr io.Writer) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("the Go toolchain builds stage4: %w", err)
	}
	cmd := exec.CommandContext(ctx, goTool, "build", "-trimpath", "-buildvcs=false",
		"-ldflags="+ldflags(revision), "-o", out, stage4Package)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w", stage4Package, err)
	}
	return nil
}
