"""The neutral request and chunk types: validation, text rewriting across parts, usage flags."""
import pytest

from atp_server.accounting import Accountant
from atp_server.adapters.base import required_capabilities
from atp_server.routing.spec import ModelSpec
from atp_server.types import (AtpError, ChatRequest, Finish, ImagePart, MessageDetail, ResponseFormat,
                              ToolSpec)
from codec.errors import ErrorCode

MODEL = ModelSpec("m", "p", "up", price_in_per_mtok=1.0, price_out_per_mtok=2.0)


def test_new_fields_default_so_text_only_requests_stay_as_they_were():
    r = ChatRequest([("user", "hi")])
    r.validate()
    assert (r.details, r.tools, r.stop, r.n, r.response_format) == ((), (), (), 1, None)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"top_p": 1.5}, "top_p"), ({"presence_penalty": 3.0}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"), ({"stop": ("a",) * 5}, "stop"),
    ({"n": 2}, "n must be 1"), ({"details": (None, None)}, "details"),
])
def test_out_of_range_parameters_are_refused_by_name(kwargs, fragment):
    with pytest.raises(AtpError) as info:
        ChatRequest([("user", "hi")], **kwargs).validate()
    assert info.value.code == ErrorCode.INVALID_REQUEST and fragment in info.value.message


def test_map_text_rewrites_messages_and_text_parts_but_not_images():
    img = ImagePart("data:image/png;base64,AAAA")
    r = ChatRequest([("user", "a b")], details=(MessageDetail(parts=("a", img, "b")),))
    r.map_text(str.upper)
    assert r.messages == [("user", "A B")]
    assert r.details[0].parts == ("A", img, "B")


def test_required_capabilities_are_read_off_the_request():
    base = ChatRequest([("user", "x")], capabilities=("long_context",))
    assert required_capabilities(base) == ("long_context",)
    rich = ChatRequest([("user", "x")], tools=(ToolSpec("f"),), response_format=ResponseFormat("json_object"),
                       details=(MessageDetail(parts=("x", ImagePart("http://i/x.png"))),))
    assert required_capabilities(rich) == ("json", "tools", "vision")
    assert required_capabilities(ChatRequest([("user", "x")], response_format=ResponseFormat("text"))) == ()


def test_usage_is_estimated_unless_the_provider_reported_both_counts():
    req = ChatRequest([("user", "x" * 40)])
    exact = Accountant().usage(MODEL, req, Finish("stop", 10, 5, cached_input_tokens=4), 99)
    assert (exact.input_tokens, exact.output_tokens, exact.estimated, exact.cached_input_tokens) == (10, 5, False, 4)
    counted = Accountant().usage(MODEL, req, Finish("stop"), 7)
    assert (counted.input_tokens, counted.output_tokens, counted.estimated) == (10, 7, True)
    assert counted.cost_usd_micros == 10 * 1 + 7 * 2
