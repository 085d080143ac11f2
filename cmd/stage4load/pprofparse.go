package main

import (
	"errors"
	"regexp"

	"github.com/google/pprof/profile"
)

// component is a part of a gateway's work, recognised by the functions on
// a sample's stack.
type component struct {
	name  string
	match *regexp.Regexp
}

// components attribute each CPU sample to the first of them that any
// function on its stack matches, so that the order decides which part owns
// shared work: stack growth and the collector first (they happen inside
// everything), then stage4's own parts, then what the bare proxy does too.
var components = []component{
	{"stack growth", regexp.MustCompile(`^runtime\.(newstack|morestack|copystack)`)},
	{"garbage collection", regexp.MustCompile(`^runtime\.(gcBgMarkWorker|bgsweep|gcAssistAlloc|gcStart|bgscavenge)`)},
	{"OpenTelemetry (otelgrpc)", regexp.MustCompile(`otelgrpc|^go\.opentelemetry\.io/otel`)},
	{"trace context (propagator)", regexp.MustCompile(`internal/telemetry\.`)},
	{"validation", regexp.MustCompile(`protovalidate|/server\.(validateWith|Validate)$`)},
	{"plan_id and fingerprints", regexp.MustCompile(`/server\.\(\*Fingerprinter\)`)},
	{"audit event details", regexp.MustCompile(`/server\.(\(\*interceptorConfig\)\.)?(receivedDetails|stage3FailedDetails|failedDetails|validationFailedDetails)|types/known/structpb\.`)},
	{"audit record encoding", regexp.MustCompile(`/audit\.(encodeFields|\(\*encoder\))`)},
	// The writer goroutine, and the store's disk worker it hands each
	// batch's writes and syncs to (segstore), or a database's.
	{"audit writer (encode, hash, write, fsync)", regexp.MustCompile(`/audit\.\(\*writer\)\.run|/segstore\.\(\*worker\)\.loop|/audit/pgstore\.`)},
	{"audit append and wait", regexp.MustCompile(`/audit\.\(\*(Log|writer)\)\.(append|Append|AppendUnsynced)`)},
	// The call log's own work, not go-grpc-middleware's interceptor, whose
	// frame is under everything the call does.
	{"call log", regexp.MustCompile(`interceptors/logging\.(\(\*reporter\)|Fields\.|ExtractFields|InjectFields|DurationToTimeMillisFields|newCommonFields|UnaryServerInterceptor\.reportable|LoggerFunc)|interceptors\.CommonReportableFunc|gateway\.(GRPCLogger|traceFields)|^log/slog\.`)},
	{"metrics (gRPC, Prometheus)", regexp.MustCompile(`providers/prometheus\.\(\*report|interceptors\.New(Server|Client)CallMeta|prometheus/client_golang`)},
	// The guard's own work, not its interceptor, under which the handler
	// runs, nor its Read, under which the socket is read.
	{"HTTP/2 guard", regexp.MustCompile(`internal/h2guard\.(\(\*Conn\)\.(consume|written|tap|peek|ended|responded)|\(\*Stream\)\.Wait|\(\*Guard\)\.tapHandle)`)},
	// Not the call's decode, under which its request is decoded.
	{"in-flight budget", regexp.MustCompile(`internal/inflight\.(requestSize|\(\*Limiter\)\.|\(\*call\)\.(admit|end))`)},
	{"request and response decoding", regexp.MustCompile(`protobuf/proto\.Unmarshal|codecV2\)\.Unmarshal`)},
	{"request and response encoding", regexp.MustCompile(`protobuf/proto\.(MarshalOptions|Size)|codecV2\)\.Marshal`)},
	{"contexts", regexp.MustCompile(`^context\.(WithCancel|AfterFunc|WithValue|WithoutCancel|WithTimeout|WithDeadline)`)},
	{"the Stage-3 call (rest)", regexp.MustCompile(`stage3client\.|stage3ServiceClient|ClientConn\)\.Invoke|http2Client|NewHTTP2Client`)},
	{"audit interceptor (rest)", regexp.MustCompile(`/server\.(\(\*interceptorConfig\)\.execute|AuditInterceptor)`)},
	{"gRPC server (rest)", regexp.MustCompile(`grpc\.\(\*Server\)|transport\.\(\*http2Server\)|transport\.NewServerTransport|loopyWriter`)},
}

// breakdown is the CPU per request of each component in p, a CPU profile
// taken while the gateway served requests calls, in µs, in the order of
// components, then "other"; and their total.
func breakdown(p *profile.Profile, requests int) (perComponent []float64, total float64, err error) {
	cpu, err := p.SampleIndexByName("cpu")
	if err != nil || p.SampleType[cpu].Unit != "nanoseconds" {
		return nil, 0, errors.New("not a CPU profile: no cpu/nanoseconds sample type")
	}
	perComponent = make([]float64, len(components)+1)
	if requests <= 0 {
		return perComponent, 0, nil
	}
	// The first component that any function on a stack matches is the
	// first that its own functions match, the least of them; each function
	// is matched once.
	first := map[*profile.Function]int{}
	componentOf := func(fn *profile.Function) int {
		if k, ok := first[fn]; ok {
			return k
		}
		k := len(components) // other
		for j, c := range components {
			if c.match.MatchString(fn.Name) {
				k = j
				break
			}
		}
		first[fn] = k
		return k
	}
	for _, s := range p.Sample {
		k := len(components)
		for _, loc := range s.Location {
			for _, line := range loc.Line {
				if line.Function != nil {
					k = min(k, componentOf(line.Function))
				}
			}
		}
		us := float64(s.Value[cpu]) / 1e3 / float64(requests)
		perComponent[k] += us
		total += us
	}
	return perComponent, total, nil
}

// componentNames names the entries of breakdown's perComponent.
func componentNames() []string {
	names := make([]string, 0, len(components)+1)
	for _, c := range components {
		names = append(names, c.name)
	}
	return append(names, "other")
}
