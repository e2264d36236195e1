"""IGVM files and the SEV-SNP launch measurement they produce (stands alone)."""
