// Package witness gets Stage-4's checkpoints cosigned by witnesses and
// checks cosigned checkpoints against a witness policy.
//
// A witness (https://c2sp.org/tlog-witness) keeps, for each log it
// knows, the latest tree it cosigned, and cosigns a newer checkpoint only
// with a consistency proof that the newer tree extends it. A checkpoint
// that carries the cosignatures of enough independent witnesses was shown
// to them all: the log cannot show a different tree to someone else
// without one of them noticing, nor roll its tree back, which a log's own
// signature alone cannot promise.
//
// The pieces:
//
//   - Policy (ParsePolicy, ReadPolicyFile): the witnesses and the quorum of
//     their cosignatures that a checkpoint needs, in the Sigsum policy
//     format (witness, group and quorum lines). QuorumMet answers whether
//     cosignatures by some witnesses meet it.
//   - Witness: a witness line; its Verifier checks its cosignatures
//     (c2sp.org/tlog-cosignature, cosignature/v1: an Ed25519 signature over
//     the checkpoint and a timestamp), with filippo.io/torchwood's
//     CosignatureVerifier.
//   - Client: the add-checkpoint call to one witness, with the consistency
//     proof from the witness's last known size (a 409 answer tells it),
//     every call bounded by a timeout.
//   - Cosigner: asks every witness of a policy at once and appends the
//     cosignature lines to the checkpoint when they meet the quorum.
//   - VerifyCheckpoint: a monitor's check of a cosigned checkpoint against
//     the log's key and a policy.
//
// What a witness says is an error the caller branches on with errors.Is:
// ErrDown, ErrRefused and ErrMisconfigured say the witness cannot help now
// and never stop Stage-4 (warn, count, ask again with the next
// checkpoint); ErrInconsistent says the witness holds a tree the
// checkpoint does not extend, a fork or a rollback of the log, on which
// Stage-4 fails closed. Status names them for metric labels.
//
// The package makes no goroutines that outlive a call, keeps no state but
// each witness's last known tree size (in memory: after a restart the
// first request learns it again from the witness's 409), and does not
// log: callers log and count from the Outcomes.
package witness
