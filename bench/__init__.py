"""The benchmark of issue 4: ``python -m bench.run`` (``make bench``), and ``python -m bench.replicas``.

``run``         the command line: runs the sections, prints the report, writes the JSON
``machine``     the machine's facts; memory and CPU of processes, from /proc
``throughput``  a burst of samples until the CSV has every row
``latency``     samples at fixed rates, publish to row
``http_load``   concurrent clients against each endpoint
``scale``       plot_api alone on CSVs of growing size
``report``      the Markdown tables
``progress``    progress lines, waiting for a count, interruption
``figures``     percentiles and rounding
``replicas``    N model_api processes on one set of queues, one burst

The services, the pipeline and the checker come from ``harness``, shared with the tests.
"""
