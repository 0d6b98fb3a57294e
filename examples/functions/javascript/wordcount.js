// The word count's logic as JavaScript functions: split a line into words, count each word.
export function flatMap(line) {
  return line.split(/[^A-Za-z0-9]+/).filter((word) => word.length > 0);
}

export function reduce(count, word) {
  return String(Number(count ?? 0) + 1);
}
