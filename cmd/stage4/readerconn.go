package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// readerConnFlags are how the auditor's commands (audit checkpoint, audit
// monitor) reach a running Stage-4 as a reader of its audit log: by a
// client certificate that names an identity on serve's --audit-readers,
// or in plaintext to stage4 dev or a sidecar that does the TLS. One set,
// so that an auditor's scripts spell them alike for every command.
type readerConnFlags struct {
	caFile, certFile, keyFile, serverName string
	plaintext                             bool
}

// register declares the flags on fs.
func (f *readerConnFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.caFile, "ca-file", "", "CA `file` (PEM) that signed Stage-4's certificate; the system roots when empty")
	fs.StringVar(&f.certFile, "cert-file", "", "client certificate `file` (PEM) naming an identity on serve's --audit-readers")
	fs.StringVar(&f.keyFile, "key-file", "", "its private key `file` (PEM)")
	fs.StringVar(&f.serverName, "server-name", "", "`name` to verify Stage-4's certificate against; the host of --addr when empty")
	fs.BoolVar(&f.plaintext, "plaintext", false, "no TLS (stage4 dev, or a sidecar that does TLS)")
}

// check refuses flags that contradict each other.
func (f *readerConnFlags) check() error {
	switch {
	case f.plaintext && (f.caFile != "" || f.certFile != "" || f.keyFile != "" || f.serverName != ""):
		return errors.New("--plaintext and the TLS flags exclude each other")
	case (f.certFile == "") != (f.keyFile == ""):
		return errors.New("--cert-file and --key-file go together")
	}
	return nil
}

// credentials are the transport credentials the flags ask for.
func (f *readerConnFlags) credentials() (credentials.TransportCredentials, error) {
	if f.plaintext {
		return insecure.NewCredentials(), nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.serverName}
	if f.caFile != "" {
		pem, err := os.ReadFile(f.caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s holds no PEM certificate", f.caFile)
		}
	}
	if f.certFile != "" {
		pair, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
		if err != nil {
			return nil, fmt.Errorf("--cert-file, --key-file: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return credentials.NewTLS(tc), nil
}

// dial is a client connection to addr with the flags' credentials.
func (f *readerConnFlags) dial(addr string) (*grpc.ClientConn, error) {
	creds, err := f.credentials()
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("--addr: %w", err)
	}
	return conn, nil
}
