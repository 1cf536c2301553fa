"""A grpclib codec that spares the check path most of betterproto's cost.

betterproto (pure Python) spends ~50 us parsing a check request and ~150-250 us building and
serialising its answer, several times what the decision itself costs. Check traffic repeats:
the same (customer, feature, options) bytes arrive again and again, and answers repeat until
usage or the catalog changes. So:

- ``decode``: request bytes -> the parsed SDK message, memoised in a bounded LRU (the handlers
  treat requests as read-only); only small requests (checks) are kept, so the memo holds a
  few tens of MB at most, never 20,000 usage reports of up to 1 MiB each;
- ``encode``: a handler may return :class:`Encoded` (bytes it already has, e.g. from
  :class:`AnswerCache`) instead of a message; anything else is encoded by betterproto as usual.

Everything is still the SDK's generated classes; only the repeated work is skipped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from grpclib.encoding.proto import ProtoCodec


class Encoded:
    """A response already serialised; the codec sends its bytes as they are."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __bytes__(self) -> bytes:
        return self.data


class _Lru:
    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self.items[key] = value
        if len(self.items) > self.size:
            self.items.popitem(last=False)


MAX_CACHED_REQUEST_BYTES = 1024  # a check request is a few hundred bytes


class CachingCodec(ProtoCodec):
    def __init__(self, size: int = 20_000) -> None:
        self._requests = _Lru(size)

    def encode(self, message: Any, message_type: type[Any]) -> bytes:
        if isinstance(message, Encoded):
            return message.data
        return super().encode(message, message_type)

    def decode(self, data: bytes, message_type: type[Any]) -> Any:
        if len(data) > MAX_CACHED_REQUEST_BYTES:
            return message_type.FromString(data)
        key = (message_type, data)
        cached = self._requests.get(key)
        if cached is None:
            cached = message_type.FromString(data)
            self._requests.put(key, cached)
        return cached


class AnswerCache:
    """Serialised answers by the values they are made of (bounded LRU)."""

    def __init__(self, size: int = 20_000) -> None:
        self._answers = _Lru(size)
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, build: Callable[[], Any]) -> Encoded:
        data = self._answers.get(key)
        if data is None:
            self.misses += 1
            data = bytes(build())
            self._answers.put(key, data)
        else:
            self.hits += 1
        return Encoded(data)
