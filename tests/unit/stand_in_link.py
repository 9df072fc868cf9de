"""A stand-in for a service's BrokerLink in in-process route tests: no broker; what the service
publishes is recorded, confirmed at once. The real link is tested on the real broker in
tests/integration and tests/faults."""

from collections.abc import Sequence

from services.common.amqp.publisher import Confirmed, Outgoing


class StandInLink:
    def __init__(self, problem: str | None = None) -> None:
        self.published: list[Outgoing] = []
        self.state = "new"
        self.down_because = problem

    # -- the Link protocol
    @property
    def publisher(self) -> "StandInLink":
        return self

    async def publish_many(self, messages: Sequence[Outgoing], confirmed: Confirmed | None = None) -> None:
        self.published.extend(messages)
        if confirmed is not None:
            confirmed(messages)

    def start(self) -> None:
        self.state = "started"

    async def ready(self) -> None:
        pass

    def problem(self) -> str | None:
        return self.down_because

    def details(self) -> dict[str, str]:
        return {}

    async def close(self) -> None:
        self.state = "closed"

    # -- for the tests
    def to(self, queue: str) -> list[Outgoing]:
        return [message for message in self.published if message.queue == queue]
