package audit

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/credentials"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// gatedFile holds every Sync until release is closed, so a test can queue
// appends behind an fsync in progress; Sync then fails with syncErr.
type gatedFile struct {
	File
	inSync  chan struct{}
	release chan struct{}
	syncErr error
	writes  atomic.Int32
	once    sync.Once
}

func (g *gatedFile) Write(p []byte) (int, error) {
	g.writes.Add(1)
	return g.File.Write(p)
}

func (g *gatedFile) Sync() error {
	g.once.Do(func() { close(g.inSync) })
	<-g.release
	if g.syncErr != nil {
		return g.syncErr
	}
	return g.File.Sync()
}

func TestGroupCommit(t *testing.T) {
	t.Parallel()
	errDisk := errors.New("disk gone")
	tests := []struct {
		name    string
		syncErr error
		writes  int32 // by the end
	}{
		{name: "queued appends share one write", writes: 2},
		{name: "queued appends fail with the batch before them", syncErr: errDisk, writes: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			g := &gatedFile{inSync: make(chan struct{}), release: make(chan struct{}), syncErr: tt.syncErr}
			lg, err := Open(filepath.Join(t.TempDir(), "audit.jsonl"), WithFileWrapper(func(f File) File { g.File = f; return g }))
			require.NoError(t, err)
			t.Cleanup(func() { lg.Close() })

			ev := &stage4v1.AuditEvent{Type: stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED, ExecutionId: "e"}
			var wg sync.WaitGroup
			appendOne := func() {
				if _, err := lg.Append(context.Background(), ev); !errors.Is(err, tt.syncErr) {
					t.Errorf("Append: %v, want %v", err, tt.syncErr)
				}
			}
			wg.Go(appendOne)
			<-g.inSync // the first batch is being fsynced
			const queued = 10
			for range queued {
				wg.Go(appendOne)
			}
			for len(lg.requests) < queued {
				runtime.Gosched()
			}
			close(g.release)
			wg.Wait()
			require.Equal(t, tt.writes, g.writes.Load())
			if tt.syncErr == nil {
				require.Equal(t, uint64(1+queued), lg.seq)
			}
		})
	}
}

func TestPeerIdentity(t *testing.T) {
	t.Parallel()
	spiffe, err := url.Parse("spiffe://example.org/ns/prod/sa/planner")
	require.NoError(t, err)
	chain := func(c *x509.Certificate) credentials.TLSInfo {
		return credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{c}}}}
	}
	tests := []struct {
		name string
		info credentials.AuthInfo
		want string
	}{
		{name: "no TLS", info: nil, want: ""},
		{name: "TLS without client certificate", info: credentials.TLSInfo{}, want: ""},
		{name: "URI SAN wins", info: chain(&x509.Certificate{URIs: []*url.URL{spiffe}, Subject: pkix.Name{CommonName: "planner"}}),
			want: "spiffe://example.org/ns/prod/sa/planner"},
		{name: "subject otherwise", info: chain(&x509.Certificate{Subject: pkix.Name{CommonName: "planner", Organization: []string{"Acme"}}}),
			want: "CN=planner,O=Acme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, peerIdentity(tt.info))
		})
	}
}

func TestBound(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		in            string
		chars         int
		want          string
		wantTruncated bool
	}{
		{name: "short", in: "abc", chars: 3, want: "abc"},
		{name: "cut by characters, not bytes", in: "ééééé", chars: 3, want: "ééé", wantTruncated: true},
		{name: "invalid UTF-8 replaced", in: "a\xffb", chars: 10, want: "a\uFFFDb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var b bounder
			require.Equal(t, tt.want, b.bound(tt.in, tt.chars))
			require.Equal(t, tt.wantTruncated, b.truncated)
		})
	}
}
