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
//   process(key, state, values, events) -> {state, emit: [values or {key, value, timestampMs}]};
//                                     state undefined clears it
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

function values(outputs) {
  if (outputs === undefined || outputs === null) return [];
  return Array.isArray(outputs) ? outputs.map(text) : Array.from(outputs, text);
}

export function map(events) {
  const fn = need("map");
  return events.map((event) => text(fn(event.value, event)));
}

export function flatMap(events) {
  const fn = need("flatMap");
  return events.map((event) => values(fn(event.value, event)));
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
    let accumulator = group.state === null ? undefined : group.state;
    const key = group.key;
    for (const value of group.values) {
      accumulator = text(fn(accumulator, value, key));
    }
    return accumulator === undefined ? "" : accumulator;
  });
}

export function process(groups) {
  const fn = need("process");
  return groups.map((group) => {
    const state = group.state === null ? undefined : group.state;
    const result = fn(group.key, state, group.events.map((event) => event.value), group.events) ?? {};
    const last = group.events[group.events.length - 1];
    const template = { key: group.key, value: "", timestampMs: last === undefined ? 0 : last.timestampMs };
    return {
      state: result.state === undefined || result.state === null ? undefined : text(result.state),
      outputs: Array.from(result.emit ?? [], (output) => toEvent(output, template)),
    };
  });
}
