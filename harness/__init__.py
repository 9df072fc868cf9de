"""What the tests and the benchmark share: the real services as processes, and what checks them.

``processes``  one service as a user starts it (``python -m services.<name>``), ports, waiting
``pipeline``   the four services of one run on their own queues and LOGS_DIR
``queues``     a run's queue prefix, the state of its queues, deleting them afterwards
``proxy``      a TCP proxy between the services and the broker, to cut or stall connections
``checker``    the ids published against the rows of metric_log.csv: lost, duplicated, unexpected
``docker_engine``  a Docker engine (or the stand-in script that starts one) for tests/compose and the bench
"""
