package filestore_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/filestore"
)

// changes are what logrotate and careless operators do to a live log.
var changes = []struct {
	name   string
	change func(t *testing.T, path string)
	want   string // a regular expression the error matches
}{
	{name: "removed", want: `audit log .*audit\.jsonl was removed or renamed while in use`,
		change: func(t *testing.T, path string) { require.NoError(t, os.Remove(path)) }},
	{name: "renamed away", want: `was removed or renamed while in use`,
		change: func(t *testing.T, path string) { require.NoError(t, os.Rename(path, path+".1")) }},
	{name: "renamed and recreated (logrotate create)", want: `was replaced by another file while in use`,
		change: func(t *testing.T, path string) {
			require.NoError(t, os.Rename(path, path+".1"))
			require.NoError(t, os.WriteFile(path, nil, 0o600))
		}},
	{name: "replaced by a copy", want: `was replaced by another file while in use`,
		change: func(t *testing.T, path string) {
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(path+".new", data, 0o600))
			require.NoError(t, os.Rename(path+".new", path))
		}},
	{name: "truncated (logrotate copytruncate)", want: `was truncated to \d+ bytes \(expected \d+\) while in use`,
		change: func(t *testing.T, path string) {
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(path+".1", data, 0o600))
			require.NoError(t, os.Truncate(path, 0))
		}},
	{name: "appended to by another program", want: `grew to \d+ bytes \(expected \d+\)`,
		change: func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			require.NoError(t, err)
			_, err = f.WriteString("{}\n")
			require.NoError(t, err)
			require.NoError(t, f.Close())
		}},
}

// openQuietLog opens a log whose health monitor never pings on its own, so
// that only the test's calls change its health, and returns the health
// transitions it reports.
func openQuietLog(t *testing.T, path string, opts ...any) (*testLog, <-chan error) {
	t.Helper()
	health := make(chan error, 10)
	lg := openLog(t, path, append(opts,
		audit.WithPingInterval(time.Hour),
		audit.WithHealthFunc(func(err error) { health <- err }))...)
	return lg, health
}

func TestLogChangedUnderTheStoreFailsTheNextAppend(t *testing.T) {
	t.Parallel()
	for _, tt := range changes {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := logPath(t)
			lg, health := openQuietLog(t, path)
			mustAppend(t, lg, event(received, "e1", "u"), event(started, "e1", "u"))
			tt.change(t, path)

			_, err := lg.Append(context.Background(), event(completed, "e1", "u"))
			require.Error(t, err)
			require.Regexp(t, tt.want, err.Error())
			require.ErrorIs(t, err, audit.ErrDataLoss)
			require.ErrorIs(t, lg.Err(), audit.ErrUnavailable)
			require.Regexp(t, tt.want, (<-health).Error(), "the health callback hears what happened")

			for range 3 {
				_, err := lg.Append(context.Background(), event(received, "e2", "u"))
				require.Regexp(t, tt.want, err.Error(), "no later append is acknowledged")
				require.Regexp(t, tt.want, lg.AppendUnsynced(context.Background(), event(received, "e3", "u")).Error())
			}
			require.Regexp(t, tt.want, lg.store.Ping(context.Background()).Error(), "the failure is for good")
			require.Empty(t, health, "one transition only")
		})
	}
}

func TestPingNoticesALogChangedWithoutTraffic(t *testing.T) {
	t.Parallel()
	for _, tt := range changes {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := logPath(t)
			lg, _ := openQuietLog(t, path)
			mustAppend(t, lg, event(received, "e1", "u"), event(failed, "e1", "u"))
			require.NoError(t, lg.store.Ping(context.Background()))

			tt.change(t, path)
			err := lg.store.Ping(context.Background())
			require.Error(t, err)
			require.Regexp(t, tt.want, err.Error())
			require.ErrorIs(t, err, audit.ErrDataLoss)

			_, err = lg.Append(context.Background(), event(received, "e2", "u"))
			require.Regexp(t, tt.want, err.Error())
			require.Error(t, lg.Err())
		})
	}
}

func TestPingOfAnUntouchedLogIsHealthy(t *testing.T) {
	t.Parallel()
	path := logPath(t)
	lg, _ := openQuietLog(t, path, filestore.WithFileWrapper(func(f filestore.File) filestore.File { return noSyncFile{f} }))
	require.NoError(t, lg.store.Ping(context.Background()))
	mustAppend(t, lg, event(received, "e1", "u"))
	require.NoError(t, lg.AppendUnsynced(context.Background(), event(received, "e2", "u")))
	mustAppend(t, lg, event(failed, "e2", "u"))
	require.NoError(t, lg.store.Ping(context.Background()))
	require.NoError(t, lg.Err())
}
