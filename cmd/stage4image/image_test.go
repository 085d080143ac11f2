package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/x509"
	"debug/elf"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/internal/testkit"
)

const dockerfile = "../../Dockerfile"

// dockerfileStage is what the test reads of the Dockerfile: the last
// stage's promises and every RUN line.
type dockerfileStage struct {
	env, labels      map[string]string
	user             string
	expose           []string
	entrypoint, cmd  []string
	copyDestinations []string
	runs             []string
}

// readDockerfile parses the Dockerfile, with build argument REVISION set
// to revision.
func readDockerfile(t *testing.T, revision string) dockerfileStage {
	t.Helper()
	var st dockerfileStage
	var runs []string
	for _, in := range testkit.DockerfileInstructions(t, dockerfile) {
		args := strings.ReplaceAll(in.Args, "${REVISION}", revision)
		switch in.Op {
		case "FROM": // a new stage: only the last one's promises count
			st = dockerfileStage{env: map[string]string{}, labels: map[string]string{}}
		case "ENV":
			pairs(t, args, st.env)
		case "LABEL":
			pairs(t, args, st.labels)
		case "USER":
			st.user = args
		case "EXPOSE":
			st.expose = append(st.expose, strings.Fields(args)...)
		case "ENTRYPOINT":
			require.NoError(t, json.Unmarshal([]byte(args), &st.entrypoint), "ENTRYPOINT in exec form")
		case "CMD":
			require.NoError(t, json.Unmarshal([]byte(args), &st.cmd), "CMD in exec form")
		case "COPY":
			fields := strings.Fields(args)
			st.copyDestinations = append(st.copyDestinations, fields[len(fields)-1])
		case "RUN":
			runs = append(runs, args)
		}
	}
	st.runs = runs
	return st
}

// pairs adds the key=value pairs of an ENV or LABEL instruction to m.
func pairs(t *testing.T, args string, m map[string]string) {
	t.Helper()
	for _, kv := range strings.Fields(args) {
		k, v, ok := strings.Cut(kv, "=")
		require.True(t, ok, "%q: write key=value", args)
		if strings.HasPrefix(v, `"`) {
			var err error
			v, err = strconv.Unquote(v)
			require.NoError(t, err)
		}
		m[k] = v
	}
}

// partialLayersDigest is a digest of img's layer digests, in order.
func partialLayersDigest(img v1.Image) (v1.Hash, error) {
	layers, err := img.Layers()
	if err != nil {
		return v1.Hash{}, err
	}
	var all strings.Builder
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return v1.Hash{}, err
		}
		all.WriteString(d.String() + "\n")
	}
	h, _, err := v1.SHA256(strings.NewReader(all.String()))
	return h, err
}

// imageFile is one entry of the image's file system.
type imageFile struct {
	hdr  *tar.Header
	data []byte
}

// imageFiles flattens img's layers into its file system, by absolute path.
func imageFiles(t *testing.T, img v1.Image) map[string]imageFile {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	files := map[string]imageFile{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		data, err := io.ReadAll(tr)
		require.NoError(t, err)
		name := "/" + strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
		files[name] = imageFile{hdr: h, data: data}
	}
	return files
}

// TestImage builds the image as make image does (one go build of stage4),
// reads it back from both outputs with go-containerregistry, and holds it
// to the Dockerfile's promises: what runs, as whom, with which environment,
// ports and labels, and which files.
func TestImage(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the Go toolchain is not in PATH: %v", err)
		}
		t.Skip("needs the Go toolchain in PATH, to build stage4")
	}
	const revision = "0123456789abcdef0123456789abcdef01234567"
	dir := t.TempDir()
	layoutDir, tarPath := filepath.Join(dir, "layout"), filepath.Join(dir, "out", "stage4.tar")
	var stdout, stderr bytes.Buffer
	require.NoError(t, run(context.Background(),
		[]string{"--out", layoutDir, "--tar", tarPath, "--revision", revision, "--tag", "stage4:test"}, &stdout, &stderr),
		"stderr: %s", stderr.String())
	t.Log(strings.TrimSpace(stdout.String()))

	idx, err := layout.ImageIndexFromPath(layoutDir)
	require.NoError(t, err)
	im, err := idx.IndexManifest()
	require.NoError(t, err)
	require.Len(t, im.Manifests, 1, "the layout holds one image")
	require.Equal(t, "test", im.Manifests[0].Annotations["org.opencontainers.image.ref.name"])
	img, err := idx.Image(im.Manifests[0].Digest)
	require.NoError(t, err)
	digest, err := img.Digest()
	require.NoError(t, err)
	cf, err := img.ConfigFile()
	require.NoError(t, err)
	files := imageFiles(t, img)
	df := readDockerfile(t, revision)

	tests := []struct {
		name  string
		check func(t *testing.T)
	}{
		{"the tarball holds the layout's image under its tag", func(t *testing.T) {
			tag, err := name.NewTag("stage4:test")
			require.NoError(t, err)
			fromTar, err := tarball.ImageFromPath(tarPath, &tag)
			require.NoError(t, err)
			// A docker load tarball keeps the config and the layers, not
			// the manifest, which go-containerregistry rebuilds: compare
			// what it keeps.
			for _, id := range []func(v1.Image) (v1.Hash, error){
				v1.Image.ConfigName,
				func(i v1.Image) (v1.Hash, error) { return partialLayersDigest(i) },
			} {
				want, err := id(img)
				require.NoError(t, err)
				got, err := id(fromTar)
				require.NoError(t, err)
				require.Equal(t, want, got)
			}
			m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(tarPath) })
			require.NoError(t, err)
			require.Len(t, m, 1)
			require.Equal(t, []string{"stage4:test"}, m[0].RepoTags, "what docker load names it")
		}},
		{"both images are consistent: digests, sizes and diff IDs match their blobs", func(t *testing.T) {
			require.NoError(t, validate.Image(img))
			tag, err := name.NewTag("stage4:test")
			require.NoError(t, err)
			fromTar, err := tarball.ImageFromPath(tarPath, &tag)
			require.NoError(t, err)
			require.NoError(t, validate.Image(fromTar))
		}},
		{"the config promises what the Dockerfile does", func(t *testing.T) {
			c := cf.Config
			require.Equal(t, "linux", cf.OS)
			require.Equal(t, runtime.GOARCH, cf.Architecture)
			require.Equal(t, df.entrypoint, c.Entrypoint, "ENTRYPOINT")
			require.Equal(t, df.cmd, c.Cmd, "CMD")
			require.Equal(t, df.user, c.User, "USER")
			var exposed []string
			for _, p := range df.expose {
				if !strings.Contains(p, "/") {
					p += "/tcp"
				}
				exposed = append(exposed, p)
			}
			require.ElementsMatch(t, exposed, slices.Collect(maps.Keys(c.ExposedPorts)), "EXPOSE")
			env := map[string]string{}
			for _, kv := range c.Env {
				k, v, _ := strings.Cut(kv, "=")
				env[k] = v
			}
			for k, v := range df.env {
				require.Equal(t, v, env[k], "ENV %s", k)
			}
			for k := range env {
				_, fromDockerfile := df.env[k]
				require.True(t, fromDockerfile || k == "PATH" || k == "SSL_CERT_FILE",
					"%s: the image sets only the Dockerfile's variables and distroless's PATH and SSL_CERT_FILE", k)
			}
			require.Equal(t, df.labels, c.Labels, "LABEL")
			require.Equal(t, revision, c.Labels["org.opencontainers.image.revision"])
			require.Equal(t, "/home/nonroot", c.WorkingDir, "distroless nonroot's WORKDIR")
			created, err := sourceDate()
			require.NoError(t, err)
			require.True(t, created.Equal(cf.Created.Time), "created at SOURCE_DATE_EPOCH or the epoch, not now")
		}},
		{"stage4 is built as the Dockerfile builds it", func(t *testing.T) {
			require.Contains(t, df.copyDestinations, binaryPath)
			var build string
			for _, r := range df.runs {
				if strings.Contains(r, " go build ") {
					build = r
				}
			}
			require.Contains(t, build, "CGO_ENABLED=0 go build -trimpath ")
			require.Contains(t, build, `-ldflags="`+ldflags(revision)+`"`)
		}},
		{"the file system is the binary, the users, the CA file and nothing else", func(t *testing.T) {
			dirs := []string{"/etc", "/etc/ssl", "/etc/ssl/certs", "/home", "/home/nonroot", "/tmp"}
			regular := []string{"/etc/passwd", "/etc/group", caFile, binaryPath}
			require.ElementsMatch(t, slices.Concat(dirs, regular), slices.Collect(maps.Keys(files)))
			for _, name := range dirs {
				require.Equal(t, byte(tar.TypeDir), files[name].hdr.Typeflag, "%s", name)
			}
			for _, name := range regular {
				require.Equal(t, byte(tar.TypeReg), files[name].hdr.Typeflag, "%s", name)
			}
			bin := files[binaryPath].hdr
			require.Equal(t, int64(0o755), bin.Mode, "/stage4: executable by all, writable by root only")
			require.Equal(t, []int{0, 0}, []int{bin.Uid, bin.Gid}, "/stage4 belongs to root, not to the user it runs as")
			require.Equal(t, int64(0o1777), files["/tmp"].hdr.Mode)

			uid, gid, ok := strings.Cut(cf.Config.User, ":")
			require.True(t, ok, "USER uid:gid")
			var home string
			for line := range strings.Lines(string(files["/etc/passwd"].data)) {
				f := strings.Split(strings.TrimSpace(line), ":")
				require.Len(t, f, 7, "passwd line %q", line)
				if f[2] == uid {
					require.Equal(t, gid, f[3])
					home = f[5]
				}
			}
			require.Equal(t, cf.Config.WorkingDir, home, "USER %s is in /etc/passwd with its home as the working directory", uid)
			h := files[home].hdr
			require.Equal(t, []string{uid, gid}, []string{strconv.Itoa(h.Uid), strconv.Itoa(h.Gid)}, "the user owns its home")
			require.Contains(t, string(files["/etc/group"].data), ":x:"+gid+":\n")
		}},
		{"the CA file holds the Mozilla roots", func(t *testing.T) {
			var env []string
			for _, kv := range cf.Config.Env {
				if v, ok := strings.CutPrefix(kv, "SSL_CERT_FILE="); ok {
					env = append(env, v)
				}
			}
			require.Equal(t, []string{caFile}, env)
			rest := files[caFile].data
			var subjects []string
			for {
				var b *pem.Block
				b, rest = pem.Decode(rest)
				if b == nil {
					break
				}
				cert, err := x509.ParseCertificate(b.Bytes)
				require.NoError(t, err)
				require.True(t, cert.IsCA, "%s", cert.Subject)
				subjects = append(subjects, cert.Subject.CommonName)
			}
			require.Empty(t, bytes.TrimSpace(rest))
			require.Greater(t, len(subjects), 100)
			require.Contains(t, subjects, "ISRG Root X1", "Let's Encrypt's root")
		}},
		{"/stage4 is a static binary that runs and knows its revision", func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "stage4")
			require.NoError(t, os.WriteFile(file, files[binaryPath].data, 0o755))
			ef, err := elf.Open(file)
			require.NoError(t, err)
			for _, p := range ef.Progs {
				require.NotEqual(t, elf.PT_INTERP, p.Type, "a dynamic loader is asked for: the image has no libc")
			}
			require.NoError(t, ef.Close())
			if runtime.GOOS != "linux" {
				t.Skip("the image's binary runs on linux only")
			}
			out, err := exec.Command(file, "version").CombinedOutput()
			require.NoError(t, err, "%s", out)
			require.Contains(t, string(out), "revision "+revision)
		}},
		{"assembling again gives the same digest", func(t *testing.T) {
			again, err := assemble(files[binaryPath].data, spec{arch: cf.Architecture, revision: revision, created: cf.Created.Time})
			require.NoError(t, err)
			d, err := again.Digest()
			require.NoError(t, err)
			require.Equal(t, digest, d)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.check(t)
		})
	}
}

func TestRunRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "nothing to write", args: []string{"--out", "", "--tar", ""}, want: "nothing to write"},
		{name: "a revision that would split -ldflags", args: []string{"--revision", "abc -X main.x=y"}, want: "--revision"},
		{name: "a bad tag", args: []string{"--tag", "Stage4:latest"}, want: "--tag"},
		{name: "arguments", args: []string{"extra"}, want: "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := run(context.Background(), tt.args, io.Discard, io.Discard)
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestWriteLayoutKeepsOtherDirectories(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "precious"), []byte("x"), 0o644))
	tag, err := name.NewTag("stage4:test")
	require.NoError(t, err)
	err = writeLayout(dir, nil, tag)
	require.ErrorContains(t, err, "not replacing it")
	_, err = os.Stat(filepath.Join(dir, "precious"))
	require.NoError(t, err)
}
