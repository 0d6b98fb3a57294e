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
    reduce(accumulator, value, key)  -> the new accumulator (None the first time for a key)
    process(key, state, values)      -> (new state or None to clear it, iterable of outputs: values,
                                        (key, value) pairs or {"key", "value", "timestamp_ms"})
Values, keys, accumulators and states are str; anything else returned becomes one (JSON for dicts
and lists).
"""

import json
import sys

from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import Event, Processed

import user


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
            key=_text(output.get("key", template.key)),
            value=_text(output["value"]),
            timestamp_ms=int(output.get("timestamp_ms", template.timestamp_ms)),
        )
    if isinstance(output, tuple) and len(output) == 2:
        return Event(key=_text(output[0]), value=_text(output[1]), timestamp_ms=template.timestamp_ms)
    return Event(key=template.key, value=_text(output), timestamp_ms=template.timestamp_ms)


def _need(name):
    function = getattr(user, name, None)
    if not callable(function):
        raise Err(f"the module defines no function {name}")
    return function


def _per_event(name):
    """The user's function of one event, called with (value) or (value, event)."""
    function = _need(name)
    code = getattr(function, "__code__", None)
    if code is not None and code.co_argcount >= 2:
        return function
    return lambda value, _event: function(value)


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
    def map(self, events):
        function = _per_event("map")
        return _guarded(lambda: [_text(function(event.value, event)) for event in events])

    def flat_map(self, events):
        function = _per_event("flat_map")
        return _guarded(lambda: [[_text(output) for output in (function(event.value, event) or ())] for event in events])

    def filter(self, events):
        function = _per_event("filter")
        return _guarded(lambda: [bool(function(event.value, event)) for event in events])

    def key(self, events):
        function = _per_event("key")
        return _guarded(lambda: [_text(function(event.value, event)) for event in events])

    def reduce(self, groups):
        function = _need("reduce")

        def fold(group):
            accumulator = group.state
            key = group.key
            for value in group.values:
                accumulator = _text(function(accumulator, value, key))
            return accumulator or ""

        return _guarded(lambda: [fold(group) for group in groups])

    def process(self, groups):
        function = _need("process")

        def run(group):
            new_state, outputs = function(group.key, group.state, [event.value for event in group.events])
            last = group.events[-1] if group.events else Event(key=group.key, value="", timestamp_ms=0)
            template = Event(key=group.key, value="", timestamp_ms=last.timestamp_ms)
            return Processed(
                state=None if new_state is None else _text(new_state),
                outputs=[_event(output, template) for output in (outputs or ())],
            )

        return _guarded(lambda: [run(group) for group in groups])
