"""Everything that talks AMQP, one job a module.

- ``topology``     the system's queue names, their dead-letter queues, how they are declared
- ``instruments``  the Prometheus counters of this layer
- ``errors``       what the broker going away raises
- ``transport``    the socket writes of one event-loop turn leave in one ``send()``; failover
- ``fastpath``     the one package on aiormq internals (gated on what each part relies on),
                   with the public path beside each part
- ``outgoing``     a message to publish, with an AMQP message_id of its own
- ``publisher``    ``ConfirmedPublisher``: persistent publishes that return once confirmed
- ``delivery``     a delivery validated, or refused with its reason; its copy for the DLQ (no I/O)
- ``acks``         which acks and nacks settle deliveries (``AckPlanner``, no I/O), and sending them
- ``failure``      the one failure rule (no I/O)
- ``subscription`` one queue consumed, and consumed again after a reopen or a broker's cancel
- ``batches``      batches from the inbox: what is waiting, without waiting for a batch to fill
- ``clock``        the time the consumer waits by (a test's never waits)
- ``consumer``     ``BatchConsumer``: wiring the above into batches for one handler
- ``link``         ``BrokerLink``: the service's one connection, its channels, and /health's view

A service names what it publishes and gives its consumers to a ``BrokerLink``; the link
does the rest (connect, retry, declare, open channels, start consuming).
"""
