"""GroupCommit: what concurrent callers give in one event-loop turn goes to one commit; each caller
gets its own outcome; a caller that stops waiting leaves the others alone."""

import asyncio

import pytest

from services.common.group_commit import GroupCommit, Pending

WAIT_S = 5.0  # a guard against a hang, never a duration a test relies on


class Doubler:
    """A commit that records each group and answers each item with twice its value; an item < 0 is
    refused alone; ``hold`` keeps every answer back until released."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.began = asyncio.Event()

    async def __call__(self, group: list[Pending[int, int]]) -> None:
        self.groups.append([pending.item for pending in group])
        self.began.set()
        await self.hold.wait()
        for pending in group:
            if pending.item < 0:
                pending.fail(ValueError(f"refused {pending.item}"))
            else:
                pending.settle(2 * pending.item)


def test_items_given_in_one_turn_share_one_commit_and_each_gets_its_own_answer() -> None:
    async def scenario() -> tuple[list[int], list[list[int]]]:
        commit = Doubler()
        group: GroupCommit[int, int] = GroupCommit(commit, max_size=100)
        answers = await asyncio.wait_for(asyncio.gather(*(group.submit(n) for n in range(10))), WAIT_S)
        later = await asyncio.wait_for(group.submit(50), WAIT_S)  # a later turn: a group of its own
        return [*answers, later], commit.groups

    answers, groups = asyncio.run(scenario())
    assert answers == [2 * n for n in range(10)] + [100]
    assert groups == [list(range(10)), [50]]


def test_a_group_is_cut_at_max_size_counting_each_items_size() -> None:
    async def scenario() -> list[list[int]]:
        commit = Doubler()
        group: GroupCommit[int, int] = GroupCommit(commit, max_size=10, size=lambda item: item)
        await asyncio.wait_for(asyncio.gather(*(group.submit(n) for n in (4, 4, 4, 12, 1))), WAIT_S)
        return commit.groups

    # 4 + 4 fit; the third 4 would make 12: a new group; 12 alone is over the size but goes whole.
    assert asyncio.run(scenario()) == [[4, 4], [4], [12], [1]]


def test_an_item_refused_fails_only_its_own_caller() -> None:
    async def scenario() -> list[int | BaseException]:
        group: GroupCommit[int, int] = GroupCommit(Doubler(), max_size=100)
        return await asyncio.wait_for(asyncio.gather(*(group.submit(n) for n in (1, -2, 3)), return_exceptions=True), WAIT_S)

    one, refused, three = asyncio.run(scenario())
    assert (one, three) == (2, 6)
    assert isinstance(refused, ValueError) and str(refused) == "refused -2"


def test_a_commit_that_fails_fails_every_caller_it_left_unanswered() -> None:
    async def broken(group: list[Pending[int, int]]) -> None:
        group[0].settle(7)
        raise RuntimeError("the broker is gone")

    async def scenario() -> list[int | BaseException]:
        group: GroupCommit[int, int] = GroupCommit(broken, max_size=100)
        return await asyncio.wait_for(asyncio.gather(*(group.submit(n) for n in range(3)), return_exceptions=True), WAIT_S)

    first, *others = asyncio.run(scenario())
    assert first == 7
    assert [str(exc) for exc in others] == ["the broker is gone"] * 2


def test_a_caller_cancelled_before_its_group_is_committed_is_left_out_and_the_others_answered() -> None:
    async def scenario() -> tuple[list[int], list[list[int]]]:
        commit = Doubler()
        group: GroupCommit[int, int] = GroupCommit(commit, max_size=100)
        callers = [asyncio.create_task(group.submit(n)) for n in range(4)]
        await asyncio.sleep(0)  # each caller has given its item; the group is committed at the end of the next turn
        callers[1].cancel()
        done = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), WAIT_S)
        assert isinstance(done[1], asyncio.CancelledError)
        return [answer for answer in done if isinstance(answer, int)], commit.groups

    answers, groups = asyncio.run(scenario())
    assert answers == [0, 4, 6]
    assert groups == [[0, 2, 3]]


def test_a_caller_cancelled_while_its_group_commits_does_not_stop_the_others() -> None:
    async def scenario() -> list[int | BaseException]:
        commit = Doubler()
        commit.hold.clear()
        group: GroupCommit[int, int] = GroupCommit(commit, max_size=100)
        callers = [asyncio.create_task(group.submit(n)) for n in range(4)]
        await asyncio.wait_for(commit.began.wait(), WAIT_S)  # the commit has begun, and holds
        callers[2].cancel()
        await asyncio.sleep(0)
        commit.hold.set()
        return await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), WAIT_S)

    zero, one, cancelled, three = asyncio.run(scenario())
    assert (zero, one, three) == (0, 2, 6)
    assert isinstance(cancelled, asyncio.CancelledError)


def test_close_tells_the_callers_of_a_commit_under_way() -> None:
    async def scenario() -> BaseException | int:
        commit = Doubler()
        commit.hold.clear()
        group: GroupCommit[int, int] = GroupCommit(commit, max_size=100)
        caller = asyncio.create_task(group.submit(1))
        await asyncio.wait_for(commit.began.wait(), WAIT_S)
        await group.close()
        (outcome,) = await asyncio.gather(caller, return_exceptions=True)
        return outcome

    outcome = asyncio.run(scenario())
    assert isinstance(outcome, RuntimeError) and "stopped" in str(outcome)


@pytest.mark.parametrize("items", [1, 3])
def test_groups_and_items_count_what_was_committed(items: int) -> None:
    async def scenario() -> tuple[int, int]:
        group: GroupCommit[int, int] = GroupCommit(Doubler(), max_size=100)
        await asyncio.gather(*(group.submit(n) for n in range(items)))
        await group.submit(9)
        return group.groups, group.items

    assert asyncio.run(scenario()) == (2, items + 1)
