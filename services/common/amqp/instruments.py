"""The Prometheus counters of the AMQP layer (each service's ``/metrics`` shows them)."""

from prometheus_client import Counter, Histogram

MESSAGES_CONSUMED = Counter("messages_consumed", "Messages taken from a queue and validated", ["queue"])
MESSAGES_PUBLISHED = Counter("messages_published", "Messages confirmed by the broker", ["queue"])
MESSAGES_DEAD_LETTERED = Counter("messages_dead_lettered", "Messages sent to <queue>.dlq", ["queue"])
PUBLISH_RETRIES = Counter("publish_retries", "Publishes retried after a failure or timeout", ["queue"])
PUBLISHER_CHANNELS_RENEWED = Counter(
    "publisher_channels_renewed", "Times a publisher replaced a channel the broker kept refusing publishes on"
)
BROKER_RECONNECTS = Counter("broker_reconnects", "Times the broker connection was re-established")
HANDLE_SECONDS = Histogram("message_handle_seconds", "From a delivery's arrival to its ack or dead-lettering", ["queue"])
