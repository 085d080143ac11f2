package segindex_test

import (
	"fmt"
	"log"
	"os"

	"github.com/stage4/stage4/audit/segstore/internal/segindex"
)

// Example shows the store's use of the index: index records as they are
// appended, seal a segment into a run, look up, and merge as planned.
func Example() {
	dir, err := os.MkdirTemp("", "segindex-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	alice := segindex.Key(segindex.UserID, "alice")
	var runs []*segindex.Run
	for segment := range 2 {
		// Append two records per segment; the store knows each record's
		// sequence number and offset in its segment.
		var mem segindex.Mem
		first := uint64(2*segment + 1)
		for i, user := range []string{"alice", "bob"} {
			seq, off := first+uint64(i), uint32(100*i)
			err := mem.Add(
				segindex.Entry{Key: segindex.Key(segindex.UserID, user), Seq: seq, Offset: off},
				segindex.Entry{Key: segindex.Key(segindex.Type, "EXECUTION_STARTED"), Seq: seq, Offset: off},
			)
			if err != nil {
				log.Fatal(err)
			}
		}
		fmt.Println("in memory:", seqs(mem.Lookup(alice, 0, 10)))

		// Seal: the segment's entries become a run.
		path, err := segindex.WriteRun(dir, first, first+1, mem.Entries())
		if err != nil {
			log.Fatal(err)
		}
		run, err := segindex.OpenRun(path)
		if err != nil {
			log.Fatal(err)
		}
		runs = append(runs, run)
	}

	live := []segindex.RunInfo{runs[0].Info(), runs[1].Info()}
	fmt.Println("merge", len(segindex.PlanMerge(live)), "runs")
	path, err := segindex.MergeRuns(dir, runs)
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range runs {
		r.Close()
		os.Remove(r.Path())
	}
	merged, err := segindex.OpenRun(path)
	if err != nil {
		log.Fatal(err)
	}
	defer merged.Close()
	hits, err := merged.Lookup(alice, 0, 10)
	fmt.Println("merged run covers", merged.First(), "to", merged.Last(), "and has alice at", seqs(hits), err)

	live, stale, err := segindex.ListRuns(dir)
	fmt.Println("live:", len(live), "stale:", len(stale), err)
	// Output:
	// in memory: [1]
	// in memory: [3]
	// merge 2 runs
	// merged run covers 1 to 4 and has alice at [1 3] <nil>
	// live: 1 stale: 0 <nil>
}

func seqs(entries []segindex.Entry) []uint64 {
	var out []uint64
	for _, e := range entries {
		out = append(out, e.Seq)
	}
	return out
}
