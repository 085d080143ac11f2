package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// GenesisHash is the previous_hash of the first record: "sha256:" and 64
// zeros, so that every record has the same shape.
const GenesisHash = hashPrefix + "0000000000000000000000000000000000000000000000000000000000000000"

// MaxRecordBytes bounds one record line, newline included, so that readers
// of the log need bounded memory. Append refuses larger events.
const MaxRecordBytes = 1 << 20

const (
	hashPrefix = "sha256:"
	// hashMemberOpen starts the last member of every line; the line ends with
	// hashMemberOpen, 64 hex digits and hashMemberClose.
	hashMemberOpen  = `,"hash":"` + hashPrefix
	hashMemberClose = `"}`
	hashMemberLen   = len(hashMemberOpen) + 2*sha256.Size + len(hashMemberClose)
	// timeLayout is RFC 3339 in UTC with a fixed nine-digit fraction.
	timeLayout = "2006-01-02T15:04:05.000000000Z"
)

var errInvalidUTF8 = errors.New("string is not valid UTF-8")

// encodeFields renders the members of ev that its author chooses, from "type"
// to "details", each followed by a comma. It runs on the caller's goroutine
// so that the single writer only adds sequence, time and the hashes.
func encodeFields(b []byte, ev *Event) ([]byte, error) {
	if !ev.Type.Defined() || ev.Type == TypeUnspecified {
		return nil, fmt.Errorf("invalid event type %d", ev.Type)
	}
	e := encoder{b: b}
	e.raw(`"type":"`)
	e.raw(typeNames[ev.Type])
	e.raw(`","execution_id":`)
	e.str(ev.ExecutionID)
	e.raw(`,"plan_id":`)
	e.str(ev.PlanID)
	e.raw(`,"user_id":`)
	e.str(ev.UserID)
	e.raw(`,"details":`)
	e.object(ev.Details)
	e.raw(",")
	return e.b, e.err
}

// appendRecord renders one complete line: sequence and time, the
// pre-encoded fields, previous_hash and finally the hash of everything
// before it (see docs/AUDIT_LOG.md).
func appendRecord(b []byte, seq uint64, t time.Time, fields []byte, prev *[sha256.Size]byte) ([]byte, [sha256.Size]byte) {
	start := len(b)
	b = append(b, `{"sequence":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"time":"`...)
	b = t.UTC().AppendFormat(b, timeLayout)
	b = append(b, `",`...)
	b = append(b, fields...)
	b = append(b, `"previous_hash":"`+hashPrefix...)
	b = hex.AppendEncode(b, prev[:])
	b = append(b, `"}`...)
	sum := sha256.Sum256(b[start:])
	b = append(b[:len(b)-1], hashMemberOpen...)
	b = hex.AppendEncode(b, sum[:])
	b = append(b, hashMemberClose+"\n"...)
	return b, sum
}

// parseRecord checks that line (without its newline) carries the hash of its
// own bytes and is the canonical encoding of what it says (the very bytes
// the writer makes of it: members in order, nothing added, nothing
// duplicated), and decodes it. It returns a reason for the verifier on
// failure.
func parseRecord(line []byte) (Event, [sha256.Size]byte, string) {
	var sum [sha256.Size]byte
	n := len(line) - hashMemberLen
	if n < 1 || !bytes.HasPrefix(line[n:], []byte(hashMemberOpen)) || !bytes.HasSuffix(line, []byte(hashMemberClose)) {
		return Event{}, sum, "unparsable line: it does not end with the hash member"
	}
	hexSum := line[n+len(hashMemberOpen) : len(line)-len(hashMemberClose)]
	if _, err := hex.Decode(sum[:], hexSum); err != nil || !isLowerHex(hexSum) {
		return Event{}, sum, "unparsable line: the hash is not 64 lowercase hex digits"
	}
	h := sha256.New()
	h.Write(line[:n])
	h.Write([]byte("}"))
	if !bytes.Equal(h.Sum(nil), sum[:]) {
		return Event{}, sum, "hash mismatch: the record was altered"
	}
	var r struct {
		Sequence     uint64         `json:"sequence"`
		Time         time.Time      `json:"time"`
		Type         string         `json:"type"`
		ExecutionID  string         `json:"execution_id"`
		PlanID       string         `json:"plan_id"`
		UserID       string         `json:"user_id"`
		Details      map[string]any `json:"details"`
		PreviousHash string         `json:"previous_hash"`
		Hash         string         `json:"hash"`
	}
	if err := json.Unmarshal(line, &r); err != nil {
		return Event{}, sum, "unparsable line: " + err.Error()
	}
	t, ok := ParseEventType(r.Type)
	if !ok {
		return Event{}, sum, fmt.Sprintf("unparsable line: unknown type %q", r.Type)
	}
	prev, err := parseHash(r.PreviousHash)
	if err != nil {
		return Event{}, sum, "unparsable line: previous_hash: " + err.Error()
	}
	ev := Event{
		Sequence: r.Sequence, Time: r.Time, Type: t,
		ExecutionID: r.ExecutionID, PlanID: r.PlanID, UserID: r.UserID, Details: r.Details,
		PreviousHash: r.PreviousHash, Hash: r.Hash,
	}
	// The record must be exactly what the writer makes of its contents:
	// JSON decoding alone would accept members twice, unknown members or
	// another layout, which readers of the bytes (an index, a verifier in
	// another language) could read differently.
	fields, err := encodeFields(make([]byte, 0, len(line)), &ev)
	if err != nil {
		return Event{}, sum, "unparsable line: " + err.Error()
	}
	canonical, _ := appendRecord(make([]byte, 0, len(line)+1), ev.Sequence, ev.Time, fields, &prev)
	if !bytes.Equal(canonical[:len(canonical)-1], line) {
		return Event{}, sum, "unparsable line: not in the canonical record encoding (members out of order, added, repeated or spaced)"
	}
	return ev, sum, ""
}

// parseHash parses a hash as records carry it: "sha256:" and 64 lowercase
// hex digits.
func parseHash(s string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	hexSum, ok := bytes.CutPrefix([]byte(s), []byte(hashPrefix))
	if !ok || len(hexSum) != 2*sha256.Size || !isLowerHex(hexSum) {
		return sum, fmt.Errorf("bad hash %q", s)
	}
	_, err := hex.Decode(sum[:], hexSum)
	return sum, err
}

func isLowerHex(b []byte) bool {
	for _, c := range b {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func formatHash(sum *[sha256.Size]byte) string {
	return hashPrefix + hex.EncodeToString(sum[:])
}

// encoder writes the JSON subset that records use, without reflection: the
// hot path of every Append goes through it.
type encoder struct {
	b   []byte
	err error
}

func (e *encoder) raw(s string) { e.b = append(e.b, s...) }

const hexDigits = "0123456789abcdef"

// str writes s as a JSON string, escaping only what JSON requires.
func (e *encoder) str(s string) {
	if !utf8.ValidString(s) {
		e.err = errInvalidUTF8
		return
	}
	e.b = append(e.b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		e.b = append(e.b, s[start:i]...)
		if c == '"' || c == '\\' {
			e.b = append(e.b, '\\', c)
		} else {
			e.b = append(e.b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	e.b = append(e.b, s[start:]...)
	e.b = append(e.b, '"')
}

// object writes d with its keys in byte order; a nil d is {}.
func (e *encoder) object(d map[string]any) {
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	e.b = append(e.b, '{')
	for i, k := range keys {
		if i > 0 {
			e.b = append(e.b, ',')
		}
		e.str(k)
		e.b = append(e.b, ':')
		e.value(d[k])
	}
	e.b = append(e.b, '}')
}

// value writes one JSON value of Details. Integers are written as the
// float64 they become when read back, so that a record reads back to
// exactly its bytes.
func (e *encoder) value(v any) {
	switch v := v.(type) {
	case nil:
		e.raw("null")
	case bool:
		e.b = strconv.AppendBool(e.b, v)
	case float64:
		e.number(v)
	case int:
		e.number(float64(v))
	case int64:
		e.number(float64(v))
	case uint64:
		e.number(float64(v))
	case string:
		e.str(v)
	case map[string]any:
		e.object(v)
	case []any:
		e.b = append(e.b, '[')
		for i, item := range v {
			if i > 0 {
				e.b = append(e.b, ',')
			}
			e.value(item)
		}
		e.b = append(e.b, ']')
	case []string:
		e.b = append(e.b, '[')
		for i, item := range v {
			if i > 0 {
				e.b = append(e.b, ',')
			}
			e.str(item)
		}
		e.b = append(e.b, ']')
	default:
		e.err = fmt.Errorf("details value of type %T is not a JSON value", v)
	}
}

// number writes f as encoding/json does: plain decimals, exponents only for
// very small or very large magnitudes. JSON has no NaN or infinity.
func (e *encoder) number(f float64) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		e.err = errors.New("details number is NaN or infinite")
		return
	}
	format := byte('f')
	if a := math.Abs(f); a != 0 && (a < 1e-6 || a >= 1e21) {
		format = 'e'
	}
	e.b = strconv.AppendFloat(e.b, f, format, -1, 64)
}

// EncodeMember renders `"name":value` for a string value exactly as a
// record holds it, so that a store can search record bytes for it. ok is
// false for a value no record can hold (invalid UTF-8).
func EncodeMember(name, value string) (member []byte, ok bool) {
	e := encoder{b: []byte(`"` + name + `":`)}
	e.str(value)
	return e.b, e.err == nil
}
