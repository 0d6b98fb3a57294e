// Raftstream's JavaScript guest library: turns a module of plain functions into the batch exports
// of the world raftstream:functions/stream-function. `raftstream job submit` (or
// `raftstream function build`) puts the user's file next to this one as ./user.js and builds both
// into one component with componentize-qjs.
//
// A user module exports any of:
//   map(value, event)              -> the new value (the key and time stay)
//   flatMap(value, event)          -> an array (or any iterable) of values
//   filter(value, event)           -> truthy to keep the event
//   key(value, event)              -> the event's key
//   reduce(accumulator, value, key) -> the new accumulator (undefined the first time for a key)
//   reduceGroup(accumulator, values, key) -> the same, given all of a key's values in a batch at
//                                     once (an array, in arrival order): one call per key and
//                                     batch instead of one per value; define it or reduce
//   process(key, state, values, events) -> {state, emit: [values or {key, value, timestampMs}]};
//                                     state undefined clears it
// Values, keys and accumulators are strings; anything else returned is turned into one (JSON for
// objects). console.log and friends go to the executor's log.
import * as user from "./user.js";
import { log } from "raftstream:functions/host@0.2.0";

function show(args) {
  return args.map((arg) => (typeof arg === "string" ? arg : JSON.stringify(arg))).join(" ");
}

globalThis.console = {
  debug: (...args) => log("debug", show(args)),
  log: (...args) => log("info", show(args)),
  info: (...args) => log("info", show(args)),
  warn: (...args) => log("warn", show(args)),
  error: (...args) => log("error", show(args)),
};

function text(value) {
  if (typeof value === "string") return value;
  if (value === undefined || value === null) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

// A batch crosses the boundary as columns: all its strings in one, with the UTF-8 byte offset
// where each ends, packed as little-endian u32s in bytes (as are the times, s64s, and the flags,
// a byte each). JavaScript strings count UTF-16 units, which are the bytes when the text is
// ASCII (the common case, checked in one native step); other text is walked once.

const ASCII = /^[\x00-\x7f]*$/;

// The u32s packed in `bytes`: copied into a buffer of their own, aligned for a Uint32Array
// (WebAssembly is little-endian, as the packing is).
function u32s(bytes) {
  return new Uint32Array(bytes.slice().buffer);
}

// Numbers as packed u32s.
function packU32s(numbers) {
  return new Uint8Array(Uint32Array.from(numbers).buffer);
}

// The event times packed in `bytes`, as numbers.
function times(bytes) {
  return Array.from(new BigInt64Array(bytes.slice().buffer), Number);
}

function packTimes(numbers) {
  return new Uint8Array(BigInt64Array.from(numbers, (time) => BigInt(Math.trunc(time))).buffer);
}

// The UTF-8 bytes of the character starting at UTF-16 index `at` of `text`: 4 for a surrogate
// pair (two units), 3 for a lone surrogate (written as U+FFFD).
function utf8Width(text, at) {
  const unit = text.charCodeAt(at);
  if (unit < 0x80) return 1;
  if (unit < 0x800) return 2;
  if (unit >= 0xd800 && unit < 0xdc00 && at + 1 < text.length) return 4;
  return 3;
}

// The UTF-16 length of the UTF-8 bytes from `bytes` to `endBytes`, reading `data` from `index`.
function unitsFor(data, index, bytes, endBytes) {
  let at = index;
  while (bytes < endBytes && at < data.length) {
    const width = utf8Width(data, at);
    bytes += width;
    at += width === 4 ? 2 : 1;
  }
  return at - index;
}

// The strings of a column, in order.
function column(strings) {
  const data = strings.data;
  const ends = u32s(strings.ends);
  const count = ends.length;
  const texts = new Array(count);
  const total = count === 0 ? 0 : ends[count - 1];
  let start = 0;
  if (data.length === total) {
    for (let i = 0; i < count; i++) {
      const end = ends[i];
      texts[i] = data.substring(start, end);
      start = end;
    }
    return texts;
  }
  let bytes = 0;
  for (let i = 0; i < count; i++) {
    const end = start + unitsFor(data, start, bytes, ends[i]);
    texts[i] = data.substring(start, end);
    start = end;
    bytes = ends[i];
  }
  return texts;
}

// The UTF-8 length of one string.
function utf8Length(value) {
  if (ASCII.test(value)) return value.length;
  let bytes = 0;
  for (let at = 0; at < value.length; ) {
    const width = utf8Width(value, at);
    bytes += width;
    at += width === 4 ? 2 : 1;
  }
  return bytes;
}

// A column of strings.
function toColumn(texts) {
  const data = texts.join("");
  const count = texts.length;
  const ends = new Uint32Array(count);
  const ascii = ASCII.test(data);
  let end = 0;
  for (let i = 0; i < count; i++) {
    end += ascii ? texts[i].length : utf8Length(texts[i]);
    ends[i] = end;
  }
  return { data, ends: new Uint8Array(ends.buffer) };
}

// The batch's events as objects, for a user function that takes one as its second argument.
function events(batch) {
  const keys = column(batch.keys);
  const values = column(batch.values);
  const at = times(batch.timestampsMs);
  return values.map((value, i) => ({ key: keys[i], value, timestampMs: at[i] }));
}

function need(name) {
  const fn = user[name];
  if (typeof fn !== "function") {
    throw `the module exports no function ${name}`;
  }
  return fn;
}

// Calls `fn` with each event's value, and the event too when it declares a second parameter.
function perEvent(batch, fn, answer) {
  const values = column(batch.values);
  const count = values.length;
  const answers = new Array(count);
  if (fn.length < 2) {
    for (let i = 0; i < count; i++) answers[i] = answer(fn(values[i]));
    return answers;
  }
  const all = events(batch);
  for (let i = 0; i < count; i++) answers[i] = answer(fn(values[i], all[i]));
  return answers;
}

export function map(batch) {
  return toColumn(perEvent(batch, need("map"), text));
}

export function flatMap(batch) {
  const outputs = [];
  const inputEnds = perEvent(batch, need("flatMap"), (produced) => {
    if (Array.isArray(produced)) {
      for (let i = 0; i < produced.length; i++) {
        const value = produced[i];
        outputs.push(typeof value === "string" ? value : text(value));
      }
    } else if (produced !== undefined && produced !== null) {
      for (const value of produced) outputs.push(text(value));
    }
    return outputs.length;
  });
  return { values: toColumn(outputs), inputEnds: packU32s(inputEnds) };
}

export function filter(batch) {
  return Uint8Array.from(perEvent(batch, need("filter"), (keep) => (keep ? 1 : 0)));
}

export function key(batch) {
  return toColumn(perEvent(batch, need("key"), text));
}

// Each group's state, undefined where it has none.
function states(optional) {
  const texts = column(optional.strings);
  const present = optional.present;
  for (let i = 0; i < texts.length; i++) {
    if (present[i] === 0) texts[i] = undefined;
  }
  return texts;
}

// The user's reduce: `reduceGroup` (a key's values at once) or `reduce` (one value at a time).
function reducer() {
  const perGroup = user.reduceGroup;
  const perValue = user.reduce;
  if (typeof perGroup === "function" && typeof perValue === "function") {
    throw "the module exports both reduce and reduceGroup: a reduce runs one of them, keep one";
  }
  if (typeof perGroup === "function") return { fn: perGroup, perGroup: true };
  if (typeof perValue === "function") return { fn: perValue, perGroup: false };
  throw "the module exports no function reduce (or reduceGroup)";
}

export function reduce(groups) {
  const { fn, perGroup } = reducer();
  // A reduce that does not declare the key's parameter is spared the keys' strings.
  const keys = fn.length >= 3 ? column(groups.keys) : null;
  const accumulators = states(groups.states);
  const values = column(groups.values);
  const ends = u32s(groups.groupEnds);
  const out = new Array(ends.length);
  let at = 0;
  for (let g = 0; g < ends.length; g++) {
    const key = keys === null ? undefined : keys[g];
    let accumulator = accumulators[g];
    const end = ends[g];
    if (perGroup) {
      accumulator = fn(accumulator, values.slice(at, end), key);
      if (typeof accumulator !== "string") accumulator = text(accumulator);
      at = end;
    } else {
      for (; at < end; at++) {
        accumulator = fn(accumulator, values[at], key);
        if (typeof accumulator !== "string") accumulator = text(accumulator);
      }
    }
    out[g] = accumulator === undefined ? "" : accumulator;
  }
  return toColumn(out);
}

export function process(groups) {
  const fn = need("process");
  const keys = column(groups.keys);
  const before = states(groups.states);
  const all = events(groups.events);
  const ends = u32s(groups.groupEnds);
  const newStates = [];
  const present = [];
  const outKeys = [];
  const outValues = [];
  const outTimes = [];
  const groupEnds = [];
  let start = 0;
  for (let g = 0; g < keys.length; g++) {
    const members = all.slice(start, ends[g]);
    start = ends[g];
    const result = fn(keys[g], before[g], members.map((event) => event.value), members) ?? {};
    const last = members[members.length - 1];
    const time = last === undefined ? 0 : last.timestampMs;
    const state = result.state === undefined || result.state === null ? undefined : text(result.state);
    newStates.push(state === undefined ? "" : state);
    present.push(state === undefined ? 0 : 1);
    for (const output of result.emit ?? []) {
      if (output !== null && typeof output === "object" && !Array.isArray(output) && "value" in output) {
        outKeys.push(output.key === undefined ? keys[g] : text(output.key));
        outValues.push(text(output.value));
        outTimes.push(output.timestampMs === undefined ? time : Number(output.timestampMs));
      } else {
        outKeys.push(keys[g]);
        outValues.push(text(output));
        outTimes.push(time);
      }
    }
    groupEnds.push(outValues.length);
  }
  return {
    states: { strings: toColumn(newStates), present: Uint8Array.from(present) },
    outputs: { keys: toColumn(outKeys), values: toColumn(outValues), timestampsMs: packTimes(outTimes) },
    groupEnds: packU32s(groupEnds),
  };
}
