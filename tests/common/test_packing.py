"""One array per record on the wire: what unpacks is what was packed, byte for byte, a
signed instruction still verifies at the site, and an index that does not describe its
arrays is refused with the record and the fault named."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.app.message.message import get_descendant_object_ids

from common.packing import (
    INDEX,
    PACKED,
    PACKING,
    STYPE,
    PackingError,
    pack_content,
    pack_message,
    packing_mod,
    unpack_content,
)
from common.signing import arrays_hash

pytestmark = pytest.mark.usefixtures("flower_task")


def _model() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return ArrayRecord(
        OrderedDict(
            [
                ("conv.weight", Array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32))),
                ("conv.bias", Array(np.zeros(4, np.float32))),
                ("bn.num_batches_tracked", Array(np.array(7, np.int64))),  # a 0-d tensor
                ("empty", Array(np.zeros((0, 5), np.float16))),
                ("fortran", Array(np.asfortranarray(rng.normal(size=(3, 2))))),
            ]
        )
    )


def _content() -> RecordDict:
    return RecordDict(
        {
            "arrays": _model(),
            "scales": ArrayRecord({"hepafed.update": Array(np.ones(3, np.float32))}),
            "config": ConfigRecord({"server-round": 2}),
            "metrics": MetricRecord({"loss": 0.5}),
        }
    )


def _rec(content: RecordDict, key: str) -> ArrayRecord:
    return cast(ArrayRecord, content[key])


def _arr(content: RecordDict, key: str, name: str) -> Array:
    return cast(Array, _rec(content, key)[name])


def _index(content: RecordDict) -> dict[str, Any]:
    return dict(json.loads(str(cast(ConfigRecord, content[PACKING])[INDEX])))


def _with_index(content: RecordDict, index: dict[str, Any]) -> RecordDict:
    out = dict(content.items())
    out[PACKING] = ConfigRecord({INDEX: json.dumps(index)})
    return RecordDict(out)


def test_unpacked_arrays_equal_the_packed_ones_byte_for_byte() -> None:
    content = _content()
    packed = pack_content(content)
    assert (
        list(_rec(packed, "arrays")) == [PACKED] and _arr(packed, "arrays", PACKED).stype == STYPE
    )
    total = sum(len(a.data) for a in _rec(content, "arrays").values())
    assert len(_arr(packed, "arrays", PACKED).data) == total
    assert packed["scales"] is content["scales"]  # one array: sent as it is
    assert packed["config"] is content["config"] and packed["metrics"] is content["metrics"]
    back = unpack_content(packed)
    assert PACKING not in back and list(back) == list(content)
    assert list(_rec(back, "arrays")) == list(_rec(content, "arrays"))
    for name, a in _rec(content, "arrays").items():
        b = _arr(back, "arrays", name)
        assert (b.dtype, tuple(b.shape), b.stype, b.data) == (
            a.dtype, tuple(a.shape), a.stype, a.data,
        )  # fmt: skip
        np.testing.assert_array_equal(b.numpy(), a.numpy())
    assert arrays_hash(_rec(back, "arrays")) == arrays_hash(_rec(content, "arrays"))


def test_nothing_to_pack_leaves_the_content_as_it_is() -> None:
    content = RecordDict({"config": ConfigRecord({"a": 1}), "one": _content()["scales"]})
    assert pack_content(content) is content
    assert unpack_content(content) is content


def test_a_packed_model_is_a_handful_of_flower_objects_instead_of_one_per_tensor() -> None:
    """What a SuperNode pulls one request at a time: the default model's 65 tensors (their
    chunks not counted here; identical tensors are one object)."""
    import torch

    from common.config import RunConfig
    from common.models import build_model
    from common.weights import to_arrays

    torch.manual_seed(0)
    arrays = to_arrays(build_model(RunConfig()))
    assert len(arrays) == 65

    def objects(content: RecordDict) -> int:
        msg = Message(content, dst_node_id=3, message_type=MessageType.TRAIN)
        return len(get_descendant_object_ids(msg))

    plain = RecordDict({"arrays": arrays, "config": ConfigRecord({"x": 1})})
    assert objects(plain) > 50
    assert objects(pack_content(plain)) <= 6


def _tampered(change: Any) -> RecordDict:
    packed = pack_content(_content())
    index = _index(packed)
    change(packed, index)
    return _with_index(packed, index)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c, i: i["records"]["arrays"][0].__setitem__(4, 1),
         "the index accounts for .* bytes, the packed array holds"),
        (lambda c, i: i["records"]["arrays"][1].__setitem__(0, "conv.weight"),
         "name 'conv.weight' is empty or repeated"),
        (lambda c, i: i["records"]["arrays"][1].__setitem__(4, -4),
         "non-negative byte count"),
        (lambda c, i: i["records"]["arrays"][1].__setitem__(4, True), "non-negative byte"),
        (lambda c, i: i["records"]["arrays"][0][3].__setitem__(0, -1), "shape"),
        (lambda c, i: i["records"].__setitem__("metrics", i["records"]["arrays"]),
         "record 'metrics' must be an ArrayRecord with the one array"),
        (lambda c, i: i["records"].__setitem__("absent", i["records"]["arrays"]),
         r"the index lists records the message does not hold: \['absent'\]"),
        (lambda c, i: i["records"].pop("arrays") and i["records"].__setitem__(
            "scales", [["s", "float32", "numpy.ndarray", [3], 140]]),
         "record 'arrays' holds a packed array the index does not list"),
        (lambda c, i: i.__setitem__("version", 2), "not a version-1 packing index"),
        (lambda c, i: i.__setitem__("records", {}), "'records' must map"),
    ],
)  # fmt: skip
def test_an_index_that_does_not_describe_its_arrays_is_refused(change: Any, message: str) -> None:
    with pytest.raises(PackingError, match=message):
        unpack_content(_tampered(change))


def test_an_index_that_is_not_json_or_has_other_fields_is_refused() -> None:
    packed = pack_content(_content())
    bad = RecordDict({**dict(packed.items()), PACKING: ConfigRecord({INDEX: "{"})})
    with pytest.raises(PackingError, match="is not JSON"):
        unpack_content(bad)
    extra = ConfigRecord({INDEX: json.dumps(_index(packed)), "more": 1})
    with pytest.raises(PackingError, match="one field 'index'"):
        unpack_content(RecordDict({**dict(packed.items()), PACKING: extra}))
    with pytest.raises(PackingError, match="already holds"):
        pack_content(packed)


def _instruction(tmp_path: Any) -> tuple[Message, Any]:
    from pathlib import Path

    from common.config import RunConfig
    from server.trust import ServerTrust

    cfg = RunConfig().replace({"output.run-dir": str(tmp_path)})
    trust = ServerTrust(cfg, Path(str(tmp_path)), "run-1")
    content = RecordDict({"arrays": _model(), "config": ConfigRecord(cfg.to_flat())})
    msg = Message(content, dst_node_id=5, message_type=MessageType.TRAIN)
    return trust.sign_instruction(msg, 3), trust


def test_a_signed_packed_instruction_verifies_at_the_site_and_its_reply_leaves_packed(
    tmp_path: Any,
) -> None:
    """Server: sign, then pack. Site: the outermost mod unpacks, the trust check inside
    sees the arrays as the server signed them; the reply leaves packed."""
    from client.trust import check_instruction

    msg, _ = _instruction(tmp_path)
    model_hash = arrays_hash(_rec(msg.content, "arrays"))
    pack_message(msg)
    assert list(_rec(msg.content, "arrays")) == [PACKED]
    ctx = Context(run_id=3, node_id=5, node_config={}, state=RecordDict(), run_config={})
    seen: list[str] = []

    def inner(m: Message, c: Context) -> Message:
        check_instruction(m, c, {}, model_hash)  # TrustError if the signature fails
        seen.append(arrays_hash(_rec(m.content, "arrays")))
        return Message(RecordDict({"arrays": _model()}), reply_to=m)

    reply = packing_mod(msg, ctx, inner)
    assert seen == [model_hash]
    assert PACKING in reply.content and list(_rec(reply.content, "arrays")) == [PACKED]
    assert arrays_hash(_rec(unpack_content(reply.content), "arrays")) == arrays_hash(_model())


def test_an_unpacked_instruction_gets_an_unpacked_reply_and_a_bad_one_an_error() -> None:
    ctx = Context(run_id=3, node_id=5, node_config={}, state=RecordDict(), run_config={})
    calls: list[Message] = []

    def inner(m: Message, c: Context) -> Message:
        calls.append(m)
        return Message(RecordDict({"arrays": _model()}), reply_to=m)

    plain = Message(RecordDict({"arrays": _model()}), dst_node_id=5, message_type="train")
    assert PACKING not in packing_mod(plain, ctx, inner).content
    bad = Message(
        _tampered(lambda c, i: i["records"]["arrays"][0].__setitem__(4, 1)),
        dst_node_id=5,
        message_type=MessageType.TRAIN,
    )
    calls.clear()
    reply = packing_mod(bad, ctx, inner)
    assert calls == [] and reply.has_error()
    assert str(reply.error.reason).startswith("the server's message could not be unpacked: record")


def test_a_model_sent_to_every_site_is_packed_once_and_views_read_the_same_values() -> None:
    """``server.exchange``: one packed copy per batch, replies unpacked as views."""
    from common.array_views import array_view

    model = _model()
    shared: dict[int, Any] = {}
    a = pack_content(RecordDict({"arrays": model, "config": ConfigRecord({"n": 1})}), shared)
    b = pack_content(RecordDict({"arrays": model, "config": ConfigRecord({"n": 2})}), shared)
    assert _rec(a, "arrays") is _rec(b, "arrays")  # the same bytes, once
    other = pack_content(RecordDict({"arrays": _model()}), shared)
    assert _rec(other, "arrays") is not _rec(a, "arrays")  # equal values, another record
    viewed = unpack_content(a, copy=False)
    for name, array in _rec(viewed, "arrays").items():
        assert isinstance(array.data, memoryview)
        np.testing.assert_array_equal(array_view(array), cast(Array, model[name]).numpy())
        np.testing.assert_array_equal(array.numpy(), cast(Array, model[name]).numpy())
    assert arrays_hash(_rec(viewed, "arrays")) == arrays_hash(model)
