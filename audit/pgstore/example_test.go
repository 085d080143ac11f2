package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
)

// Open a store for a replica of a gateway on a managed PostgreSQL, with
// TLS verified against the provider's CA and a bounded pool. (Not run: it
// needs that database.)
func ExampleOpen() {
	ctx := context.Background()
	store, err := pgstore.Open(ctx,
		"postgres://stage4@db.example.com:5432/stage4?sslmode=verify-full&sslrootcert=/etc/stage4/db-ca.pem&pool_max_conns=8",
		pgstore.WithReplicaName("stage4-0"))
	if errors.Is(err, audit.ErrUnavailable) {
		log.Fatalf("the audit database cannot be reached: %v", err)
	}
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	var _ audit.Store = store // what the log runs on
}

// Verify a log in PostgreSQL, telling damage from unusable input as
// `stage4 audit verify` does. (Not run: it needs a database.)
func ExampleVerify() {
	res, err := pgstore.Verify(context.Background(), "postgres://stage4@db.example.com:5432/stage4?sslmode=verify-full")
	var damaged *audit.ChainError
	switch {
	case errors.As(err, &damaged):
		fmt.Printf("DAMAGED at sequence %d: %s\n", damaged.Sequence, damaged.Reason)
	case err != nil:
		fmt.Println("cannot verify:", err)
	default:
		fmt.Printf("intact: %d records, last hash %s\n", res.Records, res.LastHash)
	}
}
