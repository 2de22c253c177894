"""Training data: multi-view reflection synthesis and dataset readers."""
