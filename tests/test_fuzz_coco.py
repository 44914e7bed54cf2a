"""Fuzzing ``CocoSource``: a damaged annotation file loads, or raises CocoFormatError naming it.

Cases start from a small valid COCO file and delete fields or sections, change value types
(strings for numbers, null, lists, objects, booleans, negative, NaN, infinite or huge numbers),
duplicate entries (so ids repeat), point annotations at images or categories that do not exist,
and nest entries or sections wrongly. ``CocoSource`` must either load — every annotation then
kept as a finite box or dropped and counted in ``dropped`` ("a corrupt image or box is skipped
and counted") — or raise ``CocoFormatError`` naming the file; nothing else, and never hang
(``bounded``). Hypothesis runs derandomized on a fixed budget; the module prints the count.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import faulthandler
import json
import logging
import os
import signal
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz_cases import fuzz
from ssd_jax.data.coco import CocoFormatError, CocoSource

SECONDS = 10  # hard limit per load; the files are a few KiB
CASES: collections.Counter[tuple[str, str]] = collections.Counter()  # (test, outcome) -> cases
WATCHDOG = {"file": sys.stderr}  # where faulthandler prints the stacks; see ``harness``


class Hang(BaseException):
    """Raised by ``bounded``; a BaseException so that no reader's ``except`` can swallow it."""


@contextlib.contextmanager
def bounded(seconds: float = SECONDS):
    """Fail the block if it runs past ``seconds`` (SIGALRM); if C code never returns to Python
    to notice, faulthandler kills the run at 3x, printing every thread's stack."""

    def alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(3 * seconds, exit=True, file=WATCHDOG["file"])
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


def current_test() -> str:
    """The running test's function name (parameters left out)."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "?")  # "tests/x.py::test_y[param] (call)"
    return test.split("::")[-1].split(" ")[0].split("[")[0]


def outcome(ann_file, filter_train: bool = False) -> CocoSource | CocoFormatError:
    """The loaded source, checked for consistency, or the CocoFormatError naming the file.

    Any other exception propagates (failing the test), and so does running past ``SECONDS``.
    A loaded source must hold finite float32 xyxy boxes (w, h >= 1) with valid labels, and
    (without ``filter_train``) account for every annotation: kept in a record, or dropped and
    counted.
    """
    logging.disable(logging.WARNING)  # every dropped box is logged; thousands of cases here
    try:
        with bounded():
            source = CocoSource(ann_file, ann_file.parent, filter_train=filter_train)
            records = [source[i] for i in range(len(source))]
    except CocoFormatError as e:
        assert str(ann_file) in str(e), f"error does not name the file: {e}"
        CASES[current_test(), "CocoFormatError"] += 1
        return e
    except Hang as e:
        raise AssertionError(f"CocoSource({ann_file}) {e}") from None
    finally:
        logging.disable(logging.NOTSET)
    for record in records:
        boxes, labels = record["boxes"], record["labels"]
        assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)
        assert np.isfinite(boxes).all(), boxes
        assert (boxes[:, 2] - boxes[:, 0] >= 1).all() and (boxes[:, 3] - boxes[:, 1] >= 1).all()
        assert ((0 <= labels) & (labels < len(source.cat_ids))).all()
        assert record["height"] > 0 and record["width"] > 0
    if not filter_train:
        annotations = json.loads(ann_file.read_text())["annotations"]
        kept = sum(len(r["labels"]) for r in records)
        assert kept + source.crowd + sum(source.dropped.values()) == len(annotations), (
            source.dropped
        )
    CASES[current_test(), "loaded"] += 1
    return source


@pytest.fixture(scope="module", autouse=True)
def harness(request):
    """Point the watchdog at the terminal (pytest's captured output is lost when faulthandler
    ends the process); at the end, print how many cases CocoSource was given, by test/outcome."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        WATCHDOG["file"] = os.fdopen(os.dup(2), "w")
    yield
    per_test = collections.defaultdict(collections.Counter)
    for (test, result), n in CASES.items():
        per_test[test][result] += n
    lines = [f"fuzz CocoSource: {sum(CASES.values())} cases"]
    lines += [f"  {test}: {dict(sorted(c.items()))}" for test, c in sorted(per_test.items())]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    with capture.global_and_fixture_disabled():
        reporter.write_line("\n".join(lines))
    WATCHDOG["file"].close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz_coco")


def write(workdir, data, name: str = "ann.json"):
    path = workdir / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def ann(ann_id, image_id, bbox, category_id=1, **extra) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": float(bbox[2] * bbox[3]),
        "iscrowd": 0,
        **extra,
    }


BASE = {
    "info": {"description": "fuzz"},
    "images": [
        {"id": 1, "file_name": "a.jpg", "height": 64, "width": 48},
        {"id": 2, "file_name": "b.jpg", "height": 40, "width": 40},
        {"id": 5, "file_name": "c.jpg", "height": 20, "width": 30},
    ],
    "annotations": [
        ann(1, 1, [1, 2, 10, 12]),
        ann(2, 2, [5, 5, 20, 20], 3),
        ann(3, 1, [0, 0, 5, 5], 3, iscrowd=1),
        ann(4, 5, [2.5, 3.5, 6, 7]),
        ann(7, 2, [30, 30, 20, 20], 1, ignore=0),
    ],
    "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
}
SECTIONS = ["images", "annotations", "categories"]
FIELDS = {
    "images": ["id", "file_name", "height", "width"],
    "annotations": ["id", "image_id", "category_id", "bbox", "area", "iscrowd", "ignore"],
    "categories": ["id", "name"],
}
VALUE = st.one_of(
    st.integers(-3, 8).map(str),
    st.text(max_size=3),
    st.none(),
    st.booleans(),
    st.integers(-5, 10),
    st.floats(),
    st.sampled_from([float("nan"), float("inf"), -1e300]),
    st.integers(2**63 - 1, 10**30),
    st.lists(st.integers(0, 9), max_size=5),
    st.dictionaries(st.sampled_from(["id", "x"]), st.integers(0, 3), max_size=2),
)
EDIT = st.one_of(
    st.tuples(
        st.just("delete_field"),
        st.sampled_from(SECTIONS),
        st.integers(0, 9),
        st.sampled_from(sorted({f for fs in FIELDS.values() for f in fs})),
    ),
    st.tuples(st.just("delete_section"), st.sampled_from(SECTIONS)),
    st.tuples(
        st.just("retype"),
        st.sampled_from(SECTIONS),
        st.integers(0, 9),
        st.sampled_from(sorted({f for fs in FIELDS.values() for f in fs})),
        VALUE,
    ),
    st.tuples(
        st.just("bbox_number"),
        st.integers(0, 9),
        st.integers(0, 3),
        st.one_of(st.floats(), st.integers(-100, 100), VALUE),
    ),
    st.tuples(st.just("duplicate"), st.sampled_from(SECTIONS), st.integers(0, 9)),
    st.tuples(
        st.just("dangling"),
        st.integers(0, 9),
        st.sampled_from(["image_id", "category_id"]),
        st.integers(-2, 99),
    ),
    st.tuples(st.just("wrap_entry"), st.sampled_from(SECTIONS), st.integers(0, 9)),
    st.tuples(
        st.just("wrap_section"),
        st.sampled_from(SECTIONS),
        st.sampled_from(["object", "list_of_lists", "value"]),
        VALUE,
    ),
)


def apply(data: dict, edit: tuple) -> None:
    """One edit of ``data`` in place (indices taken modulo the section's length)."""
    action, *args = edit
    if action == "delete_section":
        data.pop(args[0], None)
        return
    if action == "wrap_section":
        section, how, value = args
        entries = data.get(section)
        data[section] = {"object": {"0": entries}, "list_of_lists": [entries], "value": value}[how]
        return
    if action in ("bbox_number", "dangling"):
        section, (index, *rest) = "annotations", args
    else:
        section, index, *rest = args
    entries = data.get(section)
    if not isinstance(entries, list) or not entries:
        return
    index %= len(entries)
    entry = entries[index]
    if action == "duplicate":
        entries.append(copy.deepcopy(entry))
    elif action == "wrap_entry":
        entries[index] = [entry]
    elif not isinstance(entry, dict):
        return
    elif action == "delete_field":
        entry.pop(rest[0], None)
    elif action in ("retype", "dangling"):
        entry[rest[0]] = rest[1]
    elif action == "bbox_number" and isinstance(entry.get("bbox"), list) and entry["bbox"]:
        entry["bbox"][rest[0] % len(entry["bbox"])] = rest[1]


def test_the_base_file_loads_as_expected(workdir):
    source = outcome(write(workdir, BASE))
    assert isinstance(source, CocoSource) and len(source) == 3
    assert source.dropped == collections.Counter() and source.crowd == 1
    np.testing.assert_array_equal(source[0]["boxes"], [[1, 2, 11, 14]])


@fuzz(700)
@given(edits=st.lists(EDIT, min_size=1, max_size=4), filter_train=st.booleans())
def test_damaged_annotation_files_load_or_are_refused(workdir, edits, filter_train):
    data = copy.deepcopy(BASE)
    for edit in edits:
        apply(data, edit)
    outcome(write(workdir, data), filter_train)


@fuzz(150)
@given(
    text=st.text(alphabet='{}[]":,0123456789.-eE nulltruefalseNaInfiy\\', max_size=200),
    fraction=st.floats(0, 1),
)
def test_random_and_cut_json_text(workdir, text, fraction):
    """Random JSON-ish text, and the base file cut short and followed by it."""
    outcome(write(workdir, text))
    base = json.dumps(BASE)
    outcome(write(workdir, base[: int(fraction * len(base))] + text))


# ---- what each kind of damage gives (and what fuzzing found) ----


def with_edit(section: str, index: int, key: str, value) -> dict:
    data = copy.deepcopy(BASE)
    data[section][index][key] = value
    return data


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("images", "height", "64"),
        ("images", "width", -48),
        ("images", "height", float("nan")),
        ("images", "width", float("inf")),
        ("images", "height", 10**30),
        ("images", "id", "1"),
        ("images", "file_name", 7),
        ("annotations", "image_id", [1]),
        ("annotations", "id", None),
        ("annotations", "category_id", {"id": 1}),
        ("annotations", "area", "120"),
        ("annotations", "iscrowd", "0"),
        ("annotations", "bbox", [1, 2, 10]),
        ("annotations", "bbox", ["1", 2, 10, 12]),
        ("annotations", "bbox", [10**400, 2, 10, 12]),
        ("categories", "id", 1.0),
        ("categories", "name", None),
    ],
)
def test_values_of_the_wrong_type_are_refused_naming_the_entry(workdir, section, key, value):
    """Found by fuzzing: each of these raised TypeError, OverflowError or a ValueError without
    the file name (from numpy, pycocotools or os.path.join), or was silently misread."""
    result = outcome(write(workdir, with_edit(section, 1, key, value)))
    assert isinstance(result, CocoFormatError), result
    assert f"{section}[1] (id " in str(result) and f" {key} is not " in str(result)


@pytest.mark.parametrize(
    "bbox,reason",
    [
        ([30, 10, -8, 20], "empty_intersection"),
        ([float("nan"), 4, 10, 10], "non_finite"),
        ([0, 0, float("inf"), 10], "non_finite"),
        ([-float("inf"), 0, 5, 5], "non_finite"),
        ([-1e300, 0, 2e300, 10], "non_finite"),  # finite in float64, ±inf as the float32 boxes
        ([2, 2, 0.5, 9], "degenerate"),
    ],
)
def test_bad_boxes_are_dropped_and_counted(workdir, bbox, reason):
    result = outcome(write(workdir, with_edit("annotations", 1, "bbox", bbox)))
    assert isinstance(result, CocoSource)
    assert result.dropped == collections.Counter({reason: 1}) and result.crowd == 1


def test_references_to_nothing_are_dropped_and_counted(workdir):
    data = copy.deepcopy(BASE)
    data["annotations"][0]["image_id"] = 99
    data["annotations"][1]["category_id"] = 42
    result = outcome(write(workdir, data))
    assert result.dropped == collections.Counter(unknown_image=1, unknown_category=1)
    assert result.crowd == 1


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: d.pop("categories"), "missing or non-list 'categories'"),
        (lambda d: d.update(images={"0": d["images"]}), "missing or non-list 'images'"),
        (
            lambda d: d["annotations"].append(copy.deepcopy(d["annotations"][0])),
            "annotations[5] repeats id 1 of annotations[0]",
        ),
        (lambda d: d["images"].__setitem__(0, [d["images"][0]]), "images[0] lacks"),
    ],
)
def test_structural_damage_is_refused_naming_the_problem(workdir, damage, message):
    data = copy.deepcopy(BASE)
    damage(data)
    result = outcome(write(workdir, data))
    assert isinstance(result, CocoFormatError) and message in str(result)


@pytest.mark.parametrize("text", ["[" * 100_000, '{"images": [{"id": ' + "9" * 5000 + "}]}"])
def test_deeply_nested_or_huge_number_json_is_refused(workdir, text):
    """Found by fuzzing: json raised RecursionError, and ValueError (integer of more than 4300
    digits) without the file name."""
    result = outcome(write(workdir, text))
    assert isinstance(result, CocoFormatError) and "unreadable JSON" in str(result)
