package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/testkit"
)

// appendLarge appends n events whose details carry detailBytes bytes, so
// that a few of them fill a segment. They are EXECUTION_FAILED, which ends
// an execution: a log that leaves none open gets no records added for
// interrupted executions when it is opened again.
func appendLarge(t *testing.T, lg *audit.Log, n, detailBytes int) {
	t.Helper()
	for i := range n {
		_, err := lg.Append(t.Context(), audit.Event{
			Type:        audit.ExecutionFailed,
			ExecutionID: fmt.Sprintf("exec-%d", i),
			UserID:      "alice",
			Details:     audit.Details{"filler": strings.Repeat("x", detailBytes)},
		})
		require.NoError(t, err)
	}
}

// writeLogDir writes a log directory of n records of about a kilobyte in
// segments of a page (three records each) with the segstore package.
func writeLogDir(t *testing.T, n int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "audit")
	store, err := segstore.Open(dir, segstore.WithSegmentBytes(segstore.MinSegmentBytes))
	require.NoError(t, err)
	lg, err := audit.New(store)
	require.NoError(t, err)
	appendLarge(t, lg, n, 900)
	require.NoError(t, lg.Close())
	return dir
}

// sealedSegments returns how many segments the seal file of the log
// directory dir lists.
func sealedSegments(t *testing.T, dir string) int {
	t.Helper()
	seals, _, err := segstore.ReadSeals(filepath.Join(dir, segstore.SealsFile))
	require.NoError(t, err)
	return len(seals)
}

// checkpointArgs signs a checkpoint of the log directory dir, as it is,
// with a new key and returns the audit verify flags that check it.
func checkpointArgs(t *testing.T, dir string) []string {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, "stage4.test/audit")
	require.NoError(t, err)
	signer, err := note.NewSigner(skey)
	require.NoError(t, err)
	store, err := segstore.Open(dir, segstore.WithSegmentBytes(segstore.MinSegmentBytes))
	require.NoError(t, err)
	lg, err := audit.New(store, audit.WithCheckpointSigner(signer))
	require.NoError(t, err)
	_, _, err = lg.SignCheckpoint(t.Context())
	require.NoError(t, err)
	cp, err := lg.Checkpoint(t.Context())
	require.NoError(t, err)
	require.NoError(t, lg.Close())
	path := filepath.Join(t.TempDir(), "checkpoint.txt")
	require.NoError(t, os.WriteFile(path, cp, 0o600))
	return []string{"--checkpoint", path, "--verifier-key", vkey}
}

// flipByte changes one byte of a record in the file at path: a letter of
// the record's filler.
func flipByte(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	i := bytes.Index(data, []byte("xxxx"))
	require.GreaterOrEqual(t, i, 0)
	data[i] = 'y'
	require.NoError(t, os.WriteFile(path, data, 0o600))
}

// TestAuditVerifyLogDirectory runs audit verify on log directories and on
// single segments, intact, archived and damaged.
func TestAuditVerifyLogDirectory(t *testing.T) {
	t.Parallel()
	const records = 10 // segments of records 1-3, 4-6, 7-9 sealed; 10 active
	tests := []struct {
		name string
		// prepare changes the log directory dir and returns the
		// arguments of audit verify.
		prepare    func(t *testing.T, dir string) []string
		wantCode   int
		wantStdout []string
		wantStderr string
	}{
		{
			name:       "intact directory",
			prepare:    func(_ *testing.T, dir string) []string { return []string{dir} },
			wantStdout: []string{fmt.Sprintf("OK %d records, last hash sha256:", records), "\n  4 segments"},
		},
		{
			name: "a sealed segment",
			prepare: func(_ *testing.T, dir string) []string {
				return []string{filepath.Join(dir, segstore.SegmentName(4))}
			},
			wantStdout: []string{
				"OK segment 00000000000000000004.jsonl: records 4 to 6, previous hash sha256:",
				"\n  matches its seal in seals.jsonl",
			},
		},
		{
			name: "the active segment",
			prepare: func(_ *testing.T, dir string) []string {
				return []string{filepath.Join(dir, segstore.SegmentName(records))}
			},
			wantStdout: []string{
				"OK segment 00000000000000000010.jsonl: records 10 to 10",
				"not sealed in the seals.jsonl beside it (the active segment, or one of another log): checked on its own",
			},
		},
		{
			name: "archived segments",
			prepare: func(t *testing.T, dir string) []string {
				elsewhere := t.TempDir()
				for _, first := range []uint64{1, 4} {
					require.NoError(t, os.Rename(filepath.Join(dir, segstore.SegmentName(first)), filepath.Join(elsewhere, segstore.SegmentName(first))))
				}
				return []string{dir}
			},
			wantStdout: []string{
				fmt.Sprintf("OK %d records", records),
				"\n  2 segments\n",
				"\n  records 1 to 6 are in 2 archived segments, not checked here: verify them with stage4 audit verify SEGMENT",
			},
		},
		{
			name: "an archived segment on its own",
			prepare: func(t *testing.T, dir string) []string {
				archived := filepath.Join(t.TempDir(), segstore.SegmentName(4))
				require.NoError(t, os.Rename(filepath.Join(dir, segstore.SegmentName(4)), archived))
				return []string{archived}
			},
			wantStdout: []string{"OK segment 00000000000000000004.jsonl: records 4 to 6", "\n  no seal file beside it: checked on its own"},
		},
		{
			name: "a changed byte in a sealed segment",
			prepare: func(t *testing.T, dir string) []string {
				flipByte(t, filepath.Join(dir, segstore.SegmentName(4)))
				return []string{dir}
			},
			wantCode:   1,
			wantStdout: []string{"DAMAGED at sequence 4", "(in segment 00000000000000000004.jsonl)", "\n  records 1 to 3 are intact"},
		},
		{
			name: "a changed byte in the segment verified alone",
			prepare: func(t *testing.T, dir string) []string {
				path := filepath.Join(dir, segstore.SegmentName(4))
				flipByte(t, path)
				return []string{path}
			},
			wantCode:   1,
			wantStdout: []string{"DAMAGED at sequence 4", "\n  no record of the segment is intact"},
		},
		{
			name: "a sealed segment cut short",
			prepare: func(t *testing.T, dir string) []string {
				path := filepath.Join(dir, segstore.SegmentName(4))
				data, err := os.ReadFile(path)
				require.NoError(t, err)
				lines := bytes.SplitAfter(data, []byte("\n"))
				require.NoError(t, os.WriteFile(path, bytes.Join(lines[:2], nil), 0o600))
				return []string{dir}
			},
			wantCode:   1,
			wantStdout: []string{"DAMAGED at sequence 6", "its seal"},
		},
		{
			name: "a checkpoint needs the archived records",
			prepare: func(t *testing.T, dir string) []string {
				args := checkpointArgs(t, dir)
				require.NoError(t, os.Rename(filepath.Join(dir, segstore.SegmentName(1)), filepath.Join(t.TempDir(), segstore.SegmentName(1))))
				return append(args, dir)
			},
			wantCode: 1,
			wantStdout: []string{
				"CHECKPOINT NOT CHECKED: it signs a tree of ",
				"records, and records 1 to 3 are in 1 archived segment, not in the directory;",
				"put the archived segments back",
			},
		},
		{
			name: "a checkpoint of a single segment",
			prepare: func(t *testing.T, dir string) []string {
				return append(checkpointArgs(t, dir), filepath.Join(dir, segstore.SegmentName(1)))
			},
			wantCode:   2,
			wantStderr: "a checkpoint needs every record of the log from the first: give the log directory, not one segment",
		},
		{
			name: "a missing segment",
			prepare: func(_ *testing.T, dir string) []string {
				return []string{filepath.Join(dir, segstore.SegmentName(99))}
			},
			wantCode:   2,
			wantStderr: "no such file",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := writeLogDir(t, records)
			require.Equal(t, 3, sealedSegments(t, dir), "the log this test expects")
			args := tt.prepare(t, dir)
			code, stdout, stderr := runStage4(t, nil, append([]string{"audit", "verify"}, args...)...)
			require.Equal(t, tt.wantCode, code, "stdout: %s\nstderr: %s", stdout, stderr)
			for _, want := range tt.wantStdout {
				require.Contains(t, stdout, want)
			}
			require.Contains(t, stderr, tt.wantStderr)
			if tt.wantCode != 0 {
				require.NotContains(t, stdout, "OK ", "never OK for a log not checked through")
			}
		})
	}
}

// prefillLogDir writes a log directory in segments of segmentBytes
// through the segstore package: two sealed segments of large records,
// then an active segment filled up to about room bytes short of its
// size, so that the next few small records seal it.
func prefillLogDir(t *testing.T, dir string, segmentBytes int64, room int) {
	t.Helper()
	const detailBytes = 200_000 // four records to a segment of a mebibyte
	write := func(n, detail int) {
		store, err := segstore.Open(dir, segstore.WithSegmentBytes(segmentBytes))
		require.NoError(t, err)
		lg, err := audit.New(store)
		require.NoError(t, err)
		appendLarge(t, lg, n, detail)
		require.NoError(t, lg.Close())
	}
	write(10, detailBytes)
	require.Equal(t, 2, sealedSegments(t, dir))
	// The active segment holds records 9 and 10 (a segment is sealed at
	// 15/16 of its size, the rest being the reserve of a full disk): what
	// they take is the records' size, what is left below the seal is
	// filled with one record.
	data, err := os.ReadFile(filepath.Join(dir, segstore.SegmentName(9)))
	require.NoError(t, err)
	written := bytes.IndexByte(data, 0)
	require.Positive(t, written)
	overhead := written/2 - detailBytes // one record's bytes besides its detail
	sealAt := int(segmentBytes - segmentBytes/16)
	write(1, sealAt-written-room-overhead)
	require.Equal(t, 2, sealedSegments(t, dir), "the filler fits in the active segment")
}

// TestServeSealsSegments runs serve on a log directory with segments of a
// mebibyte, prefilled so that its calls seal the active segment; after a
// restart, every execution is listed by its id through the index, the
// directory and a sealed segment verify, a signed checkpoint and a proof
// check against the directory, and a changed byte in a sealed segment is
// found.
func TestServeSealsSegments(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "audit")
	prefillLogDir(t, dir, minAuditSegmentBytes, 4096)
	keyFile := filepath.Join(t.TempDir(), "signing.key")
	code, vkey, stderr := runStage4(t, nil, "audit", "keygen", "stage4.test/audit", "--out", keyFile)
	require.Equal(t, 0, code, stderr)
	vkey = strings.TrimSpace(vkey)
	// The segment size through the environment, as a deployment sets it.
	env := []string{fmt.Sprintf("STAGE4_AUDIT_SEGMENT_BYTES=%d", minAuditSegmentBytes)}
	serveArgs := []string{"--audit-readers", "*", "--audit-signing-key", keyFile}

	gw := startGatewayOn(t, dir, env, nil, serveArgs)
	opened := gw.stage4.stderr.waitForLog(t, "audit log opened: a directory of segments", nil)
	require.EqualValues(t, 11, opened["records"])
	require.EqualValues(t, 2, opened["sealed_segments"])
	require.EqualValues(t, 3, opened["verified_records"], "the active segment's records only")
	require.EqualValues(t, minAuditSegmentBytes, opened["segment_bytes"])
	require.Contains(t, opened, "open_ms")

	ctx := testContext(t)
	var ids []string
	for sealedSegments(t, dir) < 3 {
		require.Less(t, len(ids), 20, "a few calls seal the active segment")
		res, err := gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
		require.NoError(t, err)
		ids = append(ids, res.GetExecutionId())
	}
	// One more, in the segment that the seal began.
	res, err := gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
	require.NoError(t, err)
	ids = append(ids, res.GetExecutionId())
	require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, gw.stage4.exitCode(t))

	gw = startGatewayOn(t, dir, env, nil, serveArgs)
	opened = gw.stage4.stderr.waitForLog(t, "audit log opened: a directory of segments", nil)
	require.EqualValues(t, 3, opened["sealed_segments"])
	records := 11 + 3*len(ids)
	require.EqualValues(t, records, opened["records"])
	ctx = testContext(t)
	for _, id := range ids {
		requireCompleted(ctx, t, gw.client, id)
	}
	cp, err := gw.client.GetCheckpoint(ctx, &stage4v1.GetCheckpointRequest{})
	require.NoError(t, err)
	cpFile := filepath.Join(t.TempDir(), "checkpoint.txt")
	require.NoError(t, os.WriteFile(cpFile, []byte(cp.GetCheckpoint()), 0o600))
	require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, gw.stage4.exitCode(t))

	segments, err := filepath.Glob(filepath.Join(dir, "*"+segstore.SegmentExt))
	require.NoError(t, err)
	require.Len(t, segments, 4+1, "three sealed segments, the active one and seals.jsonl")
	steps := []struct {
		name       string
		before     func(t *testing.T)
		args       []string
		wantCode   int
		wantStdout []string
	}{
		{name: "the directory", args: []string{"verify", dir},
			wantStdout: []string{fmt.Sprintf("OK %d records, last hash sha256:", records), "\n  4 segments"}},
		{name: "a sealed segment", args: []string{"verify", filepath.Join(dir, segstore.SegmentName(1))},
			wantStdout: []string{"OK segment 00000000000000000001.jsonl: records 1 to 4, previous hash sha256:0000", "\n  matches its seal in seals.jsonl"}},
		{name: "the checkpoint", args: []string{"verify", "--checkpoint", cpFile, "--verifier-key", vkey, dir},
			wantStdout: []string{fmt.Sprintf("the first %d records reproduce its root", records)}},
		{name: "a record of a sealed segment", args: []string{"prove", "--checkpoint", cpFile, "--verifier-key", vkey, "--sequence", "7", dir},
			wantStdout: []string{fmt.Sprintf("OK record 7 is in the tree of %d records", records)}},
		{
			name:       "a changed byte in a sealed segment",
			before:     func(t *testing.T) { flipByte(t, filepath.Join(dir, segstore.SegmentName(5))) },
			args:       []string{"verify", dir},
			wantCode:   1,
			wantStdout: []string{"DAMAGED at sequence 5", "(in segment 00000000000000000005.jsonl)", "\n  records 1 to 4 are intact"},
		},
	}
	for _, s := range steps { // in order: the damage stays for the steps after it
		if s.before != nil {
			s.before(t)
		}
		code, stdout, stderr := runStage4(t, nil, append([]string{"audit"}, s.args...)...)
		require.Equal(t, s.wantCode, code, "%s\nstdout: %s\nstderr: %s", s.name, stdout, stderr)
		for _, want := range s.wantStdout {
			require.Contains(t, stdout, want, s.name)
		}
	}
}

// TestServeRefusesASingleFileLog: a log in one file, from before logs
// were directories, is not served (exit 2, the file left as it was), and
// audit verify still checks it.
func TestServeRefusesASingleFileLog(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	writeAuditLog(t, path, 3)
	before, err := os.ReadFile(path)
	require.NoError(t, err)
	code, _, stderr := runStage4(t, nil, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
		"--stage3-addr", "127.0.0.1:1", "--stage3-insecure", "--audit-log", path)
	require.Equal(t, 2, code, stderr)
	require.Contains(t, stderr, "is a single-file audit log, from before logs were directories")
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, before, after, "left as it was")
	code, stdout, stderr := runStage4(t, nil, "audit", "verify", path)
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
	require.Contains(t, stdout, "OK 3 records")
	require.Contains(t, stdout, "a single-file log, from before logs were directories")
}

// requireCompleted checks, through ListAuditEvents, that execution id has
// the three events of a completed execution, in order.
func requireCompleted(ctx context.Context, t *testing.T, client stage4v1.Stage4ServiceClient, id string) {
	t.Helper()
	res, err := client.ListAuditEvents(ctx, &stage4v1.ListAuditEventsRequest{ExecutionId: id})
	require.NoError(t, err)
	var types []stage4v1.AuditEventType
	for _, ev := range res.GetAuditEvents() {
		types = append(types, ev.GetType())
	}
	require.Equal(t, []stage4v1.AuditEventType{
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED,
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED,
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED,
	}, types, "execution %s", id)
}
