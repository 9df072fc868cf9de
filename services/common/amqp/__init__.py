"""Everything that talks AMQP, one job a module.

- ``topology``    the system's queue names, their dead-letter queues, how they are declared
- ``instruments`` the Prometheus counters of this layer
- ``transport``   the socket writes of one event-loop turn leave in one ``send()``
- ``fastpath``    the one module that touches aiormq internals (a batch of publishes in one
                  frame write), version-checked, with the public path beside it
- ``publisher``   ``ConfirmedPublisher``: persistent publishes that return once confirmed
- ``consumer``    ``BatchConsumer``: validate, dead-letter, take batches, one failure rule, ack
- ``link``        ``BrokerLink``: the service's one connection, its channels, and /health's view

A service names what it publishes and gives its consumers to a ``BrokerLink``; the link
does the rest (connect, retry, declare, open channels, start consuming).
"""
