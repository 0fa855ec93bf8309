"""Data shipped with circuitviz (instruction sets for refusal directions)."""
