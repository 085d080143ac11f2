package stage3client

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// encodedMessage is a request already in its binary protobuf encoding.
type encodedMessage []byte

// encodedCodec is gRPC's proto codec, except that it sends an
// encodedMessage's bytes as they are.
type encodedCodec struct{ proto encoding.CodecV2 }

// encodedCallOption makes a call use encodedCodec. Its content-subtype is
// the proto codec's name, so the request goes as application/grpc+proto:
// the same protobuf message, which any gRPC server decodes as usual.
var encodedCallOption = grpc.ForceCodecV2(encodedCodec{proto: encoding.GetCodecV2(protoenc.Name)})

// Marshal implements encoding.CodecV2.
func (c encodedCodec) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.(encodedMessage); ok {
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	return c.proto.Marshal(v)
}

// Unmarshal implements encoding.CodecV2.
func (c encodedCodec) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }

// Name implements encoding.CodecV2.
func (c encodedCodec) Name() string { return c.proto.Name() }
