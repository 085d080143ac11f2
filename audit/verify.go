package audit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// VerifyResult describes the intact part of a log.
type VerifyResult struct {
	// Records is the number of good records: sequences 1 to Records (the
	// sequence of the last good record, after WithStart).
	Records uint64
	// LastHash is the hash of the last good record, or GenesisHash. Keep it
	// elsewhere to detect later truncation, which a hash chain alone cannot.
	LastHash string
	// Bytes is the length of the good records, newlines included.
	Bytes int64
	// Head is the chain's end after the good records.
	Head Head
	// TrailingBytes is the length of an incomplete last line (no newline):
	// the trace of a crash during a write, cut off by Open. Never
	// acknowledged to a caller, so not damage.
	TrailingBytes int64
}

// ChainError reports the first damaged record of a log.
type ChainError struct {
	// Sequence is the sequence number the damaged line should have had.
	Sequence uint64
	// Offset is the byte offset at which the damaged line starts in a
	// file; 0 for stores that have no offsets.
	Offset int64
	// Reason says what is wrong: a hash mismatch, a sequence gap, a wrong
	// previous_hash or an unparsable line.
	Reason string
}

// Error implements error.
func (e *ChainError) Error() string {
	return fmt.Sprintf("audit log damaged at sequence %d: %s", e.Sequence, e.Reason)
}

// Verify walks a log from its first record and checks every line: its hash,
// its sequence (gapless from 1) and its previous_hash. It stops at the first
// damaged record and returns a *ChainError describing it, together with the
// result for the good records before it. Other errors are read errors.
func Verify(r io.Reader, opts ...VerifyOption) (VerifyResult, error) {
	var c verifyConfig
	for _, o := range opts {
		o(&c)
	}
	res := VerifyResult{LastHash: GenesisHash}
	chain := NewChainChecker(opts...)
	if c.start != nil {
		res.Head, res.Records, res.LastHash = *c.start, c.start.Sequence, FormatHash(c.start.Hash)
	}
	lr := NewLineReader(r)
	nextProgress := int64(progressStep)
	for {
		line, complete, err := lr.Next()
		if !complete {
			if errors.Is(err, io.EOF) {
				res.TrailingBytes = int64(len(line))
				break
			}
			if errors.Is(err, ErrLineTooLong) {
				return res, &ChainError{Sequence: res.Records + 1, Offset: res.Bytes, Reason: "unparsable line: longer than MaxRecordBytes"}
			}
			return res, fmt.Errorf("verify audit log: %w", err)
		}
		ev, err := chain.Check(line[:len(line)-1])
		if err != nil {
			var ce *ChainError
			if errors.As(err, &ce) {
				ce.Offset = res.Bytes
			}
			return res, err
		}
		res.Records = ev.Sequence
		res.LastHash = ev.Hash
		res.Head = chain.Head()
		res.Bytes += int64(len(line))
		if c.progress != nil && res.Bytes >= nextProgress {
			c.progress(res.Bytes)
			nextProgress = res.Bytes + progressStep
		}
	}
	if c.progress != nil {
		c.progress(res.Bytes + res.TrailingBytes)
	}
	return res, nil
}

const progressStep = 1 << 20

// ErrLineTooLong is LineReader's error for a line over MaxRecordBytes.
var ErrLineTooLong = errors.New("line longer than MaxRecordBytes")

// LineReader reads the lines of a JSON-lines log, each at most
// MaxRecordBytes, with one reused buffer.
type LineReader struct {
	br  *bufio.Reader
	buf []byte
}

// NewLineReader reads lines from r.
func NewLineReader(r io.Reader) *LineReader {
	return NewLineReaderSize(r, 64<<10)
}

// NewLineReaderSize reads lines from r, size bytes at a time: small for
// reading single records where an index points (a record is typically
// under 1 KiB; a longer line is read on), large for reading a log through.
func NewLineReaderSize(r io.Reader, size int) *LineReader {
	return &LineReader{br: bufio.NewReaderSize(r, size)}
}

// Reset makes lr read from r, keeping its buffers.
func (lr *LineReader) Reset(r io.Reader) { lr.br.Reset(r) }

// Next returns the next line with its newline and complete set, or the
// incomplete rest with the error that ended it (io.EOF at the end). The line
// is valid until the next call.
func (lr *LineReader) Next() (line []byte, complete bool, err error) {
	frag, err := lr.br.ReadSlice('\n')
	if err == nil {
		return frag, true, nil
	}
	lr.buf = append(lr.buf[:0], frag...)
	for errors.Is(err, bufio.ErrBufferFull) {
		if len(lr.buf) > MaxRecordBytes {
			return lr.buf, false, ErrLineTooLong
		}
		frag, err = lr.br.ReadSlice('\n')
		lr.buf = append(lr.buf, frag...)
	}
	if err == nil && len(lr.buf) > MaxRecordBytes {
		err = ErrLineTooLong
	}
	return lr.buf, err == nil, err
}
