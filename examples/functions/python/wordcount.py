"""The word count's logic as Python functions: split a line into words, count each word."""

import re

_WORD = re.compile(r"[A-Za-z0-9]+")


def flat_map(line):
    return _WORD.findall(line)


def reduce(count, word):
    return str(int(count or 0) + 1)
