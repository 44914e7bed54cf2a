"""``fuzz(n)``: the hypothesis settings of the fuzz tests, and a check that n cases really ran.

A fuzz test that silently runs few or no cases (an over-eager ``assume``, a strategy that
exhausts, a settings profile) still passes; wrapped by ``fuzz(n)`` it fails unless its body ran
at least n times.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from hypothesis import HealthCheck, settings


def fuzz(max_examples: int) -> Callable:
    """Decorate a ``@given`` test (place it above ``@given``): derandomized (the same cases every
    run), no example database, 5 s deadline per case, and at least ``max_examples`` cases run."""

    def decorate(test: Callable) -> Callable:
        test = settings(
            max_examples=max_examples,
            derandomize=True,
            database=None,
            deadline=5000,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )(test)
        inner, ran = test.hypothesis.inner_test, [0]

        @functools.wraps(inner)
        def counted(*args, **kwargs):
            ran[0] += 1
            return inner(*args, **kwargs)

        test.hypothesis.inner_test = counted

        @functools.wraps(test)
        def checked(*args, **kwargs):
            ran[0] = 0
            test(*args, **kwargs)
            assert ran[0] >= max_examples, f"{ran[0]} of {max_examples} fuzz cases ran"

        return checked

    return decorate
