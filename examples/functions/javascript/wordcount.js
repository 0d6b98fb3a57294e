// The word count's logic as JavaScript functions: split a line into words, count each word.
export function flatMap(line) {
  return line.match(/[A-Za-z0-9]+/g) ?? [];
}

export function reduce(count, word) {
  return String(Number(count ?? 0) + 1);
}
