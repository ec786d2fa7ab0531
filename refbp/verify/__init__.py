"""The harness: the torch oracle, finite differences, tolerances, comparisons and checks."""
