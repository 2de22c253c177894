"""Runtime: one Session API over every backend, any resolution."""
