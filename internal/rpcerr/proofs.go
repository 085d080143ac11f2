package rpcerr

// ErrorInfo reasons of the audit log's checkpoints and proofs
// (GetCheckpoint, GetInclusionProof, GetConsistencyProof), with their codes.
const (
	// NoSigningKey (FAILED_PRECONDITION): Stage-4 runs without a checkpoint
	// signing key (--audit-signing-key), so it signs no checkpoints; it
	// still serves proofs for tree sizes the caller names.
	NoSigningKey = "NO_SIGNING_KEY"
	// NoCheckpoint (UNAVAILABLE): no checkpoint has been signed yet; one is
	// signed within --checkpoint-interval of the log's start.
	NoCheckpoint = "NO_CHECKPOINT"
	// InvalidProofRequest (INVALID_ARGUMENT): a proof request that breaks
	// its rules: sequence or first_size 0, a sequence beyond tree_size,
	// first_size beyond second_size.
	InvalidProofRequest = "INVALID_PROOF_REQUEST"
	// BeyondTree (OUT_OF_RANGE): a sequence or tree size beyond the durable
	// log, or, for tree_size 0, a sequence beyond the latest checkpoint;
	// the metadata's tree_size says how far the tree reaches. Retry once
	// the log (or the next checkpoint) has grown that far.
	BeyondTree = "BEYOND_TREE"
)
