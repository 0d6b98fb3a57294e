"""The word count's logic as Python functions: split a line into words, count each word."""

import re

_WORD_SEPARATORS = re.compile(r"[^A-Za-z0-9]+")


def flat_map(line):
    return [word for word in _WORD_SEPARATORS.split(line) if word]


def reduce(count, word, key):
    return str(int(count or 0) + 1)
