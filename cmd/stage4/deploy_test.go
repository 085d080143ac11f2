package main

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"io/fs"
	"maps"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/internal/testkit"
	"go.yaml.in/yaml/v3"
	"golang.org/x/mod/sumdb/note"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/authz"
	"github.com/stage4/stage4/internal/gateway"
)

// The deployment kit cannot run here (no container engine, no cluster), so
// TestDeploymentKit checks what it names against the binary instead: every
// flag and STAGE4_ variable exists and parses, every port, probe and grace
// period agrees with the flags given to serve, every file a flag names is
// mounted from where the README says, the Istio policy guards exactly the
// RPCs that read the audit log, and the memory limit holds what the
// in-flight budget lets in.

const (
	deployDir  = "../../deploy/kubernetes"
	dockerfile = "../../Dockerfile"
	readme     = "../../README.md"
)

// The memory arithmetic of the manifest (docs/DESIGN.md, "Memory under a
// burst"): at most budget / --max-message-bytes requests of the largest
// size are held at once, each costing its encoded bytes plus its decoded
// form.
const (
	// decodedBytesPerEncodedByte is what a request of small list values,
	// the worst case of google.protobuf.Value, decodes into.
	decodedBytesPerEncodedByte = 18
	// restingBytes bounds serve's resident set without requests: 25 MiB
	// at start, 53-85 MiB a few seconds after a burst.
	restingBytes = 96 << 20
	// goMemLimitPercentOfLimit is the most of the container's limit that
	// GOMEMLIMIT may take: a soft limit is passed under a burst (a peak of
	// 469 MiB was measured against a GOMEMLIMIT of 448 MiB), and the rest
	// of the limit is for that.
	goMemLimitPercentOfLimit = 80
)

// k8sObject is the part of a Kubernetes object the test reads; spec is
// decoded by kind.
type k8sObject struct {
	file     string // relative to deployDir
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec      yaml.Node         `yaml:"spec"`
	Data      map[string]string `yaml:"data"`      // ConfigMap
	Resources []string          `yaml:"resources"` // Kustomization
}

type labelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type statefulSetSpec struct {
	Replicas            int           `yaml:"replicas"`
	ServiceName         string        `yaml:"serviceName"`
	PodManagementPolicy string        `yaml:"podManagementPolicy"`
	Selector            labelSelector `yaml:"selector"`
	Template            struct {
		Metadata struct {
			Labels map[string]string `yaml:"labels"`
		} `yaml:"metadata"`
		Spec podSpec `yaml:"spec"`
	} `yaml:"template"`
}

type podSpec struct {
	TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               struct {
		RunAsNonRoot bool   `yaml:"runAsNonRoot"`
		RunAsUser    *int64 `yaml:"runAsUser"`
		RunAsGroup   *int64 `yaml:"runAsGroup"`
		FSGroup      *int64 `yaml:"fsGroup"`
	} `yaml:"securityContext"`
	InitContainers []container `yaml:"initContainers"`
	Containers     []container `yaml:"containers"`
	Volumes        []volume    `yaml:"volumes"`
}

// volume is a pod volume of the kinds the kit uses.
type volume struct {
	Name   string `yaml:"name"`
	Secret *struct {
		SecretName  string      `yaml:"secretName"`
		DefaultMode *int        `yaml:"defaultMode"`
		Items       []keyToPath `yaml:"items"`
	} `yaml:"secret"`
	ConfigMap *struct {
		Name  string      `yaml:"name"`
		Items []keyToPath `yaml:"items"`
	} `yaml:"configMap"`
	EmptyDir *struct {
		Medium string `yaml:"medium"`
	} `yaml:"emptyDir"`
}

type keyToPath struct {
	Key  string `yaml:"key"`
	Path string `yaml:"path"`
	Mode *int   `yaml:"mode"`
}

type volumeMount struct {
	Name      string `yaml:"name"`
	MountPath string `yaml:"mountPath"`
	SubPath   string `yaml:"subPath"`
	ReadOnly  bool   `yaml:"readOnly"`
}

type envVar struct {
	Name      string  `yaml:"name"`
	Value     *string `yaml:"value"`
	ValueFrom *struct {
		SecretKeyRef *struct {
			Name string `yaml:"name"`
			Key  string `yaml:"key"`
		} `yaml:"secretKeyRef"`
		FieldRef *struct {
			FieldPath string `yaml:"fieldPath"`
		} `yaml:"fieldRef"`
	} `yaml:"valueFrom"`
}

type container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []envVar `yaml:"env"`
	Ports   []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	ReadinessProbe *grpcProbe `yaml:"readinessProbe"`
	LivenessProbe  *grpcProbe `yaml:"livenessProbe"`
	Lifecycle      struct {
		PreStop struct {
			Sleep *struct {
				Seconds int `yaml:"seconds"`
			} `yaml:"sleep"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
	VolumeMounts []volumeMount `yaml:"volumeMounts"`
	Resources    struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext struct {
		RunAsUser                *int64 `yaml:"runAsUser"`
		AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   bool   `yaml:"readOnlyRootFilesystem"`
	} `yaml:"securityContext"`
}

type grpcProbe struct {
	GRPC *struct {
		Port    int    `yaml:"port"`
		Service string `yaml:"service"`
	} `yaml:"grpc"`
}

type serviceSpec struct {
	ClusterIP string            `yaml:"clusterIP"`
	Selector  map[string]string `yaml:"selector"`
	Ports     []struct {
		Name       string `yaml:"name"`
		Port       int    `yaml:"port"`
		TargetPort string `yaml:"targetPort"` // a number or a container port's name
	} `yaml:"ports"`
}

type pdbSpec struct {
	MinAvailable int           `yaml:"minAvailable"`
	Selector     labelSelector `yaml:"selector"`
}

// authorizationPolicySpec is an Istio security.istio.io AuthorizationPolicy
// spec. Sources and operations are decoded as maps, so that a field the
// test does not expect (one that would narrow or widen a rule) is seen.
type authorizationPolicySpec struct {
	Selector labelSelector `yaml:"selector"`
	Action   string        `yaml:"action"`
	Rules    []struct {
		From []struct {
			Source map[string][]string `yaml:"source"`
		} `yaml:"from"`
		To []struct {
			Operation map[string][]string `yaml:"operation"`
		} `yaml:"to"`
		When []yaml.Node `yaml:"when"`
	} `yaml:"rules"`
}

type peerAuthenticationSpec struct {
	Selector labelSelector `yaml:"selector"`
	MTLS     struct {
		Mode string `yaml:"mode"`
	} `yaml:"mtls"`
	PortLevelMTLS map[int]struct {
		Mode string `yaml:"mode"`
	} `yaml:"portLevelMtls"`
}

// scrapeConfig is the part of a Prometheus scrape_configs file the test reads.
type scrapeConfig struct {
	ScrapeConfigs []struct {
		JobName        string `yaml:"job_name"`
		MetricsPath    string `yaml:"metrics_path"`
		RelabelConfigs []struct {
			SourceLabels []string `yaml:"source_labels"`
			Regex        string   `yaml:"regex"`
			Action       string   `yaml:"action"`
		} `yaml:"relabel_configs"`
	} `yaml:"scrape_configs"`
}

// deployKit is the parsed deployment kit.
type deployKit struct {
	raw         map[string]string      // file path relative to deployDir → text
	objects     map[string][]k8sObject // kind → objects
	statefulSet statefulSetSpec
	pod         podSpec
	container   container // stage4's
	// serve is the container's serve command line parsed as the binary
	// parses it (flags, then STAGE4_ literals for flags not given).
	serve *flag.FlagSet
	cfg   *serveFlags
}

func loadDeployKit(t *testing.T) *deployKit {
	t.Helper()
	k := &deployKit{raw: map[string]string{}, objects: map[string][]k8sObject{}}
	err := filepath.WalkDir(deployDir, func(file string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(file) != ".yaml" {
			return err
		}
		rel, err := filepath.Rel(deployDir, file)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		b, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		k.raw[rel] = string(b)
		dec := yaml.NewDecoder(strings.NewReader(string(b)))
		for {
			obj := k8sObject{file: rel}
			err := dec.Decode(&obj)
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err, "%s", rel)
			require.NotEmpty(t, obj.Kind, "%s: an object without kind", rel)
			k.objects[obj.Kind] = append(k.objects[obj.Kind], obj)
		}
		return nil
	})
	require.NoError(t, err)
	require.NotEmpty(t, k.raw)

	sets := k.objects["StatefulSet"]
	require.Len(t, sets, 1)
	require.NoError(t, sets[0].Spec.Decode(&k.statefulSet))
	k.pod = k.statefulSet.Template.Spec
	require.Len(t, k.pod.Containers, 1)
	k.container = k.pod.Containers[0]

	c := k.container
	require.Empty(t, c.Command, "the image's ENTRYPOINT runs stage4; args name the command")
	require.NotEmpty(t, c.Args)
	require.Equal(t, "serve", c.Args[0])
	k.serve, k.cfg = newServeFlags()
	k.serve.SetOutput(io.Discard)
	require.NoError(t, k.serve.Parse(c.Args[1:]), "container args %q", c.Args)
	require.Empty(t, k.serve.Args(), "serve takes no arguments")
	given := map[string]bool{}
	k.serve.Visit(func(f *flag.Flag) { given[f.Name] = true })
	byEnv := serveFlagsByEnv()
	for _, e := range c.Env {
		if !strings.HasPrefix(e.Name, envPrefix) {
			continue
		}
		name, ok := byEnv[e.Name]
		require.True(t, ok, "env %s names no flag of stage4 serve", e.Name)
		require.False(t, given[name], "env %s and --%s both set: the flag silently wins", e.Name, name)
		if e.Value != nil {
			require.NoError(t, k.serve.Set(name, *e.Value), "env %s", e.Name)
		}
	}
	return k
}

// serveFlagsByEnv maps each STAGE4_ variable to the serve flag it backs.
func serveFlagsByEnv() map[string]string {
	fs, _ := newServeFlags()
	m := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { m[envName(f.Name)] = f.Name })
	return m
}

// port returns the port of a host:port and fails for a loopback host, which
// nothing outside the pod or container could reach.
func port(t *testing.T, what, hostPort string) int {
	t.Helper()
	host, p, err := net.SplitHostPort(hostPort)
	require.NoError(t, err, "%s %q", what, hostPort)
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		t.Fatalf("%s %q listens on loopback only", what, hostPort)
	}
	n, err := strconv.Atoi(p)
	require.NoError(t, err, "%s %q", what, hostPort)
	return n
}

// containerPort is the number of the container port called name.
func (k *deployKit) containerPort(t *testing.T, name string) int {
	t.Helper()
	for _, p := range k.container.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("no container port named %q", name)
	return 0
}

// env returns stage4's environment variable name.
func (k *deployKit) env(t *testing.T, name string) envVar {
	t.Helper()
	for _, e := range k.container.Env {
		if e.Name == name {
			return e
		}
	}
	t.Fatalf("stage4's container does not set %s", name)
	return envVar{}
}

// literalEnv returns the literal value of stage4's environment variable name.
func (k *deployKit) literalEnv(t *testing.T, name string) string {
	t.Helper()
	e := k.env(t, name)
	require.NotNil(t, e.Value, "%s is a literal", name)
	return *e.Value
}

// volume returns the pod volume called name.
func (k *deployKit) volume(t *testing.T, name string) volume {
	t.Helper()
	for _, v := range k.pod.Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("no pod volume named %q", name)
	return volume{}
}

// mountOf returns c's volume mount under which file lies and file's path
// inside the volume.
func mountOf(t *testing.T, c container, file string) (volumeMount, string) {
	t.Helper()
	for _, m := range c.VolumeMounts {
		require.Empty(t, m.SubPath, "container %s: a subPath mount does not see a Secret's or ConfigMap's updates", c.Name)
		if rel, ok := strings.CutPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/"); ok {
			return m, rel
		}
	}
	t.Fatalf("container %s mounts no volume at %s", c.Name, path.Dir(file))
	return volumeMount{}, ""
}

// projectedKey returns the Secret or ConfigMap key that a volume with
// items shows at rel; without items every key shows under its own name.
func projectedKey(t *testing.T, items []keyToPath, rel string) string {
	t.Helper()
	if len(items) == 0 {
		return rel
	}
	for _, it := range items {
		if it.Path == rel {
			return it.Key
		}
	}
	t.Fatalf("the volume projects no key at %s", rel)
	return ""
}

// kubeBytes parses a Kubernetes memory quantity with a binary suffix.
func kubeBytes(t *testing.T, q string) int64 {
	t.Helper()
	return suffixedBytes(t, q, map[string]int64{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30})
}

// goBytes parses a GOMEMLIMIT value (runtime/debug's syntax, binary suffixes).
func goBytes(t *testing.T, v string) int64 {
	t.Helper()
	return suffixedBytes(t, v, map[string]int64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30})
}

func suffixedBytes(t *testing.T, v string, units map[string]int64) int64 {
	t.Helper()
	m := regexp.MustCompile(`^([0-9]+)([A-Za-z]*)$`).FindStringSubmatch(v)
	require.NotNil(t, m, "%q is not a number with a unit", v)
	unit, ok := units[m[2]]
	require.True(t, ok, "%q: the test reads the units %v", v, slices.Sorted(maps.Keys(units)))
	n, err := strconv.ParseInt(m[1], 10, 64)
	require.NoError(t, err)
	return n * unit
}

// subset fails unless every label of selector is in labels, with the same value.
func subset(t *testing.T, what string, selector, labels map[string]string) {
	t.Helper()
	require.NotEmpty(t, selector, "%s selects nothing in particular", what)
	for key, v := range selector {
		require.Equal(t, v, labels[key], "%s: selector %s", what, key)
	}
}

// kustomized returns the files that the kustomization in dir (relative to
// deployDir) includes, following directories that hold kustomizations.
func (k *deployKit) kustomized(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	for _, ks := range k.objects["Kustomization"] {
		if path.Dir(ks.file) != dir {
			continue
		}
		for _, r := range ks.Resources {
			p := path.Join(dir, r)
			if _, ok := k.raw[path.Join(p, "kustomization.yaml")]; ok {
				files = append(files, k.kustomized(t, p)...)
				continue
			}
			require.Contains(t, k.raw, p, "%s lists a file that is not there", ks.file)
			files = append(files, p)
		}
	}
	return files
}

func TestDeploymentKit(t *testing.T) {
	t.Parallel()
	k := loadDeployKit(t)
	c := k.container
	listenPort := port(t, "--listen", k.cfg.gateway.Listen)
	metricsPort := port(t, "--metrics-listen", k.cfg.gateway.MetricsListen)
	podLabels := k.statefulSet.Template.Metadata.Labels
	healthService := stage4v1.Stage4Service_ServiceDesc.ServiceName

	tests := []struct {
		name  string
		check func(t *testing.T)
	}{
		{"every --flag named in the manifests is a flag of serve", func(t *testing.T) {
			fs, _ := newServeFlags()
			for file, text := range k.raw {
				for _, m := range regexp.MustCompile(`--([a-z][a-z0-9-]*)`).FindAllStringSubmatch(text, -1) {
					require.NotNil(t, fs.Lookup(m[1]), "%s: --%s is not a flag of stage4 serve", file, m[1])
				}
			}
		}},
		{"every STAGE4_ variable named in the manifests backs a flag of serve", func(t *testing.T) {
			byEnv := serveFlagsByEnv()
			for file, text := range k.raw {
				for _, name := range regexp.MustCompile(`STAGE4_[A-Z0-9_]+`).FindAllString(text, -1) {
					require.Contains(t, byEnv, name, "%s: %s backs no flag of stage4 serve", file, name)
				}
			}
		}},
		{"two replicas on the audit store from a Secret", func(t *testing.T) {
			require.Equal(t, 2, k.statefulSet.Replicas)
			require.Equal(t, defaultAuditLog, k.cfg.gateway.AuditLog, "the store is not set by a literal")
			e := k.env(t, envName("audit-log"))
			require.Nil(t, e.Value)
			require.NotNil(t, e.ValueFrom)
			require.NotNil(t, e.ValueFrom.SecretKeyRef, "the store's URL holds a password: it comes from a Secret")
			require.NotEmpty(t, e.ValueFrom.SecretKeyRef.Name)
			require.NotEmpty(t, e.ValueFrom.SecretKeyRef.Key)
		}},
		{"replica names are stable: a StatefulSet's pod names", func(t *testing.T) {
			require.Empty(t, k.objects["Deployment"], "a Deployment's replacement pod has a new name, so the executions "+
				"of the pod it replaces wait for another replica's sweep")
			require.Empty(t, k.cfg.gateway.AuditStore.ReplicaName, "no literal --replica-name: every replica would share it")
			name := envName("replica-name")
			for _, e := range c.Env {
				if e.Name == name {
					// Else the default, the host name, which is the pod name.
					require.NotNil(t, e.ValueFrom, "%s", name)
					require.NotNil(t, e.ValueFrom.FieldRef, "%s comes from the pod", name)
					require.Equal(t, "metadata.name", e.ValueFrom.FieldRef.FieldPath, "%s", name)
				}
			}
			require.Equal(t, "Parallel", k.statefulSet.PodManagementPolicy,
				"the replicas do not depend on one another: one that cannot reach the database must not hold back the other's start")
			var governing bool
			for _, svc := range k.objects["Service"] {
				if svc.Metadata.Name == k.statefulSet.ServiceName {
					var spec serviceSpec
					require.NoError(t, svc.Spec.Decode(&spec))
					require.Equal(t, "None", spec.ClusterIP, "the governing Service is headless")
					governing = true
				}
			}
			require.True(t, governing, "serviceName %q names a Service of the kit", k.statefulSet.ServiceName)
		}},
		{"the checkpoint signing key reaches --audit-signing-key from a Secret, in a mode serve accepts", func(t *testing.T) {
			require.Len(t, k.cfg.gateway.AuditSigningKeyFiles, 1, "one --audit-signing-key")
			keyFile := k.cfg.gateway.AuditSigningKeyFiles[0]
			require.NotEmpty(t, keyFile, "without --audit-signing-key no checkpoint is signed")
			m, rel := mountOf(t, c, keyFile)
			require.True(t, m.ReadOnly, "stage4 mounts the key read-only")
			secret := k.volume(t, m.Name).Secret
			require.NotNil(t, secret, "the key comes from a Secret volume (memory-backed)")
			require.NotEmpty(t, secret.SecretName)
			require.NotEmpty(t, projectedKey(t, secret.Items, rel))
			require.Empty(t, k.pod.InitContainers, "no image but stage4's is needed")
			fsGroup := k.pod.SecurityContext.FSGroup
			require.NotNil(t, fsGroup, "without fsGroup the Secret's file is root's alone: 65532 cannot read it")
			require.Equal(t, *k.pod.SecurityContext.RunAsGroup, *fsGroup, "serve's group is the file's")
			require.Nil(t, c.SecurityContext.RunAsUser)
			secretMode := 0o644 // the API server's default
			if secret.DefaultMode != nil {
				secretMode = *secret.DefaultMode
			}
			secretMode |= 0o440 // what the kubelet does to it under fsGroup
			require.Zero(t, secretMode&0o007, "nobody outside the group reads the key")

			// The binary's own check, on the file as the kubelet writes it
			// (root's, group fsGroup) and, refused, the same mode on a
			// file root does not own.
			if os.Geteuid() != 0 {
				t.Skip("making a file root's needs root; CI runs as root")
			}
			skey, _, err := note.GenerateKey(rand.Reader, "stage4.example.com/audit")
			require.NoError(t, err)
			file := filepath.Join(t.TempDir(), path.Base(keyFile))
			require.NoError(t, os.WriteFile(file, []byte(skey+"\n"), 0o600))
			require.NoError(t, os.Chown(file, 0, int(*fsGroup)))
			require.NoError(t, os.Chmod(file, os.FileMode(secretMode)))
			_, err = gateway.LoadSigningKey(file)
			require.NoError(t, err, "serve refuses the Secret's file as the kubelet writes it (root:%d, mode %04o)", *fsGroup, secretMode)
			require.NoError(t, os.Chown(file, int(*k.pod.SecurityContext.RunAsUser), int(*fsGroup)))
			_, err = gateway.LoadSigningKey(file)
			require.Error(t, err, "serve accepts a group-readable key that root does not own")
		}},
		{"someone may read the audit log: the mesh decides", func(t *testing.T) {
			readers := k.cfg.gateway.AuditReaders
			// Identities need serve to terminate mTLS itself, which the
			// sidecar does instead here; a kit that names identities needs
			// its own check of --tls-client-ca-file and the certificates.
			require.True(t, readers.AllowsAnyone(), "--audit-readers: * behind the mesh, or nobody may read the audit log")
			require.Equal(t, "true", podLabels["sidecar.istio.io/inject"], "* trusts a sidecar that every pod must have")
			require.Subset(t, k.kustomized(t, "."), []string{"istio/authorizationpolicy.yaml", "istio/peerauthentication.yaml"},
				"the policies that * relies on are applied with the StatefulSet")
		}},
		{"Istio denies the audit-reading RPCs to all but the auditor, and requires mTLS", func(t *testing.T) {
			aps := k.objects["AuthorizationPolicy"]
			require.Len(t, aps, 1)
			var ap authorizationPolicySpec
			require.NoError(t, aps[0].Spec.Decode(&ap))
			subset(t, "AuthorizationPolicy", ap.Selector.MatchLabels, podLabels)
			require.Equal(t, "DENY", ap.Action, "DENY, which no ALLOW policy can override")
			require.Len(t, ap.Rules, 1)
			r := ap.Rules[0]
			require.Empty(t, r.When, "no condition narrows the rule")
			require.Len(t, r.To, 1)
			require.Equal(t, []string{"paths"}, slices.Sorted(maps.Keys(r.To[0].Operation)), "the rule applies by path alone")
			require.ElementsMatch(t, authz.AuditReadMethods, r.To[0].Operation["paths"], "exactly the RPCs that read the audit log")
			require.Len(t, r.From, 1)
			require.Equal(t, []string{"notPrincipals"}, slices.Sorted(maps.Keys(r.From[0].Source)),
				"denied to every caller but the named identities, plaintext callers (no principal) included")
			principals := r.From[0].Source["notPrincipals"]
			require.NotEmpty(t, principals)
			for _, p := range principals {
				require.Regexp(t, `^[a-z0-9.-]+/ns/[a-z0-9-]+/sa/[a-z0-9.-]+$`, p, "an Istio principal: trust domain/ns/NS/sa/SA")
			}

			pas := k.objects["PeerAuthentication"]
			require.Len(t, pas, 1)
			var pa peerAuthenticationSpec
			require.NoError(t, pas[0].Spec.Decode(&pa))
			subset(t, "PeerAuthentication", pa.Selector.MatchLabels, podLabels)
			require.Equal(t, "STRICT", pa.MTLS.Mode)
			if p, ok := pa.PortLevelMTLS[listenPort]; ok {
				require.Equal(t, "STRICT", p.Mode, "the gRPC port")
			}
		}},
		{"the database's CA is mounted where PGSSLROOTCERT points", func(t *testing.T) {
			require.Equal(t, "verify-full", k.literalEnv(t, "PGSSLMODE"), "the database's certificate and name are checked")
			ca := k.literalEnv(t, "PGSSLROOTCERT")
			m, rel := mountOf(t, c, ca)
			require.True(t, m.ReadOnly)
			v := k.volume(t, m.Name)
			switch {
			case v.ConfigMap != nil:
				require.NotEmpty(t, v.ConfigMap.Name)
				require.NotEmpty(t, projectedKey(t, v.ConfigMap.Items, rel))
			case v.Secret != nil:
				require.NotEmpty(t, v.Secret.SecretName)
				require.NotEmpty(t, projectedKey(t, v.Secret.Items, rel))
			default:
				t.Fatalf("PGSSLROOTCERT %s: volume %s is neither a ConfigMap nor a Secret", ca, v.Name)
			}
		}},
		{"the memory limit holds the in-flight budget's worst case", func(t *testing.T) {
			limit := kubeBytes(t, c.Resources.Limits["memory"])
			require.Equal(t, limit, kubeBytes(t, c.Resources.Requests["memory"]), "a burst finds the memory it was promised")
			goLimit := goBytes(t, k.literalEnv(t, "GOMEMLIMIT"))
			largest := int64(k.cfg.gateway.MaxMessageBytes)
			budget := k.cfg.gateway.MaxInflightRequestBytes
			if budget == 0 {
				budget = gateway.InflightRequestsPerBudget * largest
			}
			held := budget / largest // largest-size requests at once
			worst := restingBytes + held*largest*(1+decodedBytesPerEncodedByte)
			require.LessOrEqual(t, worst, goLimit, "%d requests of %d bytes live at once exceed GOMEMLIMIT", held, largest)
			require.LessOrEqual(t, goLimit*100, limit*goMemLimitPercentOfLimit, "GOMEMLIMIT leaves too little of the limit")
		}},
		{"probes call the health service on the --listen port", func(t *testing.T) {
			require.Equal(t, listenPort, k.containerPort(t, "grpc"))
			require.NotNil(t, c.ReadinessProbe)
			require.NotNil(t, c.ReadinessProbe.GRPC, "a native gRPC readiness probe")
			require.Equal(t, listenPort, c.ReadinessProbe.GRPC.Port)
			require.Equal(t, healthService, c.ReadinessProbe.GRPC.Service)
			require.NotNil(t, c.LivenessProbe)
			require.NotNil(t, c.LivenessProbe.GRPC, "a native gRPC liveness probe")
			require.Equal(t, listenPort, c.LivenessProbe.GRPC.Port)
			require.Equal(t, gateway.LivenessService, c.LivenessProbe.GRPC.Service,
				"on PostgreSQL a restart cannot bring the database back: liveness must not follow the audit store")
		}},
		{"the Services select the pods and target the --listen port", func(t *testing.T) {
			services := k.objects["Service"]
			require.Len(t, services, 2, "one for clients, one headless for the StatefulSet")
			for _, svc := range services {
				var spec serviceSpec
				require.NoError(t, svc.Spec.Decode(&spec))
				subset(t, "Service "+svc.Metadata.Name, spec.Selector, podLabels)
				require.Len(t, spec.Ports, 1)
				target, err := strconv.Atoi(spec.Ports[0].TargetPort)
				if err != nil {
					target = k.containerPort(t, spec.Ports[0].TargetPort)
				}
				require.Equal(t, listenPort, target)
			}
		}},
		{"Prometheus scrapes the --metrics-listen port", func(t *testing.T) {
			require.Equal(t, metricsPort, k.containerPort(t, "metrics"))
			var cfgs []scrapeConfig
			for _, cm := range k.objects["ConfigMap"] {
				for key, text := range cm.Data {
					var sc scrapeConfig
					require.NoError(t, yaml.Unmarshal([]byte(text), &sc), "ConfigMap %s key %s", cm.Metadata.Name, key)
					cfgs = append(cfgs, sc)
				}
			}
			require.Len(t, cfgs, 1)
			require.Len(t, cfgs[0].ScrapeConfigs, 1)
			job := cfgs[0].ScrapeConfigs[0]
			require.Equal(t, "/metrics", job.MetricsPath, "the path serveMetrics serves")
			keep := map[string]string{}
			for _, r := range job.RelabelConfigs {
				if r.Action == "keep" && len(r.SourceLabels) == 1 {
					keep[r.SourceLabels[0]] = r.Regex
				}
			}
			require.Equal(t, metricsPort, k.containerPort(t, keep["__meta_kubernetes_pod_container_port_name"]))
			require.Equal(t, podLabels["app.kubernetes.io/name"], keep["__meta_kubernetes_pod_label_app_kubernetes_io_name"])
		}},
		{"the kubelet waits longer than preStop and --shutdown-grace", func(t *testing.T) {
			wait := k.cfg.gateway.ShutdownGrace
			if s := c.Lifecycle.PreStop.Sleep; s != nil {
				wait += time.Duration(s.Seconds) * time.Second
			}
			tgps := time.Duration(k.pod.TerminationGracePeriodSeconds) * time.Second
			require.Greater(t, tgps, wait, "terminationGracePeriodSeconds")
		}},
		{"non-root, read-only, with resources", func(t *testing.T) {
			sc := k.pod.SecurityContext
			require.True(t, sc.RunAsNonRoot)
			require.NotNil(t, sc.RunAsUser)
			require.NotZero(t, *sc.RunAsUser)
			for _, ct := range slices.Concat(k.pod.InitContainers, k.pod.Containers) {
				require.True(t, ct.SecurityContext.ReadOnlyRootFilesystem, "container %s", ct.Name)
				require.NotNil(t, ct.SecurityContext.AllowPrivilegeEscalation, "container %s", ct.Name)
				require.False(t, *ct.SecurityContext.AllowPrivilegeEscalation, "container %s", ct.Name)
				require.NotEmpty(t, ct.Resources.Requests["cpu"], "container %s", ct.Name)
				require.NotEmpty(t, ct.Resources.Requests["memory"], "container %s", ct.Name)
				require.NotEmpty(t, ct.Resources.Limits["memory"], "container %s", ct.Name)
			}
		}},
		{"the disruption budget keeps a replica", func(t *testing.T) {
			pdbs := k.objects["PodDisruptionBudget"]
			require.Len(t, pdbs, 1)
			var spec pdbSpec
			require.NoError(t, pdbs[0].Spec.Decode(&spec))
			require.Equal(t, k.statefulSet.Selector.MatchLabels, spec.Selector.MatchLabels)
			require.GreaterOrEqual(t, spec.MinAvailable, 1)
			require.Less(t, spec.MinAvailable, k.statefulSet.Replicas, "a drain must be able to proceed")
		}},
		{"the kustomization includes every manifest", func(t *testing.T) {
			var want []string
			for file := range k.raw {
				if path.Base(file) != "kustomization.yaml" {
					want = append(want, file)
				}
			}
			require.ElementsMatch(t, want, k.kustomized(t, "."))
		}},
		{"the README's Deployment section says what the manifests do", func(t *testing.T) {
			text := readmeSection(t, "## Deployment")
			secretName := func(v volume) string {
				if v.Secret != nil {
					return v.Secret.SecretName
				}
				if v.ConfigMap != nil {
					return v.ConfigMap.Name
				}
				return ""
			}
			want := []string{
				k.env(t, envName("audit-log")).ValueFrom.SecretKeyRef.Name,
				c.Resources.Limits["memory"],
				"GOMEMLIMIT=" + k.literalEnv(t, "GOMEMLIMIT"),
				"--max-inflight-request-bytes=" + strconv.FormatInt(k.cfg.gateway.MaxInflightRequestBytes, 10),
				"--max-message-bytes=" + strconv.Itoa(k.cfg.gateway.MaxMessageBytes),
				"terminationGracePeriodSeconds` (" + strconv.Itoa(k.pod.TerminationGracePeriodSeconds) + ")",
				"deploy/kubernetes/istio/",
			}
			for _, v := range k.pod.Volumes {
				if n := secretName(v); n != "" {
					want = append(want, n)
				}
			}
			for _, w := range want {
				require.Contains(t, text, w, "README's Deployment section")
			}
			require.NotContains(t, text, "Deployment of", "the kit holds a StatefulSet")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.check(t)
		})
	}
}

// readmeSection returns the README's section under heading, up to the next
// heading of the same level.
func readmeSection(t *testing.T, heading string) string {
	t.Helper()
	b, err := os.ReadFile(readme)
	require.NoError(t, err)
	_, rest, ok := strings.Cut(string(b), "\n"+heading+"\n")
	require.True(t, ok, "README has no %q", heading)
	level := heading[:strings.Index(heading, " ")+1]
	if i := strings.Index(rest, "\n"+level); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

func TestDockerfile(t *testing.T) {
	t.Parallel()
	instrs := testkit.DockerfileInstructions(t, dockerfile)
	raw, err := os.ReadFile(dockerfile)
	require.NoError(t, err)

	env := map[string]string{}
	var entrypoint, cmd []string
	var exposed []int
	var stages int
	for _, in := range instrs {
		switch in.Op {
		case "FROM":
			stages++
		case "ENV":
			for _, kv := range strings.Fields(in.Args) {
				k, v, ok := strings.Cut(kv, "=")
				require.True(t, ok, "ENV %s: write key=value", in.Args)
				env[k] = v
			}
		case "ENTRYPOINT":
			require.NoError(t, json.Unmarshal([]byte(in.Args), &entrypoint), "ENTRYPOINT in exec form")
		case "CMD":
			require.NoError(t, json.Unmarshal([]byte(in.Args), &cmd), "CMD in exec form")
		case "EXPOSE":
			for _, p := range strings.Fields(in.Args) {
				n, err := strconv.Atoi(strings.TrimSuffix(p, "/tcp"))
				require.NoError(t, err)
				exposed = append(exposed, n)
			}
		}
	}
	require.GreaterOrEqual(t, stages, 2, "multi-stage: the Go toolchain stays out of the image")
	require.Equal(t, []string{"/stage4"}, entrypoint)
	require.NotEmpty(t, cmd)
	fs, ok := commandFlagSets()[cmd[0]]
	require.True(t, ok, "CMD runs stage4 %q, which is not a command", cmd[0])
	fs.SetOutput(io.Discard)
	require.NoError(t, fs.Parse(cmd[1:]))

	byEnv := serveFlagsByEnv()
	for _, name := range regexp.MustCompile(`STAGE4_[A-Z0-9_]+`).FindAllString(string(raw), -1) {
		require.Contains(t, byEnv, name, "%s backs no flag of stage4 serve", name)
	}
	serve, cfg := newServeFlags()
	for name, v := range env {
		if flagName, ok := byEnv[name]; ok {
			require.NoError(t, serve.Set(flagName, v), "ENV %s", name)
		}
	}
	// The image's serve must listen where it says it does, and not on
	// loopback, which nothing outside the container reaches.
	want := []int{port(t, "--listen", cfg.gateway.Listen), port(t, "--metrics-listen", cfg.gateway.MetricsListen)}
	slices.Sort(want)
	slices.Sort(exposed)
	require.Equal(t, want, exposed, "EXPOSE")
}
