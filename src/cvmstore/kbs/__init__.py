"""Key Broker Service: the Trustee KBS protocol (RCAR 0.4.0), attested key release, the ledger."""
