"""Plain progress lines for log files (``ssd_jax.progress.PlainProgress``)."""

from __future__ import annotations

import io

from ssd_jax.progress import PlainProgress


def test_plain_progress_ends_with_the_time_in_all_however_slow_the_steps():
    # every_s=0: each update is "slow enough" for a line, as on a loaded machine; the line of
    # the last unit must still be close()'s "in all", not an update's "left"
    out = io.StringIO()
    bar = PlainProgress(3, desc="eval", unit="img", every_s=0.0, file=out)
    for _ in range(3):
        bar.update(1)
    bar.set_postfix(loss="0.5")
    bar.close()
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "eval: 0/3 img (0%)"
    assert [line.split(",")[0] for line in lines] == [
        "eval: 0/3 img (0%)",
        "eval: 1/3 img (33%)",
        "eval: 2/3 img (66%)",
        "eval: 3/3 img (100%)",
    ]
    assert "left" in lines[1] and "in all" in lines[-1] and lines[-1].endswith("loss=0.5")
    assert "\x1b[" not in out.getvalue() and "\r" not in out.getvalue()
