// Raftstream's JavaScript guest library: turns a module of plain functions into the batch exports
// of the world raftstream:functions/stream-function. `raftstream job submit` (or
// `raftstream function build`) puts the user's file next to this one as ./user.js and builds both
// into one component with componentize-qjs.
//
// A user module exports any of:
//   map(value, event)              -> a value, or {key, value, timestampMs}
//   flatMap(value, event)          -> an array (or any iterable) of those
//   filter(value, event)           -> truthy to keep the event
//   key(value, event)              -> the event's key
//   reduce(accumulator, value, key) -> the new accumulator (undefined the first time for a key)
//   process(key, state, values, events) -> {state, emit: [values or events]}; state undefined clears it
// Values, keys and accumulators are strings; anything else returned is turned into one (JSON for
// objects). console.log and friends go to the executor's log.
import * as user from "./user.js";
import { log } from "raftstream:functions/host@0.1.0";

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

function toEvent(output, input) {
  if (output !== null && typeof output === "object" && !Array.isArray(output) && "value" in output) {
    return {
      key: output.key === undefined ? input.key : text(output.key),
      value: text(output.value),
      timestampMs: output.timestampMs === undefined ? input.timestampMs : Number(output.timestampMs),
    };
  }
  return { key: input.key, value: text(output), timestampMs: input.timestampMs };
}

function need(name) {
  const fn = user[name];
  if (typeof fn !== "function") {
    throw `the module exports no function ${name}`;
  }
  return fn;
}

// State crosses the boundary as bytes; QuickJS has no TextEncoder, so UTF-8 is coded here.
function utf8Encode(string) {
  const bytes = [];
  for (const char of string) {
    let code = char.codePointAt(0);
    if (code < 0x80) bytes.push(code);
    else if (code < 0x800) bytes.push(0xc0 | (code >> 6), 0x80 | (code & 63));
    else if (code < 0x10000) bytes.push(0xe0 | (code >> 12), 0x80 | ((code >> 6) & 63), 0x80 | (code & 63));
    else bytes.push(0xf0 | (code >> 18), 0x80 | ((code >> 12) & 63), 0x80 | ((code >> 6) & 63), 0x80 | (code & 63));
  }
  return new Uint8Array(bytes);
}

function utf8Decode(bytes) {
  let out = "";
  for (let i = 0; i < bytes.length; ) {
    const first = bytes[i];
    let code;
    if (first < 0x80) { code = first; i += 1; }
    else if (first < 0xe0) { code = ((first & 31) << 6) | (bytes[i + 1] & 63); i += 2; }
    else if (first < 0xf0) { code = ((first & 15) << 12) | ((bytes[i + 1] & 63) << 6) | (bytes[i + 2] & 63); i += 3; }
    else { code = ((first & 7) << 18) | ((bytes[i + 1] & 63) << 12) | ((bytes[i + 2] & 63) << 6) | (bytes[i + 3] & 63); i += 4; }
    out += String.fromCodePoint(code);
  }
  return out;
}

function stateOf(group) {
  return group.state === undefined || group.state === null ? undefined : utf8Decode(group.state);
}

export function map(events) {
  const fn = need("map");
  return events.map((event) => toEvent(fn(event.value, event), event));
}

export function flatMap(events) {
  const fn = need("flatMap");
  return events.map((event) => {
    const outputs = fn(event.value, event);
    if (outputs === undefined || outputs === null) return [];
    return Array.from(outputs, (output) => toEvent(output, event));
  });
}

export function filter(events) {
  const fn = need("filter");
  return events.map((event) => Boolean(fn(event.value, event)));
}

export function key(events) {
  const fn = need("key");
  return events.map((event) => text(fn(event.value, event)));
}

export function reduce(groups) {
  const fn = need("reduce");
  return groups.map((group) => {
    let accumulator = stateOf(group);
    for (const event of group.events) {
      accumulator = text(fn(accumulator, event.value, group.key));
    }
    return utf8Encode(accumulator === undefined ? "" : accumulator);
  });
}

export function process(groups) {
  const fn = need("process");
  return groups.map((group) => {
    const values = group.events.map((event) => event.value);
    const result = fn(group.key, stateOf(group), values, group.events) ?? {};
    const last = group.events[group.events.length - 1] ?? { key: group.key, value: "", timestampMs: 0 };
    const template = { key: group.key, value: "", timestampMs: last.timestampMs };
    return {
      state: result.state === undefined || result.state === null ? undefined : utf8Encode(text(result.state)),
      outputs: Array.from(result.emit ?? [], (output) => toEvent(output, template)),
    };
  });
}
