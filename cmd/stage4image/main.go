// Binary stage4image builds the Stage-4 container image without a
// container engine and without pulling a base image: it compiles
// cmd/stage4 with the Go toolchain as the Dockerfile does, and assembles,
// with go-containerregistry, an OCI image of that binary, an /etc/passwd
// and /etc/group naming the non-root user 65532, and CA certificates. It
// writes an OCI image layout directory (for skopeo, crane, podman or
// containerd) and a tarball that docker load reads. make image runs it.
//
// It lives in the main module, beside what it packs, rather than in the
// tools module (pinned third-party tools run with go tool): its test holds
// the image to the Dockerfile's promises, and the certificates it ships
// come from a module pinned in the same go.sum. Nothing of it is linked
// into stage4.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
)

const usage = `Usage: stage4image [flags]

Builds the Stage-4 image from this checkout alone: go build of cmd/stage4
(CGO_ENABLED=0, -trimpath, the revision stamped as the Dockerfile does),
then an OCI image with /stage4, /etc/passwd and /etc/group (user 65532,
nonroot), and the Mozilla CA roots, pulling no base image. Run it inside
the repository. SOURCE_DATE_EPOCH, when set, is the image's creation time
(else 1970-01-01), so that one revision always gives one image digest.

`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "stage4image:", err)
		}
		os.Exit(2)
	}
}

// options are stage4image's flags.
type options struct {
	layoutDir string
	tarPath   string
	tag       string
	revision  string
	arch      string
}

// revisionPattern is what --revision may hold: it goes into -ldflags,
// where a space would start another flag.
var revisionPattern = regexp.MustCompile(`^[0-9A-Za-z._-]*$`)

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("stage4image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.layoutDir, "out", "bin/image", "OCI image layout `directory` to write (replaced if it holds one); empty for none")
	fs.StringVar(&o.tarPath, "tar", "bin/stage4-image.tar", "`file` to write the image to as a docker load tarball; empty for none")
	fs.StringVar(&o.tag, "tag", "stage4:latest", "image `name:tag` in the tarball and the layout's index")
	fs.StringVar(&o.revision, "revision", "", "VCS `revision` that stage4 version prints and the image's label carries (git rev-parse HEAD)")
	fs.StringVar(&o.arch, "arch", runtime.GOARCH, "GOARCH of the image (its OS is linux)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.layoutDir == "" && o.tarPath == "" {
		return errors.New("nothing to write: give --out or --tar")
	}
	if !revisionPattern.MatchString(o.revision) {
		return fmt.Errorf("--revision %q: letters, digits, '.', '_' and '-' only", o.revision)
	}
	tag, err := name.NewTag(o.tag)
	if err != nil {
		return fmt.Errorf("--tag: %w", err)
	}
	created, err := sourceDate()
	if err != nil {
		return err
	}

	tmp, err := os.MkdirTemp("", "stage4image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	binFile := filepath.Join(tmp, "stage4")
	if err := buildStage4(ctx, binFile, o.arch, o.revision, stderr); err != nil {
		return err
	}
	binary, err := os.ReadFile(binFile)
	if err != nil {
		return err
	}
	img, err := assemble(binary, spec{arch: o.arch, revision: o.revision, created: created})
	if err != nil {
		return err
	}
	if o.layoutDir != "" {
		if err := writeLayout(o.layoutDir, img, tag); err != nil {
			return fmt.Errorf("OCI layout %s: %w", o.layoutDir, err)
		}
	}
	if o.tarPath != "" {
		if err := writeTarball(o.tarPath, img, tag); err != nil {
			return fmt.Errorf("tarball %s: %w", o.tarPath, err)
		}
	}
	return report(stdout, img, o, tag, len(binary))
}

// sourceDate is the image's creation time: SOURCE_DATE_EPOCH (the
// reproducible-builds convention) or the Unix epoch, never the clock, so
// that building one revision twice gives the same digest.
func sourceDate() (time.Time, error) {
	v := os.Getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	secs, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", v, err)
	}
	return time.Unix(secs, 0).UTC(), nil
}
