package segindex

import (
	"errors"
	"fmt"
)

// MergeRuns writes the run that merges runs, which must cover consecutive
// ranges in order (runs[i].Last()+1 == runs[i+1].First()), and returns its
// path. It streams: memory is one read buffer per input and one write buffer.
// It checks the inputs as Verify does and fails rather than carry damage
// into the new run. The inputs stay open and in place: the caller removes
// them once it has adopted the new run.
func MergeRuns(dir string, runs []*Run) (string, error) {
	if len(runs) == 0 {
		return "", errors.New("merge index runs: no runs")
	}
	count := runs[0].count
	for i := 1; i < len(runs); i++ {
		if runs[i-1].last+1 != runs[i].first {
			return "", fmt.Errorf("merge index runs: %s does not follow %s", runs[i].path, runs[i-1].path)
		}
		count += runs[i].count
	}

	// A min-heap of the readers by their current entry. Ties cannot happen
	// across inputs (their Seq ranges are disjoint), so no reader order
	// needs to break them.
	var heap []*mergeInput
	for _, r := range runs {
		in := &mergeInput{}
		var err error
		if in.rr, err = newRunReader(r, 64<<10); err != nil {
			return "", err
		}
		if err := in.advance(); err != nil {
			return "", err
		}
		if in.ok {
			heap = append(heap, in)
		}
	}
	for i := len(heap)/2 - 1; i >= 0; i-- {
		siftDown(heap, i)
	}
	first, last := runs[0].first, runs[len(runs)-1].last
	return createRun(dir, first, last, count, fenceStride, func(emit func(Entry) error) error {
		for len(heap) > 0 {
			in := heap[0]
			if err := emit(in.cur); err != nil {
				return err
			}
			if err := in.advance(); err != nil {
				return err
			}
			if !in.ok {
				heap[0] = heap[len(heap)-1]
				heap = heap[:len(heap)-1]
			}
			siftDown(heap, 0)
		}
		return nil
	})
}

type mergeInput struct {
	rr  *runReader
	cur Entry
	ok  bool
}

func (in *mergeInput) advance() (err error) {
	in.cur, in.ok, err = in.rr.next()
	return err
}

func siftDown(h []*mergeInput, i int) {
	for {
		c := 2*i + 1
		if c >= len(h) {
			return
		}
		if c+1 < len(h) && compareEntries(h[c+1].cur, h[c].cur) < 0 {
			c++
		}
		if compareEntries(h[i].cur, h[c].cur) <= 0 {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}
