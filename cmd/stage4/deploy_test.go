package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/gateway"
)

// The deployment kit cannot run here (no container engine, no cluster), so
// TestDeploymentKit checks what it names against the binary instead: every
// flag and STAGE4_ variable exists and parses, and every port, probe and
// grace period agrees with the flags given to serve.

const (
	deployDir  = "../../deploy/kubernetes"
	dockerfile = "../../Dockerfile"
)

// k8sObject is the part of a Kubernetes object the test reads; spec is
// decoded by kind.
type k8sObject struct {
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

type deploymentSpec struct {
	Replicas int           `yaml:"replicas"`
	Selector labelSelector `yaml:"selector"`
	Template struct {
		Metadata struct {
			Labels map[string]string `yaml:"labels"`
		} `yaml:"metadata"`
		Spec struct {
			TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
			SecurityContext               struct {
				RunAsNonRoot bool `yaml:"runAsNonRoot"`
			} `yaml:"securityContext"`
			Containers []container `yaml:"containers"`
		} `yaml:"spec"`
	} `yaml:"template"`
}

type container struct {
	Name    string   `yaml:"name"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []struct {
		Name      string  `yaml:"name"`
		Value     *string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
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
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext struct {
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem"`
	} `yaml:"securityContext"`
}

type grpcProbe struct {
	GRPC *struct {
		Port    int    `yaml:"port"`
		Service string `yaml:"service"`
	} `yaml:"grpc"`
}

type serviceSpec struct {
	Selector map[string]string `yaml:"selector"`
	Ports    []struct {
		Name       string `yaml:"name"`
		Port       int    `yaml:"port"`
		TargetPort string `yaml:"targetPort"` // a number or a container port's name
	} `yaml:"ports"`
}

type pdbSpec struct {
	MinAvailable int           `yaml:"minAvailable"`
	Selector     labelSelector `yaml:"selector"`
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
	raw        map[string]string      // file name → text, manifests only
	objects    map[string][]k8sObject // kind → objects
	deployment deploymentSpec
	container  container
	// serve is the container's serve command line parsed as the binary
	// parses it (flags, then STAGE4_ literals for flags not given).
	serve *flag.FlagSet
	cfg   *serveFlags
}

func loadDeployKit(t *testing.T) *deployKit {
	t.Helper()
	k := &deployKit{raw: map[string]string{}, objects: map[string][]k8sObject{}}
	files, err := filepath.Glob(filepath.Join(deployDir, "*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, file := range files {
		b, err := os.ReadFile(file)
		require.NoError(t, err)
		k.raw[filepath.Base(file)] = string(b)
		dec := yaml.NewDecoder(strings.NewReader(string(b)))
		for {
			var obj k8sObject
			err := dec.Decode(&obj)
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err, "%s", file)
			require.NotEmpty(t, obj.Kind, "%s: an object without kind", file)
			k.objects[obj.Kind] = append(k.objects[obj.Kind], obj)
		}
	}

	deployments := k.objects["Deployment"]
	require.Len(t, deployments, 1)
	require.NoError(t, deployments[0].Spec.Decode(&k.deployment))
	require.Len(t, k.deployment.Template.Spec.Containers, 1)
	k.container = k.deployment.Template.Spec.Containers[0]

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

func TestDeploymentKit(t *testing.T) {
	t.Parallel()
	k := loadDeployKit(t)
	c := k.container
	listenPort := port(t, "--listen", k.cfg.gateway.Listen)
	metricsPort := port(t, "--metrics-listen", k.cfg.gateway.MetricsListen)
	podLabels := k.deployment.Template.Metadata.Labels
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
			require.Equal(t, 2, k.deployment.Replicas)
			require.Equal(t, defaultAuditLog, k.cfg.gateway.AuditLog, "the store is not set by a literal")
			var found bool
			for _, e := range c.Env {
				if e.Name == envName("audit-log") {
					found = true
					require.Nil(t, e.Value)
					require.NotNil(t, e.ValueFrom)
					require.NotNil(t, e.ValueFrom.SecretKeyRef, "the store's URL holds a password: it comes from a Secret")
					require.NotEmpty(t, e.ValueFrom.SecretKeyRef.Name)
					require.NotEmpty(t, e.ValueFrom.SecretKeyRef.Key)
				}
			}
			require.True(t, found, "%s is set", envName("audit-log"))
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
		{"the Service selects the pods and targets the --listen port", func(t *testing.T) {
			services := k.objects["Service"]
			require.Len(t, services, 1)
			var spec serviceSpec
			require.NoError(t, services[0].Spec.Decode(&spec))
			require.NotEmpty(t, spec.Selector)
			for key, v := range spec.Selector {
				require.Equal(t, v, podLabels[key], "selector %s", key)
			}
			require.Len(t, spec.Ports, 1)
			target, err := strconv.Atoi(spec.Ports[0].TargetPort)
			if err != nil {
				target = k.containerPort(t, spec.Ports[0].TargetPort)
			}
			require.Equal(t, listenPort, target)
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
			tgps := time.Duration(k.deployment.Template.Spec.TerminationGracePeriodSeconds) * time.Second
			require.Greater(t, tgps, wait, "terminationGracePeriodSeconds")
		}},
		{"non-root, read-only, with resources", func(t *testing.T) {
			require.True(t, k.deployment.Template.Spec.SecurityContext.RunAsNonRoot)
			require.True(t, c.SecurityContext.ReadOnlyRootFilesystem)
			require.NotNil(t, c.SecurityContext.AllowPrivilegeEscalation)
			require.False(t, *c.SecurityContext.AllowPrivilegeEscalation)
			require.NotEmpty(t, c.Resources.Requests["cpu"])
			require.NotEmpty(t, c.Resources.Requests["memory"])
			require.NotEmpty(t, c.Resources.Limits["memory"])
		}},
		{"the disruption budget keeps a replica", func(t *testing.T) {
			pdbs := k.objects["PodDisruptionBudget"]
			require.Len(t, pdbs, 1)
			var spec pdbSpec
			require.NoError(t, pdbs[0].Spec.Decode(&spec))
			require.Equal(t, k.deployment.Selector.MatchLabels, spec.Selector.MatchLabels)
			require.GreaterOrEqual(t, spec.MinAvailable, 1)
			require.Less(t, spec.MinAvailable, k.deployment.Replicas, "a drain must be able to proceed")
		}},
		{"the kustomization lists every manifest", func(t *testing.T) {
			ks := k.objects["Kustomization"]
			require.Len(t, ks, 1)
			var want []string
			for file := range k.raw {
				if file != "kustomization.yaml" {
					want = append(want, file)
				}
			}
			require.ElementsMatch(t, want, ks[0].Resources)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.check(t)
		})
	}
}

// dockerInstruction is one instruction of the Dockerfile, continuation
// lines joined.
type dockerInstruction struct {
	op   string // upper case: FROM, ENV, CMD, ...
	args string
}

func readDockerfile(t *testing.T) []dockerInstruction {
	t.Helper()
	f, err := os.Open(dockerfile)
	require.NoError(t, err)
	defer f.Close()
	var out []dockerInstruction
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
		out = append(out, dockerInstruction{op: strings.ToUpper(op), args: strings.TrimSpace(args)})
		cur.Reset()
	}
	require.NoError(t, sc.Err())
	return out
}

func TestDockerfile(t *testing.T) {
	t.Parallel()
	instrs := readDockerfile(t)
	raw, err := os.ReadFile(dockerfile)
	require.NoError(t, err)

	env := map[string]string{}
	var entrypoint, cmd []string
	var exposed []int
	var stages int
	for _, in := range instrs {
		switch in.op {
		case "FROM":
			stages++
		case "ENV":
			for _, kv := range strings.Fields(in.args) {
				k, v, ok := strings.Cut(kv, "=")
				require.True(t, ok, "ENV %s: write key=value", in.args)
				env[k] = v
			}
		case "ENTRYPOINT":
			require.NoError(t, json.Unmarshal([]byte(in.args), &entrypoint), "ENTRYPOINT in exec form")
		case "CMD":
			require.NoError(t, json.Unmarshal([]byte(in.args), &cmd), "CMD in exec form")
		case "EXPOSE":
			for _, p := range strings.Fields(in.args) {
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
