"""matterfab."""
