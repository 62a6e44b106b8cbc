"""Parameter schemas and profiles, one module per paper (no heavy imports here)."""
