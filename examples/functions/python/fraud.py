"""A fraud rule: the running sum of each account's transactions, alerted once above a threshold.

A transaction is a JSON line such as {"account": "a17", "amount": 120.5}.
"""

import json

THRESHOLD = 10000


def key(line):
    return json.loads(line)["account"]


def reduce(total, line, account):
    return repr(float(total or 0) + float(json.loads(line)["amount"]))


def filter(total):
    return float(total) > THRESHOLD
