#!/usr/bin/env python3
"""Reads tempest's results (subunit2csv output) and decides whether the run is good.

  check_results.py --csv results.csv --conf etc/tempest.conf --must-pass must-pass.txt \
                   [--list tests.txt]

Prints pass/skip/fail counts, a per-class table, every failed test, and checks that every
test of the classes in must-pass.txt passed.  Exit 1 if any test failed or a required class
did not fully pass.  Standard library only.
"""

import argparse
import collections
import configparser
import csv
import re
import sys

PREFIX = "tempest.api.image.v2."
SETUP_RE = re.compile(r"^(setUpClass|tearDownClass) \((?P<cls>[^)]+)\)$")


def short_name(test_id):
    """'tempest.api.image.v2.test_x.C.test_y[id-...,smoke]' -> 'test_x.C.test_y'."""
    name = test_id.split("[", 1)[0]
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def load_results(path, listed):
    """Per-test status.  A class-level result (setUpClass skipped or failed) stands for every
    test of that class in `listed` (the output of `tempest run --list-tests`), so the counts
    are per test, as in the recipe."""
    results = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            m = SETUP_RE.match(row["test"])
            if not m:
                results[short_name(row["test"])] = row["status"]
                continue
            cls = short_name(m.group("cls"))
            members = [t for t in listed if t.rsplit(".", 1)[0] == cls]
            for name in members or [f"{cls}.{m.group(1)}"]:
                if results.get(name, "success") == "success":
                    results[name] = row["status"]
    return results


def load_listed(path):
    if not path:
        return []
    with open(path) as f:
        return [short_name(line.strip()) for line in f if line.startswith(PREFIX)]


def flag_is_true(conf, dotted):
    section, _, key = dotted.rpartition(".")
    return conf.get(section, key, fallback="false").strip().lower() == "true"


def load_must_pass(path, conf):
    required, excused = [], []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            cls = parts[0]
            if len(parts) == 3 and parts[1] in ("unless", "if"):
                if flag_is_true(conf, parts[2]) == (parts[1] == "unless"):
                    excused.append((cls, f"{parts[1]} {parts[2]}"))
                    continue
            elif len(parts) != 1:
                sys.exit(f"check_results: bad must-pass line {line!r}")
            required.append(cls)
    return required, excused


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--csv", required=True)
    parser.add_argument("--conf", required=True)
    parser.add_argument("--must-pass", required=True)
    parser.add_argument("--list", help="output of tempest run --list-tests")
    args = parser.parse_args()

    conf = configparser.ConfigParser(interpolation=None)
    conf.read(args.conf)
    results = load_results(args.csv, load_listed(args.list))
    required, excused = load_must_pass(args.must_pass, conf)

    by_class = collections.defaultdict(collections.Counter)
    totals = collections.Counter()
    for name, status in results.items():
        cls = name.rsplit(".", 1)[0]
        kind = {"success": "pass", "skip": "skip"}.get(status, "fail")
        by_class[cls][kind] += 1
        totals[kind] += 1

    print(f"{'class':80} {'pass':>5} {'skip':>5} {'fail':>5}")
    for cls in sorted(by_class):
        c = by_class[cls]
        print(f"{cls:80} {c['pass']:5} {c['skip']:5} {c['fail']:5}")

    failed = sorted(n for n, s in results.items() if s not in ("success", "skip"))
    if failed:
        print("\nFailed tests:")
        for name in failed:
            print(f"  FAIL {name} ({results[name]})")

    problems = []
    for cls in required:
        # A line names a class (every test of it) or one test.
        tests = {n: s for n, s in results.items() if cls in (n, n.rsplit(".", 1)[0])}
        if not tests:
            problems.append(f"{cls}: no test of this class ran")
            continue
        for name, status in sorted(tests.items()):
            if status != "success":
                problems.append(f"{name}: {status} (must pass)")
    for cls, why in excused:
        print(f"\nnote: {cls} not required to pass ({why}; it skips)")
    if problems:
        print("\nRequired classes that did not fully pass:")
        for p in problems:
            print(f"  {p}")

    summary = f"tempest: {totals['pass']} passed, {totals['skip']} skipped, {totals['fail']} failed"
    print(f"\n{summary}")
    with open(args.csv + ".summary", "w") as f:
        f.write(summary + "\n")
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
