"""Raftstream's Python guest library.

Turns a module of plain functions into the batch exports of the world
raftstream:functions/stream-function. `raftstream job submit` copies the user's file next to this
one as `user.py` and builds both into one component with componentize-py (no WASI: no files,
sockets or clock; print() goes to the executor's log).

A user module defines any of:
    map(value[, event])              -> the new value (the key and time stay)
    flat_map(value[, event])         -> an iterable of values
    filter(value[, event])           -> truthy to keep the event
    key(value[, event])              -> the event's key
    reduce(accumulator, value[, key]) -> the new accumulator (None the first time for a key)
    reduce_group(accumulator, values[, key])
                                     -> the same, given all of a key's values in a batch at once
                                        (a list, in arrival order): one call per key and batch
                                        instead of one per value; define it or reduce
    process(key, state, values)      -> (new state or None to clear it, iterable of outputs: values,
                                        (key, value) pairs or {"key", "value", "timestamp_ms"})
Values, keys, accumulators and states are str; anything else returned becomes one (JSON for dicts
and lists).
"""

import json
import sys
from array import array
from collections import namedtuple
from itertools import accumulate, chain

from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import Events, FannedOut, OptionalStrings, Processed, Strings

import user

# One event, as a user function that takes a second argument gets it.
Event = namedtuple("Event", "key value timestamp_ms")


class _LogStream:
    """print() and sys.stderr, line by line into the executor's log."""

    def __init__(self, level):
        self.level = level
        self.pending = ""

    def write(self, text):
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            host.log(self.level, line)
        return len(text)

    def flush(self):
        if self.pending:
            host.log(self.level, self.pending)
            self.pending = ""


sys.stdout = _LogStream(host.Level.INFO)
sys.stderr = _LogStream(host.Level.WARN)


def _text(value):
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _event(output, template):
    if isinstance(output, Event):
        return output
    if isinstance(output, dict) and "value" in output:
        return Event(
            _text(output.get("key", template.key)),
            _text(output["value"]),
            int(output.get("timestamp_ms", template.timestamp_ms)),
        )
    if isinstance(output, tuple) and len(output) == 2:
        return Event(_text(output[0]), _text(output[1]), template.timestamp_ms)
    return Event(template.key, _text(output), template.timestamp_ms)


# A batch crosses the boundary as columns: all its strings in one, with the UTF-8 byte offset
# where each ends, packed as little-endian u32s in bytes (times as s64s, flags a byte each), which
# the bindings hand over as one bytes object instead of an int object per row. For ASCII text
# (checked in C) the offsets index the str itself; other text is sliced as bytes.


def _u32s(packed):
    """The u32s packed in bytes (WebAssembly is little-endian, as the packing is)."""
    return memoryview(packed).cast("I")


def _pack_u32s(numbers):
    return array("I", numbers).tobytes()


def _column(strings):
    """The strings of a column, in order."""
    data, ends = strings.data, _u32s(strings.ends)
    starts = chain((0,), ends)
    if data.isascii():
        return [data[start:end] for start, end in zip(starts, ends)]
    raw = data.encode()
    return [raw[start:end].decode() for start, end in zip(starts, ends)]


def _to_column(texts):
    """A column of strings (texts are str)."""
    data = "".join(texts)
    if data.isascii():
        return Strings(data=data, ends=_pack_u32s(accumulate(map(len, texts))))
    return Strings(data=data, ends=_pack_u32s(accumulate(len(text.encode()) for text in texts)))


def _events(batch):
    return [
        Event(key, value, timestamp_ms)
        for key, value, timestamp_ms in zip(
            _column(batch.keys), _column(batch.values), memoryview(batch.timestamps_ms).cast("q")
        )
    ]


def _states(optional):
    """Each group's state, None where it has none."""
    states = _column(optional.strings)
    if all(optional.present):
        return states
    return [state if present else None for state, present in zip(states, optional.present)]


def _arguments(function):
    code = getattr(function, "__code__", None)
    return code.co_argcount if code is not None else 3


def _need(name):
    function = getattr(user, name, None)
    if not callable(function):
        raise Err(f"the module defines no function {name}")
    return function


def _reducer():
    """The user's reduce and whether it takes a key's values at once (reduce_group) or one at a
    time (reduce)."""
    per_group = getattr(user, "reduce_group", None)
    per_value = getattr(user, "reduce", None)
    if callable(per_group) and callable(per_value):
        raise Err("the module defines both reduce and reduce_group: a reduce runs one of them, keep one")
    if callable(per_group):
        return per_group, True
    if callable(per_value):
        return per_value, False
    raise Err("the module defines no function reduce (or reduce_group)")


def _per_event(name, batch):
    """The user's function of one event applied to each of the batch: called with (value), or
    (value, event) when it takes two arguments."""
    function = _need(name)
    if _arguments(function) >= 2:
        return lambda answer: [answer(function(event.value, event)) for event in _events(batch)]
    values = _column(batch.values)
    return lambda answer: [answer(function(value)) for value in values]


def _frames(trace):
    """The traceback's frames, innermost last. Not the traceback module's formatting: it reads
    the source lines from files, and the sandbox has no files."""
    lines = []
    while trace is not None:
        code = trace.tb_frame.f_code
        lines.append(f"  File {code.co_filename}, line {trace.tb_lineno}, in {code.co_name}")
        trace = trace.tb_next
    return "\n".join(lines[-8:])


def _guarded(body):
    """Runs body; a Python exception becomes the export's error, with its traceback."""
    try:
        return body()
    except Err:
        raise
    except Exception as error:  # noqa: BLE001 - any failure of user code is the function's error
        raise Err(f"{type(error).__name__}: {error}\nTraceback (most recent call last):\n{_frames(error.__traceback__)}")


class WitWorld:
    def map(self, batch):
        each = _per_event("map", batch)
        return _guarded(lambda: _to_column(each(_text)))

    def flat_map(self, batch):
        each = _per_event("flat_map", batch)

        def run():
            outputs = []
            extend = outputs.extend

            def fan_out(produced):
                if produced:
                    extend(produced)
                return len(outputs)

            input_ends = each(fan_out)
            if not all(type(output) is str for output in outputs):
                outputs[:] = map(_text, outputs)
            return FannedOut(values=_to_column(outputs), input_ends=_pack_u32s(input_ends))

        return _guarded(run)

    def filter(self, batch):
        each = _per_event("filter", batch)
        return _guarded(lambda: bytes(each(bool)))

    def key(self, batch):
        each = _per_event("key", batch)
        return _guarded(lambda: _to_column(each(_text)))

    def reduce(self, groups):
        function, per_group = _reducer()
        with_key = _arguments(function) >= 3

        def run_per_group():
            values = _column(groups.values)
            keys = _column(groups.keys) if with_key else None
            accumulators = _states(groups.states)
            start = 0
            for group, end in enumerate(_u32s(groups.group_ends)):
                if with_key:
                    accumulator = function(accumulators[group], values[start:end], keys[group])
                else:
                    accumulator = function(accumulators[group], values[start:end])
                accumulators[group] = accumulator if type(accumulator) is str else _text(accumulator)
                start = end
            return _to_column(accumulators)

        if per_group:
            return _guarded(run_per_group)

        def run():
            values = _column(groups.values)
            keys = _column(groups.keys) if with_key else None
            accumulators = _states(groups.states)
            start = 0
            for group, end in enumerate(_u32s(groups.group_ends)):
                accumulator = accumulators[group]
                if with_key:
                    key = keys[group]
                    for value in values[start:end]:
                        accumulator = function(accumulator, value, key)
                elif end - start == 1:
                    # Most groups of a batch hold one value: no slice for them.
                    accumulator = function(accumulator, values[start])
                else:
                    for value in values[start:end]:
                        accumulator = function(accumulator, value)
                accumulators[group] = accumulator if type(accumulator) is str else _text(accumulator)
                start = end
            return _to_column(accumulators)

        return _guarded(run)

    def process(self, groups):
        function = _need("process")

        def run():
            events = _events(groups.events)
            states, present, outputs, group_ends = [], [], [], []
            start = 0
            for key, state, end in zip(_column(groups.keys), _states(groups.states), _u32s(groups.group_ends)):
                members = events[start:end]
                start = end
                new_state, emitted = function(key, state, [event.value for event in members])
                template = Event(key, "", members[-1].timestamp_ms if members else 0)
                states.append("" if new_state is None else _text(new_state))
                present.append(0 if new_state is None else 1)
                outputs.extend(_event(output, template) for output in (emitted or ()))
                group_ends.append(len(outputs))
            return Processed(
                states=OptionalStrings(strings=_to_column(states), present=bytes(present)),
                outputs=Events(
                    keys=_to_column([event.key for event in outputs]),
                    values=_to_column([event.value for event in outputs]),
                    timestamps_ms=array("q", [event.timestamp_ms for event in outputs]).tobytes(),
                ),
                group_ends=_pack_u32s(group_ends),
            )

        return _guarded(run)
