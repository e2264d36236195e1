"""SEV-SNP attestation: reports, the AMD certificate chain, TCB and policy checks."""
