"""Writes the link order of the proxy's release build from callgrind dumps.

Usage: python3 tests/bench/link_order.py OUT DUMP...

The dumps are callgrind's (`--demangle=no --compress-strings=no`) of proxies that ran the bench's
paths from their start (tests/bench/run.sh with ORDER=OUT writes them and calls this). OUT gets
one symbol per line: every function of the proxy binary that ran, hottest (most instructions,
summed over the dumps) first. The linker lays those functions out first and in that order
(`--symbol-ordering-file`, see configs/images/build-proxy.sh), so that the code a proxy runs sits
on as few pages as possible: the kernel maps a binary's code around each page that faults, and
code spread over the whole binary makes all of it resident.
"""

import collections
import os
import re
import sys


def self_costs(path, costs):
    """Adds each function's own instructions in the dump at `path` to `costs`."""
    fn = None
    skip_next = False
    in_binary = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if skip_next:
                # The line after `calls=` is the call's inclusive cost, not the caller's own.
                skip_next = False
                continue
            if line.startswith("ob="):
                in_binary = os.path.basename(line[3:].strip()) == "weft-proxy"
            elif line.startswith("fn="):
                fn = line[3:].strip() if in_binary else None
            elif line.startswith("calls="):
                skip_next = True
            elif fn and line[:1] in "0123456789+-*":
                fields = line.split()
                if len(fields) >= 2 and fields[1].isdigit():
                    costs[fn] += int(fields[1])


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip().splitlines()[2])
    costs = collections.Counter()
    for path in sys.argv[2:]:
        self_costs(path, costs)
    names = collections.Counter()
    for name, ir in costs.items():
        # callgrind marks a function's recursion levels as name'2, name'3...
        name = re.sub(r"'\d+$", "", name)
        # Unnamed code (0x...) and valgrind's own entries ("(below main)") are not symbols.
        if ir > 0 and not name.startswith("0x") and not re.search(r"[\s()]", name):
            names[name] += ir
    if not names:
        sys.exit("link_order.py: no function of weft-proxy in the dumps (were they written with --compress-strings=no?)")
    with open(sys.argv[1], "w", encoding="utf-8") as out:
        for name, _ in sorted(names.items(), key=lambda kv: (-kv[1], kv[0])):
            out.write(name + "\n")
    print(f"link_order.py: {len(names)} functions from {len(sys.argv) - 2} dumps in {sys.argv[1]}")


if __name__ == "__main__":
    main()
