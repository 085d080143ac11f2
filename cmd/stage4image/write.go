package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// writeLayout writes img as the only image of an OCI image layout in dir,
// named by tag's tag in org.opencontainers.image.ref.name (skopeo's
// oci:DIR:TAG). A directory that holds a layout already is replaced;
// one that holds anything else is left alone.
func writeLayout(dir string, img v1.Image, tag name.Tag) error {
	ents, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return err
	case len(ents) > 0:
		if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
			return errors.New("the directory holds something other than an OCI layout; not replacing it")
		}
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": tag.TagStr(),
	}))
}

// writeTarball writes img as a docker load tarball named tag, through a
// temporary file so that a failed build leaves no half tarball.
func writeTarball(file string, img v1.Image, tag name.Tag) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	tmp := file + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, file)
}

// report prints the image's digest, size and where it went.
func report(w io.Writer, img v1.Image, o options, tag name.Tag, binaryBytes int) error {
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	var compressed int64
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			return err
		}
		compressed += n
	}
	const mib = 1 << 20
	fmt.Fprintf(w, "stage4image: %s linux/%s, %d layers, %.1f MiB compressed (stage4 %.1f MiB), revision %q\n",
		digest, o.arch, len(layers), float64(compressed)/mib, float64(binaryBytes)/mib, o.revision)
	if o.layoutDir != "" {
		fmt.Fprintf(w, "  OCI layout %s: skopeo copy oci:%s:%s docker://REGISTRY/stage4:TAG\n", o.layoutDir, o.layoutDir, tag.TagStr())
	}
	if o.tarPath != "" {
		fmt.Fprintf(w, "  tarball %s: docker load -i %s\n", o.tarPath, o.tarPath)
	}
	return nil
}
