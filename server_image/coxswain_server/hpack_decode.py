"""HPACK (RFC 7541) request-header decoding for the gRPC transport.

Why not `hpack.Decoder`: decoding took a fifth of the gRPC loop's busy time at 32 concurrent
calls, most of it per-field generality (a HeaderTuple and a debug log line per field, text
checks) that a server reading a few headers does not need. The static table and the Huffman
code are the `hpack` package's; this is only the loop over one header block.
"""

from __future__ import annotations

from collections import deque

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

STATIC = HeaderTable.STATIC_TABLE
STATIC_LEN = len(STATIC)
ENTRY_OVERHEAD = 32  # RFC 7541 section 4.1


class HpackError(ValueError):
    """A header block that does not decode: the connection cannot go on (COMPRESSION_ERROR)."""


class HeaderDecoder:
    """One connection's decoder: its dynamic table lives as long as the connection."""

    def __init__(self, max_table_size: int = 4096, max_list_size: int = 64 * 1024) -> None:
        self.max_list_size = max_list_size  # decoded size (names, values, 32 each) of one block
        self.limit = max_table_size  # what we allow (SETTINGS_HEADER_TABLE_SIZE, default 4096)
        self.max_size = max_table_size  # what the encoder chose, at most `limit`
        self.size = 0
        self.table: deque[tuple[bytes, bytes]] = deque()  # newest first
        self._huffman: dict[bytes, bytes] = {}  # recent Huffman strings (values repeat)

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        pos, end = 0, len(block)
        try:
            while pos < end:
                b = block[pos]
                if b & 0x80:  # indexed field
                    index, pos = _integer(block, pos, 7)
                    headers.append(self._entry(index))
                elif b & 0x40:  # literal, added to the table
                    name, value, pos = self._literal(block, pos, 6)
                    headers.append((name, value))
                    self._add(name, value)
                elif b & 0x20:  # table size update
                    size, pos = _integer(block, pos, 5)
                    if size > self.limit:
                        raise HpackError(f"a table size of {size} is over the {self.limit} allowed")
                    self.max_size = size
                    self._evict()
                else:  # literal without indexing (0000) or never indexed (0001)
                    name, value, pos = self._literal(block, pos, 4)
                    headers.append((name, value))
        except IndexError:
            raise HpackError("a header block ends in the middle of a field") from None
        if sum(len(n) + len(v) + ENTRY_OVERHEAD for n, v in headers) > self.max_list_size:
            # one byte can name a 4 KiB table entry: bound what a block expands to
            raise HpackError(f"the request's headers are over {self.max_list_size} bytes")
        return headers

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= STATIC_LEN:
            return STATIC[index - 1]
        i = index - STATIC_LEN - 1
        if 0 <= i < len(self.table):
            return self.table[i]
        raise HpackError(f"header index {index} is not in the table")

    def _literal(self, block: bytes, pos: int, prefix: int) -> tuple[bytes, bytes, int]:
        index, pos = _integer(block, pos, prefix)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = self._string(block, pos)
        value, pos = self._string(block, pos)
        return name, value, pos

    def _string(self, block: bytes, pos: int) -> tuple[bytes, int]:
        huffman = block[pos] & 0x80
        length, pos = _integer(block, pos, 7)
        end = pos + length
        if end > len(block):
            raise HpackError("a header string runs past the end of its block")
        raw = block[pos:end]
        if not huffman:
            return raw, end
        text = self._huffman.get(raw)
        if text is None:
            try:
                text = decode_huffman(raw)
            except Exception as exc:  # hpack raises its own HPACKDecodingError
                raise HpackError(f"a Huffman-coded header does not decode: {exc}") from None
            if len(self._huffman) > 256:
                self._huffman.clear()
            self._huffman[raw] = text
        return text, end

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + ENTRY_OVERHEAD
        if size > self.max_size:  # an entry larger than the table empties it (section 4.4)
            self.table.clear()
            self.size = 0
            return
        self.table.appendleft((name, value))
        self.size += size
        self._evict()

    def _evict(self) -> None:
        table = self.table
        while self.size > self.max_size and table:
            name, value = table.pop()
            self.size -= len(name) + len(value) + ENTRY_OVERHEAD


def _integer(block: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """An HPACK integer (section 5.1) starting at `pos`; returns it and the next position."""
    mask = (1 << prefix) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        b = block[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos
        if shift > 28:
            raise HpackError("a header integer longer than 4 bytes")
