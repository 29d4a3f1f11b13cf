"""The plugin's threads leave the cores vLLM binds its model threads to."""

from __future__ import annotations

import os
import threading

import pytest
from pydantic import ValidationError

from latentguard.plugin import _affinity
from latentguard.plugin._settings import PluginSettings


def test_cpu_lists_parse_and_bad_ones_name_the_format() -> None:
    assert _affinity.parse_cpus("0,2-3") == {0, 2, 3}
    assert _affinity.parse_cpus("5") == {5}
    for bad in ("a", "3-1", "1-x"):
        with pytest.raises(ValueError, match="cpu list"):
            _affinity.parse_cpus(bad)
    with pytest.raises(ValidationError, match="cpus"):
        PluginSettings(cpus="two")
    assert PluginSettings(cpus="1-2").cpus == "1-2"


def test_auto_is_the_allowed_cores_minus_the_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_affinity, "allowed_cpus", lambda: {0, 1, 2, 3})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert _affinity.helper_cpus("auto") == {2, 3}
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert _affinity.helper_cpus("auto") is None  # nothing free: stay
    assert _affinity.helper_cpus("inherit") is None
    assert _affinity.helper_cpus("3") == {3}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_moving_a_thread_leaves_the_others_and_children_inherit() -> None:
    main = os.sched_getaffinity(0)
    target = {min(main)}
    seen: dict[str, set[int]] = {}

    def helper() -> None:
        _affinity.move_current_thread(target)
        seen["helper"] = os.sched_getaffinity(0)
        child = threading.Thread(target=lambda: seen.update(child=os.sched_getaffinity(0)))
        child.start()
        child.join()

    t = threading.Thread(target=helper)
    t.start()
    t.join()
    assert seen == {"helper": target, "child": target}
    assert os.sched_getaffinity(0) == main
