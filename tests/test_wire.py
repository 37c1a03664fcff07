import pytest
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import TextMessage

from traitortrack.web.wire import text_frame


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536, 200_000])
def test_a_frame_written_directly_is_the_frame_wsproto_would_send(size):
    text = ("é" * size)[: size // 2] + "x" * (size - size // 2)
    assert text_frame(text) == Connection(ConnectionType.SERVER).send(TextMessage(data=text))


def test_walls_sharing_a_frame_share_its_bytes():
    frame = '{"type":"events","events":[]}' * 100
    assert text_frame(frame) is text_frame(frame)
