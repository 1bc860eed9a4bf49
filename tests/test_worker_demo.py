"""``deepbrainprint demo``, the README's main command: real heads over real associations, planted cases reported."""

from __future__ import annotations

import pytest

from worker.demo import COLIN27, plan, run_demo


def test_a_bare_machine_still_has_three_heads(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    if not COLIN27.exists():
        pytest.skip("Colin27 (mricron-data) is not installed")
    import sys

    import numpy as np
    import SimpleITK as sitk

    from worker import demo

    monkeypatch.setattr(demo, "SHARED_DATA", tmp_path / "absent")
    monkeypatch.setitem(sys.modules, "nilearn.datasets", None)  # nilearn not installed
    heads = demo.load_heads()
    assert len(heads) == 3 and "Colin27" in heads
    colin, *others = (sitk.GetArrayFromImage(image).astype(np.float32) for image in heads.values())
    for other in others:
        assert other.shape == colin.shape and np.corrcoef(colin.ravel(), other.ravel())[0, 1] < 0.95


def test_plan_plants_a_duplicate_and_a_mismatch() -> None:
    for heads in ({"Colin27": 1, "MNI152": 2, "real": 3}, {"Colin27": 1, "Colin27 warped #1": 2, "Colin27 warped #2": 3}):
        for quick in (False, True):
            items = plan(heads, quick)  # type: ignore[arg-type]
            planted = {item.expected: item for item in items if item.planted}
            assert set(planted) == {"possible_duplicate", "identity_mismatch"}
            duplicate, mismatch = planted["possible_duplicate"], planted["identity_mismatch"]
            first_of = {i.patient_id: i.head for i in items if not i.planted and i.expected == "new_patient"}
            assert duplicate.patient_id not in first_of and duplicate.head in first_of.values()
            assert mismatch.patient_id in first_of and mismatch.head != first_of[mismatch.patient_id]


@pytest.mark.slow
def test_quick_demo_prints_a_verdict_for_every_series(tmp_path) -> None:  # type: ignore[no-untyped-def]
    if not COLIN27.exists():
        pytest.skip("Colin27 (mricron-data) is not installed")
    import torch

    torch.set_num_threads(1)
    lines: list[str] = []
    assert run_demo(home=tmp_path / "home", quick=True, echo=lines.append) == 0
    text = "\n".join(lines)
    assert "NO VERDICT" not in text
    assert text.count("Planted #") == 2
    assert "DEMO-D" in text and "possible_duplicate" in text
    assert "4 series" in text
