package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// What the image promises. The Dockerfile makes the same promises on
// distroless (its nonroot user is 65532 too); TestImage compares the two.
const (
	binaryPath = "/stage4"
	// nonroot is the user and group the image runs as, a number so that
	// Kubernetes' runAsNonRoot can check it.
	nonroot = 65532
	caFile  = "/etc/ssl/certs/ca-certificates.crt"
	// sourceURL is the org.opencontainers.image.source label.
	sourceURL = "https://github.com/stage4/stage4"
)

// spec is what varies between builds of the image.
type spec struct {
	arch     string
	revision string
	created  time.Time
}

// imageConfig is the image's run configuration. PATH, SSL_CERT_FILE and
// the working directory are what distroless's nonroot image sets, so that
// both images behave alike (serve's default --audit-log is relative: it
// lands in nonroot's home, which nonroot may write).
// STAGE4_LISTEN and STAGE4_METRICS_LISTEN open serve's two ports on every
// interface: its defaults are loopback only, which nothing outside the
// container reaches. Flags on the command line still win.
func imageConfig(s spec) v1.Config {
	return v1.Config{
		Entrypoint: []string{binaryPath},
		Cmd:        []string{"serve"},
		User:       strconv.Itoa(nonroot) + ":" + strconv.Itoa(nonroot),
		WorkingDir: "/home/nonroot",
		Env: []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"SSL_CERT_FILE=" + caFile,
			"STAGE4_LISTEN=:8080",
			"STAGE4_METRICS_LISTEN=:9090",
		},
		ExposedPorts: map[string]struct{}{"8080/tcp": {}, "9090/tcp": {}},
		Labels: map[string]string{
			"org.opencontainers.image.source":   sourceURL,
			"org.opencontainers.image.revision": s.revision,
		},
	}
}

// entry is one file or directory of a layer.
type entry struct {
	name     string // absolute path in the image
	mode     int64  // permission bits, with the sticky bit for /tmp
	uid, gid int
	dir      bool
	data     []byte
}

// baseEntries are what a distroless base would give: the users, a home
// for nonroot, /tmp, and the CA file (Go's crypto/x509 reads it on Linux).
// No tzdata: stage4 loads no time zone by name, and logs in UTC.
func baseEntries(caPEM []byte) []entry {
	passwd := "root:x:0:0:root:/root:/sbin/nologin\n" +
		fmt.Sprintf("nonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", nonroot, nonroot)
	group := "root:x:0:\n" + fmt.Sprintf("nonroot:x:%d:\n", nonroot)
	return []entry{
		{name: "/etc", mode: 0o755, dir: true},
		{name: "/etc/passwd", mode: 0o644, data: []byte(passwd)},
		{name: "/etc/group", mode: 0o644, data: []byte(group)},
		{name: "/etc/ssl", mode: 0o755, dir: true},
		{name: "/etc/ssl/certs", mode: 0o755, dir: true},
		{name: caFile, mode: 0o644, data: caPEM},
		{name: "/home", mode: 0o755, dir: true},
		{name: "/home/nonroot", mode: 0o700, uid: nonroot, gid: nonroot, dir: true},
		{name: "/tmp", mode: 0o1777, dir: true},
	}
}

// assemble builds the image from the stage4 binary: a layer of base files
// that changes only with the CA roots, and one of the binary, on no base
// image. The result depends on its inputs alone.
func assemble(binary []byte, s spec) (v1.Image, error) {
	caPEM, _, err := caBundle()
	if err != nil {
		return nil, err
	}
	base, err := layer(baseEntries(caPEM), s.created)
	if err != nil {
		return nil, fmt.Errorf("base layer: %w", err)
	}
	app, err := layer([]entry{{name: binaryPath, mode: 0o755, data: binary}}, s.created)
	if err != nil {
		return nil, fmt.Errorf("stage4 layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img,
		mutate.Addendum{Layer: base, History: v1.History{Created: v1.Time{Time: s.created},
			CreatedBy: "stage4image: /etc/passwd, /etc/group, " + caFile + " (x509roots/fallback), /home/nonroot, /tmp"}},
		mutate.Addendum{Layer: app, History: v1.History{Created: v1.Time{Time: s.created},
			CreatedBy: "stage4image: CGO_ENABLED=0 go build -trimpath -ldflags='" + ldflags(s.revision) + "' " + stage4Package}},
	)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", s.arch
	cf.Created = v1.Time{Time: s.created}
	cf.Config = imageConfig(s)
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}
	// The labels again as the manifest's annotations, where registries
	// and OCI tools look for them.
	return mutate.Annotations(img, map[string]string{
		"org.opencontainers.image.source":   sourceURL,
		"org.opencontainers.image.revision": s.revision,
		"org.opencontainers.image.created":  s.created.Format(time.RFC3339),
	}).(v1.Image), nil
}

// layer makes a gzip-compressed OCI layer of entries, in their order
// (parents first), every time stamp at created. It is compressed once,
// however often its digest and bytes are asked for, at gzip's default
// level: on stage4, level 9 saves 0.3% for three times the time.
func layer(entries []entry, created time.Time) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name:    strings.TrimPrefix(e.name, "/"),
			Mode:    e.mode,
			Uid:     e.uid,
			Gid:     e.gid,
			Uname:   userName(e.uid),
			Gname:   userName(e.gid),
			ModTime: created,
			Format:  tar.FormatPAX,
		}
		if e.dir {
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.DefaultCompression),
		tarball.WithCompressedCaching)
}

// userName names the two ids that /etc/passwd knows.
func userName(id int) string {
	if id == nonroot {
		return "nonroot"
	}
	return "root"
}
