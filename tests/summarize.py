#!/usr/bin/env python3
"""Counts the tests' own results from meson test logs: each TAP line
(cmocka cases print TAP) is one test; a non-TAP test counts once.  Lists
which way each KVM test ran (its "# kvm-way:" lines, from tests/kvm-ways).
Prints 'N passed, N failed, N skipped' last; exits 1 if anything failed."""
import json
import re
import sys

passed = failed = skipped = 0
ways = []
for path in sys.argv[1:]:
    try:
        lines = open(path).read().splitlines()
    except OSError as e:
        print(f"summarize: {e}")
        failed += 1
        continue
    for line in lines:
        t = json.loads(line)
        out = t.get("stdout") or ""
        tap = [l for l in out.splitlines() if re.match(r"^(not )?ok\b", l)]
        result = t.get("result", "")
        if tap:
            for l in tap:
                if re.search(r"#\s*SKIP", l, re.I):
                    skipped += 1
                elif l.startswith("ok"):
                    passed += 1
                else:
                    failed += 1
            # A binary that crashed after its last TAP line still failed.
            if result not in ("OK", "SKIP", "EXPECTEDFAIL") and not any(l.startswith("not ok") for l in tap):
                failed += 1
        elif result == "OK":
            passed += 1
        elif result == "SKIP":
            skipped += 1
        else:
            failed += 1
        if result not in ("OK", "SKIP", "EXPECTEDFAIL"):
            print(f"FAILED: {t.get('name')} ({result}) in {path}")
        for l in out.splitlines():
            m = re.match(r"^# kvm-way: (.*)", l)
            if m:
                ways.append(f"  {t.get('name')}: {m.group(1)}")
if ways:
    print("KVM tests, by way (direct: the host's /dev/kvm; nested: in L1, see docs/nested.md):")
    print("\n".join(ways))
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
