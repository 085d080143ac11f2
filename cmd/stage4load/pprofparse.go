package main

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"

	"google.golang.org/protobuf/encoding/protowire"
)

// cpuProfile is what the breakdown needs of a pprof CPU profile: the stacks
// of its samples, as function names from leaf to root, and their CPU time.
type cpuProfile struct {
	stacks [][]string
	nanos  []int64
}

// readCPUProfile reads a gzipped pprof profile (perftools.profiles.Profile,
// what runtime/pprof writes) with the protobuf wire reader: the load tool
// needs five of its fields, not a dependency on the pprof module.
func readCPUProfile(path string) (*cpuProfile, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("read profile %s: %w", path, err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("read profile %s: %w", path, err)
	}
	p, err := parseProfile(b)
	if err != nil {
		return nil, fmt.Errorf("read profile %s: %w", path, err)
	}
	return p, nil
}

type pbSample struct {
	locs   []uint64
	values []int64
}

func parseProfile(b []byte) (*cpuProfile, error) {
	var (
		samples     []pbSample
		sampleTypes [][2]int64 // type, unit: string table indexes
		locs        = map[uint64][]uint64{}
		funcs       = map[uint64]int64{}
		strs        []string
	)
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		switch num {
		case 1: // sample_type
			var vt [2]int64
			err := eachField(v, func(n protowire.Number, _ protowire.Type, _ []byte, x uint64) error {
				if n == 1 || n == 2 {
					vt[n-1] = int64(x)
				}
				return nil
			})
			sampleTypes = append(sampleTypes, vt)
			return err
		case 2: // sample
			var s pbSample
			err := eachField(v, func(n protowire.Number, t protowire.Type, raw []byte, x uint64) error {
				switch n {
				case 1:
					return appendVarints(&s.locs, t, raw, x)
				case 2:
					var vals []uint64
					if err := appendVarints(&vals, t, raw, x); err != nil {
						return err
					}
					for _, u := range vals {
						s.values = append(s.values, int64(u))
					}
				}
				return nil
			})
			samples = append(samples, s)
			return err
		case 4: // location
			var id uint64
			var fns []uint64
			err := eachField(v, func(n protowire.Number, _ protowire.Type, raw []byte, x uint64) error {
				switch n {
				case 1:
					id = x
				case 4: // line
					return eachField(raw, func(ln protowire.Number, _ protowire.Type, _ []byte, fx uint64) error {
						if ln == 1 {
							fns = append(fns, fx)
						}
						return nil
					})
				}
				return nil
			})
			locs[id] = fns
			return err
		case 5: // function
			var id uint64
			var name int64
			err := eachField(v, func(n protowire.Number, _ protowire.Type, _ []byte, x uint64) error {
				switch n {
				case 1:
					id = x
				case 2:
					name = int64(x)
				}
				return nil
			})
			funcs[id] = name
			return err
		case 6: // string_table
			strs = append(strs, string(v))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	str := func(i int64) string {
		if i >= 0 && int(i) < len(strs) {
			return strs[i]
		}
		return ""
	}
	cpu := -1
	for i, vt := range sampleTypes {
		if str(vt[0]) == "cpu" && str(vt[1]) == "nanoseconds" {
			cpu = i
		}
	}
	if cpu < 0 {
		return nil, errors.New("not a CPU profile: no cpu/nanoseconds sample type")
	}
	p := &cpuProfile{}
	for _, s := range samples {
		if cpu >= len(s.values) {
			return nil, errors.New("a sample without its cpu value")
		}
		var stack []string
		for _, l := range s.locs {
			for _, f := range locs[l] {
				stack = append(stack, str(funcs[f]))
			}
		}
		p.stacks = append(p.stacks, stack)
		p.nanos = append(p.nanos, s.values[cpu])
	}
	return p, nil
}

// eachField calls f for every field of the message b: for a varint field
// with its value in x, for a length-delimited one with its bytes in v.
func eachField(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch typ {
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := f(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}

// appendVarints appends a repeated varint field's value(s): one varint, or
// a packed run of them.
func appendVarints(dst *[]uint64, typ protowire.Type, raw []byte, x uint64) error {
	if typ == protowire.VarintType {
		*dst = append(*dst, x)
		return nil
	}
	for len(raw) > 0 {
		u, n := protowire.ConsumeVarint(raw)
		if n < 0 {
			return protowire.ParseError(n)
		}
		*dst = append(*dst, u)
		raw = raw[n:]
	}
	return nil
}

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
	{"audit writer (encode, hash, write, fsync)", regexp.MustCompile(`/audit\.\(\*Log\)\.run`)},
	{"audit append and wait", regexp.MustCompile(`/audit\.\(\*Log\)\.(append|Append|AppendUnsynced)`)},
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

// breakdown is the CPU per request of each component, in µs, in the order
// of components, then "other"; and the total.
func (p *cpuProfile) breakdown(requests int) (perComponent []float64, total float64) {
	perComponent = make([]float64, len(components)+1)
	if requests <= 0 {
		return perComponent, 0
	}
	for i, stack := range p.stacks {
		k := len(components) // other
	find:
		for j, c := range components {
			for _, fn := range stack {
				if c.match.MatchString(fn) {
					k = j
					break find
				}
			}
		}
		us := float64(p.nanos[i]) / 1e3 / float64(requests)
		perComponent[k] += us
		total += us
	}
	return perComponent, total
}
