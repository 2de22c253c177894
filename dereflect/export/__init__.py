"""Export: one format table drives conversion, quantization and parity checks."""
