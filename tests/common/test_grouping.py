"""common.grouping.GroupCall: concurrent callers share one call, each gets
its own result or error, a failed group is retried alone when asked."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable

import pytest

from common.grouping import GroupCall


class Service:
    """Answers n -> n * 10, refuses 13; records the groups it was sent."""

    def __init__(self, delay: float = 0.05, whole_fails_on: int | None = None) -> None:
        self.delay = delay
        self.whole_fails_on = whole_fails_on
        self.groups: list[tuple[Hashable, list[int]]] = []
        self.lock = threading.Lock()

    def send(self, key: Hashable, items: list[int]) -> list[int | Exception]:
        with self.lock:
            self.groups.append((key, list(items)))
        time.sleep(self.delay)  # a call in flight: others queue meanwhile
        if self.whole_fails_on is not None and self.whole_fails_on in items and len(items) > 1:
            raise RuntimeError("the whole call failed")
        return [ValueError(f"{n} refused") if n == 13 else n * 10 for n in items]


def call_all(group: GroupCall[int, int], items: list[int], key_of: dict[int, str] | None = None) -> dict[int, object]:
    out: dict[int, object] = {}

    def one(n: int) -> None:
        try:
            out[n] = group.call(n, key=(key_of or {}).get(n))
        except Exception as exc:
            out[n] = exc

    threads = [threading.Thread(target=one, args=(n,)) for n in items]
    for t in threads:
        t.start()
        time.sleep(0.002)
    for t in threads:
        t.join(10)
    return out


def test_concurrent_calls_share_a_call_and_get_their_own_answers() -> None:
    service = Service()
    out = call_all(GroupCall(service.send), list(range(1, 21)))
    assert {n: out[n] for n in out if n != 13} == {n: n * 10 for n in range(1, 21) if n != 13}
    assert isinstance(out[13], ValueError) and str(out[13]) == "13 refused"
    assert len(service.groups) < 20, "nothing was grouped"
    assert sorted(n for _, items in service.groups for n in items) == list(range(1, 21))


def test_groups_never_mix_keys_or_exceed_the_batch() -> None:
    service = Service()
    keys = {n: "even" if n % 2 == 0 else "odd" for n in range(1, 31)}
    out = call_all(GroupCall(service.send, max_batch=4), list(range(1, 31)), keys)
    assert all(out[n] == n * 10 for n in out if n != 13)
    for key, items in service.groups:
        assert len(items) <= 4 and {keys[n] for n in items} == {key}


@pytest.mark.parametrize("retry_alone", [True, False])
def test_a_failed_group_is_retried_alone_or_fails_everyone(retry_alone: bool) -> None:
    service = Service(whole_fails_on=5)
    out = call_all(GroupCall(service.send, retry_alone=retry_alone), list(range(1, 11)))
    grouped_with_5 = next(items for _, items in service.groups if 5 in items)
    if len(grouped_with_5) == 1:
        pytest.skip("5 happened to go alone")
    for n in grouped_with_5:
        if retry_alone:
            assert out[n] == n * 10  # alone, nothing fails
        else:
            assert isinstance(out[n], RuntimeError)
