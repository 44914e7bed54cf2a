"""Drawing detections (``ssd_jax.visualize``)."""

from __future__ import annotations

import numpy as np

from ssd_jax.visualize import draw_detections


def _random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_draw_detections_draws_in_box_and_keeps_input():
    image = np.full((64, 80, 3), 255, np.uint8)
    original = image.copy()
    drawn = draw_detections(
        image,
        np.array([[10.0, 20.0, 50.0, 60.0], [0, 0, 5, 5]]),
        np.array([0.9, 0.1]),
        np.array([1, 0]),
        ("a", "b"),
        score_thr=0.3,
    )
    np.testing.assert_array_equal(image, original)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (drawn[20:61, 10:51] != 255).any()  # the kept box's outline
    assert (drawn[61:, :] == 255).all()  # nothing below the box (caption goes above it)


def test_tags_of_crowded_boxes_never_overlap():
    """Many overlapping boxes (the case where tags used to hide each other): every placed tag is
    inside the image and disjoint from the others; the best-scoring box keeps its tag above."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from ssd_jax.visualize import place_tags

    box = st.tuples(st.floats(0, 90), st.floats(0, 70)).map(
        lambda xy: (xy[0], xy[1], xy[0] + 20.0, xy[1] + 15.0)
    )

    @settings(max_examples=200, derandomize=True, deadline=None)
    @given(
        st.lists(box, min_size=1, max_size=25),
        st.lists(st.tuples(st.integers(10, 40), st.integers(6, 14)), min_size=25, max_size=25),
    )
    def check(boxes, sizes):
        tags = place_tags(boxes, sizes[: len(boxes)], 110, 90)
        placed = [t for t in tags if t is not None]
        for k, a in enumerate(placed):
            assert 0 <= a[0] and a[2] <= 110 and 0 <= a[1] and a[3] <= 90
            for b in placed[k + 1 :]:
                assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])
        x1, y1 = boxes[0][:2]
        h = sizes[0][1]
        if y1 >= h and x1 + sizes[0][0] <= 110:  # room above the first box
            assert tags[0] == (x1, y1 - h, x1 + sizes[0][0], y1)

    check()


def test_a_crowded_picture_shows_every_tag_it_can_in_full():
    """Three boxes on one spot: three tags, stacked, each readable (its own colour)."""
    from ssd_jax.visualize import class_color

    image = np.full((120, 120, 3), 255, np.uint8)
    boxes = np.array([[40, 40, 80, 80], [41, 41, 81, 81], [42, 42, 82, 82]], np.float32)
    drawn = draw_detections(
        image, boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 1, 2]), ("a", "b", "c"), score_thr=0.3
    )
    for label in range(3):
        assert (drawn == class_color(label)).all(axis=-1).sum() > 20, label
