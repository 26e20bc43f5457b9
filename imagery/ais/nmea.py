"""NMEA 0183 lines to AIS position and static records."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from pyais.exceptions import AISBaseException, MissingPayloadException, UnknownMessageException
from pyais.messages import AISSentence, GatehouseSentence, NMEASentence, NMEASentenceFactory

from imagery.ais.records import (
    POSITION_TYPES,
    STATIC_TYPES,
    Position,
    Static,
    Tally,
    _clean_text,
    _imo,
    _open_binary,
    _plausible,
    _until_damage,
    capped_lines,
    parse_time_text,
)
from imagery.ais.rules import check_values, checked_position, checked_static

# Fragments of one message arrive within a few lines of each other; a part still missing this
# many lines later is lost, and waiting longer risks joining parts of two different messages
# (sequence ids repeat every ten multi-part messages).
MAX_FRAGMENT_GAP = 100
# An NMEA sentence is at most 82 characters; with a tag block and a logger's timestamp column a
# line stays within a few hundred. A longer one is garbage (a binary file, a lost line break),
# skipped unread.
MAX_NMEA_LINE = 4096

# Optional timestamp column, optional tag block, then one sentence up to its checksum.
_SENTENCE = re.compile(rb"(\\[^\\]*\\)?([!$][A-Z]{4,5},[^*\s]*\*[0-9A-Fa-f]{2})")
# The first fragment of an AIS message (counted to spread a --received-at range).
_MESSAGE_START = re.compile(rb"![A-Z]{2}VD[MO],\d+,1,")
_SEPARATORS = b" \t,;|"


# --- NMEA: lines to sentences ----------------------------------------------------------------


@dataclass(slots=True)
class _Fragment:
    sentence: AISSentence
    own_time: int | None
    fallback: int | None
    group: str | None
    line_no: int


class _Clock:
    """`--received-at`: one time for every message, or a range spread evenly over the file's
    messages in order (the i-th of n messages at T1 + (T2 - T1) * i / (n - 1))."""

    def __init__(self, window: tuple[int, int] | None, count: int):
        self.window, self.count, self.index = window, count, -1

    @classmethod
    def for_file(cls, path: Path, window: tuple[int, int] | None) -> _Clock:
        count = 0
        if window and window[1] > window[0]:
            tally = Tally()  # thrown away: the import pass counts these lines itself
            with _open_binary(path) as handle:
                lines = _until_damage(nmea_lines(handle, tally), path, tally)
                count = sum(1 for line in lines if _MESSAGE_START.search(line))
        return cls(window, count)

    def tick(self, line: bytes) -> int | None:
        """The fallback time of the message this line starts, if it starts one."""
        if not self.window or not _MESSAGE_START.search(line):
            return None
        self.index += 1
        first, last = self.window
        if self.count <= 1:
            return first
        return first + math.floor((last - first) * self.index / (self.count - 1))


def nmea_lines(handle, tally: Tally) -> Iterator[bytes]:
    """The lines of an NMEA file (binary), overlong ones counted and skipped (capped_lines).
    A lone CR also ends a line (binary reading splits at LF only): a logger writing CR alone
    would otherwise hand over one line holding many sentences."""
    for line in capped_lines(handle, MAX_NMEA_LINE, tally):
        if b"\r" in line.rstrip(b"\r\n"):
            yield from line.splitlines(keepends=True)
        else:
            yield line


def _column_time(text: bytes) -> int | None:
    value = text.strip(_SEPARATORS)
    return parse_time_text(value.decode("ascii", "replace")) if value else None


def _parse_line(raw: bytes, tally: Tally) -> tuple[NMEASentence, int | None] | None:
    """One line to its sentence and the time the line itself gives (timestamp column or tag
    block), or None with the reason counted."""
    line = raw.strip()
    if not line:
        tally.skipped["blank_line"] += 1
        return None
    if line.startswith((b"#", b"//")):
        tally.skipped["comment_line"] += 1
        return None
    match = _SENTENCE.search(line)
    if not match:
        tally.rejected["malformed_line"] += 1
        return None
    prefix, suffix = line[: match.start()], line[match.end():]
    if _SENTENCE.search(suffix):
        # Sentences run together (a lost line break): the first is whole and checked by its
        # checksum; what follows is counted, not silently dropped.
        tally.rejected["malformed_line"] += 1
        suffix = b""
    line_time = _column_time(prefix)
    if prefix.strip(_SEPARATORS) and line_time is None:
        tally.rejected["bad_timestamp_column"] += 1
        return None
    if line_time is None and suffix.strip(_SEPARATORS):
        # A trailing column may be a time or anything else a logger appends (receiver id): a
        # number that is no plausible time (",2") is not one, and must not override $PGHP or
        # --received-at.
        trailing = _column_time(suffix)
        line_time = trailing if trailing is not None and _plausible(trailing) else None
    sentence = _produce(match.group(0), tally)
    if sentence is None:
        return None
    trusted, tag_time = _tag_block_time(sentence, tally)
    if not trusted:
        return None
    return sentence, tag_time if tag_time is not None else line_time


def _produce(text: bytes, tally: Tally) -> NMEASentence | None:
    try:
        sentence = NMEASentenceFactory.produce(text)
    except UnknownMessageException:
        tally.skipped["other_nmea_sentence"] += 1
        return None
    except (AISBaseException, ValueError, IndexError, TypeError):
        # pyais raises several kinds on malformed fields; all mean the same to us.
        tally.rejected["undecodable_sentence"] += 1
        return None
    if not sentence.is_valid:
        tally.rejected["bad_checksum"] += 1
        return None
    return sentence


def _tag_block_time(sentence: NMEASentence, tally: Tally) -> tuple[bool, int | None]:
    """(trusted, the tag block's `c:` time). A tag block failing its own checksum makes the
    sentence untrusted: its time or its group may be corrupt."""
    block = sentence.tag_block
    if block is None:
        return True, None
    block.init()
    if not block.is_valid:
        tally.rejected["bad_tag_block_checksum"] += 1
        return False, None
    stamp = block.receiver_timestamp
    return True, parse_time_text(stamp) if stamp else None


def _group_id(sentence: AISSentence) -> str | None:
    block = sentence.tag_block
    group = block.group if block is not None else None
    return f"g{group.group_id}" if group is not None else None


# --- NMEA: multi-part assembly ---------------------------------------------------------------


class _Assembler:
    """Joins the fragments of multi-part messages. Fragments of one message share a key (the
    tag block group, else talker, sequence id, channel and fragment count) and may arrive in
    any order; a message whose parts do not all arrive counts once as `incomplete_multipart`."""

    def __init__(self, tally: Tally):
        self.tally = tally
        self.pending: dict[tuple, dict[int, _Fragment]] = {}
        self.last_sweep = 0

    def add(self, frag: _Fragment) -> list[_Fragment] | None:
        sentence = frag.sentence
        if sentence.frag_cnt == 1:
            return [frag]
        self._sweep(frag.line_no)
        key = (frag.group or (sentence.talker_id, sentence.type, sentence.seq_id,
                              sentence.channel), sentence.frag_cnt)
        parts = self.pending.get(key)
        if parts is not None and sentence.frag_num in parts:
            # The same part again: the earlier message lost a part and a new one began.
            self._drop(key)
            parts = None
        if parts is None:
            parts = self.pending[key] = {}
        parts[sentence.frag_num] = frag
        if len(parts) < sentence.frag_cnt:
            return None
        del self.pending[key]
        return [parts[n] for n in sorted(parts)]

    def _drop(self, key: tuple) -> None:
        del self.pending[key]
        self.tally.rejected["incomplete_multipart"] += 1

    def _sweep(self, line_no: int) -> None:
        if line_no - self.last_sweep < MAX_FRAGMENT_GAP:
            return
        self.last_sweep = line_no
        for key, parts in list(self.pending.items()):
            if line_no - max(p.line_no for p in parts.values()) > MAX_FRAGMENT_GAP:
                self._drop(key)

    def finish(self) -> None:
        for key in list(self.pending):
            self._drop(key)


def _message_time(parts: list[_Fragment]) -> int | None:
    for frag in parts:
        if frag.own_time is not None:
            return frag.own_time
    return next((frag.fallback for frag in parts if frag.fallback is not None), None)


def _nmea_records(lines: Iterable[bytes], tally: Tally,
                 clock: _Clock | None = None) -> Iterator[Position | Static]:
    """Lines of an NMEA file to position and static records, every loss counted in `tally`."""
    clock = clock or _Clock(None, 0)
    assembler = _Assembler(tally)
    pghp_time: int | None = None
    for line_no, raw in enumerate(lines, 1):
        fallback = clock.tick(raw)
        parsed = _parse_line(raw, tally)
        if parsed is None:
            continue
        sentence, line_time = parsed
        if isinstance(sentence, GatehouseSentence):
            pghp_time = math.floor(sentence.timestamp.replace(tzinfo=UTC).timestamp())
            continue
        if not isinstance(sentence, AISSentence):
            tally.skipped["other_nmea_sentence"] += 1
            continue
        own = line_time if line_time is not None else pghp_time
        parts = assembler.add(_Fragment(sentence, own, fallback, _group_id(sentence), line_no))
        if parts:
            yield from _decode(parts, tally)
    assembler.finish()


def _decode(parts: list[_Fragment], tally: Tally) -> Iterator[Position | Static]:
    sentences = [p.sentence for p in parts]
    sentence = AISSentence.assemble_from_iterable(sentences) if len(sentences) > 1 else sentences[0]
    tally.messages += 1
    try:
        message = sentence.decode()
    except MissingPayloadException:
        tally.rejected["empty_payload"] += 1
        return
    except (AISBaseException, ValueError, IndexError, TypeError):
        tally.rejected["undecodable_message"] += 1
        return
    t = _message_time(parts)
    if t is None:
        tally.rejected["no_time"] += 1
        return
    tally.timed += 1
    if not _plausible(t):
        tally.rejected["implausible_time"] += 1
        return
    yield from _message_records(message, t, tally)


def _message_records(message: object, t: int, tally: Tally) -> Iterator[Position | Static]:
    """One decoded message to its records; a message with any value outside `RULES` is
    rejected whole (a type 19 carries a position and static data: both go)."""
    msg_type = getattr(message, "msg_type", None)
    mmsi = getattr(message, "mmsi", None)
    if not isinstance(mmsi, int) or check_values({"mmsi": mmsi})[0]:
        tally.rejected["bad_mmsi"] += 1
        return
    if msg_type not in POSITION_TYPES and msg_type not in STATIC_TYPES:
        tally.skipped[f"message_type_{msg_type}"] += 1
        return
    position = static = None
    if msg_type in POSITION_TYPES:
        problem, position = _position(message, mmsi, t)
        if problem:
            tally.rejected[problem] += 1
            return
    if msg_type in STATIC_TYPES:
        problem, static = _static(message, mmsi, t)
        if problem:
            tally.rejected[problem] += 1
            return
    yield from (record for record in (position, static) if record is not None)


def _position(message: object, mmsi: int, t: int) -> tuple[str | None, Position | None]:
    msg_type = getattr(message, "msg_type", None)
    speed, course = getattr(message, "speed", None), getattr(message, "course", None)
    if msg_type == 27:
        # Type 27 codes "not available" as 63 kn and 511 degrees (others: 102.3 kn, 360).
        speed = None if speed == 63 else speed
        course = None if course == 511 else course
    return checked_position(mmsi, t, getattr(message, "lon", None), getattr(message, "lat", None),
                            speed, course, getattr(message, "heading", None),
                            getattr(message, "status", None), msg_type)


def _static(message: object, mmsi: int, t: int) -> tuple[str | None, Static | None]:
    def dimension(a: str, b: str) -> int:
        return (getattr(message, a, 0) or 0) + (getattr(message, b, 0) or 0)

    return checked_static(
        mmsi, t, name=_clean_text(getattr(message, "shipname", None)),
        imo=_imo(getattr(message, "imo", None)),
        callsign=_clean_text(getattr(message, "callsign", None)),
        ship_type=int(getattr(message, "ship_type", None) or 0),
        length=dimension("to_bow", "to_stern"), width=dimension("to_port", "to_starboard"))
