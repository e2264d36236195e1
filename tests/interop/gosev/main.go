// Command gosevcheck verifies SEV-SNP attestation reports with go-sev-guest, as an independent
// cross-check of cvmstore's simulator and verifier (a test-only peer, never product code).
//
// Usage: gosevcheck [-now RFC3339] DIR
//
// DIR/roots/<Product>/ holds the roots to trust for that product line (Milan, Genoa, Turin):
// ark.der, ask.der and, for VLEKs, asvk.der. DIR/reports/<name>/ holds one case: report.bin
// (0x4A0 bytes), vcek.der or vlek.der, and optionally a file "now" (RFC 3339) that overrides
// -now for that case. Nothing is fetched from the network and no CRL is consulted.
//
// For each case, in name order, it prints "<name> OK" or "<name> FAIL <reason>". It runs
// go-sev-guest's verify package (certificate chain to the trusted root, report signature) and
// then its validate package with a permissive policy (which checks that REPORTED_TCB equals
// the VEK's TCB and that CHIP_ID equals the VCEK's hwID). It exits non-zero only when it
// cannot do its own work (bad arguments, unreadable files), never because a report fails.
package main

import (
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
)

// offline refuses every download, so a missing certificate can never be fetched from AMD.
type offline struct{}

func (offline) Get(url string) ([]byte, error) {
	return nil, fmt.Errorf("gosevcheck is offline; refusing to fetch %s", url)
}

func readCert(path string, required bool) (*x509.Certificate, error) {
	der, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && !required {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return cert, nil
}

func loadRoots(dir string) (map[string][]*trust.AMDRootCerts, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	roots := map[string][]*trust.AMDRootCerts{}
	for _, entry := range entries {
		if !entry.IsDir() {
			continue
		}
		line := entry.Name()
		certs := &trust.ProductCerts{}
		if certs.Ark, err = readCert(filepath.Join(dir, line, "ark.der"), true); err != nil {
			return nil, err
		}
		if certs.Ask, err = readCert(filepath.Join(dir, line, "ask.der"), true); err != nil {
			return nil, err
		}
		if certs.Asvk, err = readCert(filepath.Join(dir, line, "asvk.der"), false); err != nil {
			return nil, err
		}
		root := trust.AMDRootCertsProduct(line)
		root.ProductCerts = certs
		roots[line] = append(roots[line], root)
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("%s holds no product directory", dir)
	}
	return roots, nil
}

// check returns nil when go-sev-guest accepts the case, else why not. A second error means
// the checker itself could not read the case.
func check(dir string, roots map[string][]*trust.AMDRootCerts, now time.Time) (error, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "report.bin"))
	if err != nil {
		return nil, err
	}
	if text, err := os.ReadFile(filepath.Join(dir, "now")); err == nil {
		if now, err = time.Parse(time.RFC3339, strings.TrimSpace(string(text))); err != nil {
			return nil, fmt.Errorf("%s/now: %v", dir, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	chain := &spb.CertificateChain{}
	found := false
	for name, slot := range map[string]*[]byte{"vcek.der": &chain.VcekCert, "vlek.der": &chain.VlekCert} {
		der, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		*slot, found = der, true
	}
	if !found {
		return nil, fmt.Errorf("%s has neither vcek.der nor vlek.der", dir)
	}
	report, err := abi.ReportToProto(raw)
	if err != nil {
		return fmt.Errorf("report: %v", err), nil
	}
	attestation := &spb.Attestation{Report: report, CertificateChain: chain}
	verifyOptions := &verify.Options{
		CheckRevocations:    false,
		DisableCertFetching: true,
		Getter:              offline{},
		Now:                 now,
		TrustedRoots:        roots,
	}
	if err := verify.SnpAttestation(attestation, verifyOptions); err != nil {
		return fmt.Errorf("verify: %v", err), nil
	}
	// A permissive policy: only the checks that tie the report to its VEK matter here.
	validateOptions := &validate.Options{
		GuestPolicy: abi.SnpPolicy{
			ABIMajor: 0, ABIMinor: 0, SMT: true, MigrateMA: true, Debug: true, CXLAllowed: true,
		},
		PermitProvisionalFirmware: true,
	}
	if err := validate.SnpAttestation(attestation, validateOptions); err != nil {
		return fmt.Errorf("validate: %v", err), nil
	}
	return nil, nil
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

func main() {
	nowFlag := flag.String("now", "", "the time to check validity periods at (RFC 3339; default: now)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: gosevcheck [-now RFC3339] DIR")
		os.Exit(2)
	}
	dir := flag.Arg(0)
	now := time.Now()
	if *nowFlag != "" {
		var err error
		if now, err = time.Parse(time.RFC3339, *nowFlag); err != nil {
			fmt.Fprintf(os.Stderr, "gosevcheck: -now: %v\n", err)
			os.Exit(2)
		}
	}
	roots, err := loadRoots(filepath.Join(dir, "roots"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "gosevcheck: roots: %v\n", err)
		os.Exit(2)
	}
	entries, err := os.ReadDir(filepath.Join(dir, "reports"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "gosevcheck: %v\n", err)
		os.Exit(2)
	}
	names := []string{}
	for _, entry := range entries {
		if entry.IsDir() {
			names = append(names, entry.Name())
		}
	}
	sort.Strings(names)
	for _, name := range names {
		verdict, err := check(filepath.Join(dir, "reports", name), roots, now)
		if err != nil {
			fmt.Fprintf(os.Stderr, "gosevcheck: %s: %v\n", name, err)
			os.Exit(2)
		}
		if verdict != nil {
			fmt.Printf("%s FAIL %s\n", name, oneLine(verdict))
		} else {
			fmt.Printf("%s OK\n", name)
		}
	}
}
