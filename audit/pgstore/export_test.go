package pgstore

import "github.com/stage4/stage4/audit"

// WithCopyFrom inserts records with COPY instead of INSERT … unnest, to
// measure the two (BenchmarkAppend).
func WithCopyFrom() Option { return func(c *config) { c.copyFrom = true } }

// WithSyncNonDurable commits durable=false batches synchronously too, to
// measure what synchronous_commit = off buys (BenchmarkAppend).
func WithSyncNonDurable() Option { return func(c *config) { c.syncNonDurable = true } }

// ListQuery is the SQL that List runs for q, for EXPLAIN in tests.
func ListQuery(q audit.Query) (string, []any) {
	from := max(q.From.Sequence, 1)
	var end uint64
	if q.MaxScanned > 0 {
		end = from + uint64(q.MaxScanned)
	}
	return listQuery(&q, from, end)
}
