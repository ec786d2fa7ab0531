"""refbp's benchmarks (issue 6): run them all with ``python benchmarks/run.py`` (``make bench``)."""
