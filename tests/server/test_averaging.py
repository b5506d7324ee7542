"""Late-round averaging (``server.averaging``) on tiny hand-computed state dicts."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord

from server.averaging import RESUME_KEY, LateAverage, average_states


def _state(w: list[float], mean: float, batches: int) -> dict[str, torch.Tensor]:
    return {
        "conv.weight": torch.tensor(w),
        "bn.running_mean": torch.tensor([mean]),
        "bn.num_batches_tracked": torch.tensor(batches),
    }


def test_mean_of_known_states_batchnorm_statistics_included() -> None:
    out = average_states(
        [_state([1.0, 2.0], 0.0, 3), _state([3.0, 6.0], 1.0, 5), _state([5.0, 1.0], 5.0, 7)]
    )
    assert out["conv.weight"].tolist() == [3.0, 3.0]
    assert out["bn.running_mean"].tolist() == [2.0]
    assert out["bn.num_batches_tracked"].item() == 7  # integers: the last state's value
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    assert out["conv.weight"].dtype == torch.float32


def test_states_that_do_not_match_are_named_errors() -> None:
    with pytest.raises(ValueError, match="at least one"):
        average_states([])
    other = {"conv.weight": torch.tensor([1.0, 2.0])}
    with pytest.raises(ValueError, match="keys"):
        average_states([other, _state([1.0, 2.0], 0.0, 1)])
    with pytest.raises(ValueError, match=r"conv.weight: shapes"):
        average_states([_state([1.0], 0.0, 1), _state([1.0, 2.0], 0.0, 1)])


def test_the_window_keeps_the_last_k_rounds_and_survives_a_checkpoint() -> None:
    late = LateAverage(2)
    for rnd, w in enumerate([[0.0, 0.0], [2.0, 4.0], [4.0, 8.0]], start=1):
        late.add(rnd, ArrayRecord(_state(w, float(rnd), rnd)))
    assert late.rounds == [2, 3]
    result = late.result()
    assert result is not None
    assert result.to_torch_state_dict()["conv.weight"].tolist() == [3.0, 6.0]
    assert result.to_torch_state_dict()["bn.running_mean"].tolist() == [2.5]

    restored = LateAverage(2)
    restored.load_state_dict({"rng": {}, **late.state_dict()})
    assert restored.rounds == [2, 3]
    again = restored.result()
    assert again is not None
    assert torch.equal(again.to_torch_state_dict()["conv.weight"], torch.tensor([3.0, 6.0]))


def test_off_by_default_keeps_nothing() -> None:
    late = LateAverage(0)
    late.add(1, ArrayRecord(_state([1.0], 0.0, 1)))
    assert late.rounds == [] and late.result() is None and late.state_dict() == {}
    late.load_state_dict({RESUME_KEY: [{"round": 1, "model": _state([1.0], 0.0, 1)}]})
    assert late.rounds == []
    with pytest.raises(ValueError, match="average-last = -1"):
        LateAverage(-1)
