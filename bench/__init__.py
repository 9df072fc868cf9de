"""The benchmark of issue 4: ``python -m bench.run`` (``make bench``)."""
