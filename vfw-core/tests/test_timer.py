"""Timers fire exactly once per arming, never before their time, in deadline order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vfw.testing import ManualClock
from vfw.timer import Timer


def test_deleting_one_timer_does_not_fire_an_older_arming_of_another_early() -> None:
    """Regression: the heap's top was a deleted entry with a stale entry of a re-armed timer
    right below it; skipping the first exposed the second, which then fired at its old time."""
    clock = ManualClock(start_ns=0)
    fired: list[tuple[str, int]] = []
    a = Timer(clock, lambda: fired.append(("a", clock.now)))
    b = Timer(clock, lambda: fired.append(("b", clock.now)))
    a.mod(10)
    b.mod(20)   # b's first arming: a stale entry once re-armed
    b.mod(100)
    a.delete()
    clock.now = 50  # time passed; the loop's next look at the timers is run_expired
    clock.timers.run_expired()
    assert fired == []
    clock.advance(50)
    assert fired == [("b", 100)]


ops = st.lists(st.tuples(st.sampled_from(["mod", "delete", "advance", "jump"]),
                         st.integers(0, 3), st.integers(0, 200)), max_size=60)


@given(ops)
def test_timers_match_a_model(script: list[tuple[str, int, int]]) -> None:
    clock = ManualClock(start_ns=0)
    fired: list[tuple[int, int]] = []
    timers = [Timer(clock, (lambda i=i: fired.append((i, clock.now)))) for i in range(4)]
    armed: dict[int, int] = {}  # the model: timer -> absolute deadline
    expected: list[tuple[int, int]] = []
    for op, i, n in script:
        if op == "mod":
            timers[i].mod(clock.now + n)
            armed[i] = clock.now + n
        elif op == "delete":
            timers[i].delete()
            armed.pop(i, None)
        elif op == "jump":  # time passes unobserved, then the loop runs what is due
            clock.now += n
            due = sorted((t, j) for j, t in armed.items() if t <= clock.now)
            expected += [(j, clock.now) for _, j in due]
            for _, j in due:
                del armed[j]
            clock.timers.run_expired()
        else:
            target = clock.now + n
            due = sorted((t, j) for j, t in armed.items() if t <= target)
            expected += [(j, max(t, clock.now)) for t, j in due]
            for _, j in due:
                del armed[j]
            clock.advance(n)
        assert sorted(fired) == sorted(expected)
        for j, t in armed.items():
            assert timers[j].pending and timers[j].expire_ns == t
